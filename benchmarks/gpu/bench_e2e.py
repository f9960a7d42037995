"""End-to-end decode tokens/s and cache memory on the GPU: TurboQuant-rewritten decoders against the
unrewritten float16 optimum export, through tq_ort.session.DecoderSession on the CUDA EP.

Two steps, because the device cannot download weights and a device call carries at most 64 MiB:

    # here (CPU): random-weight HF models -> optimum export -> float16 -> TurboQuant rewrites;
    # graphs only (weights as external data, not carried) under .device/e2e/<shape>/
    python3 benchmarks/gpu/bench_e2e.py build [--shapes smollm2,llama3-8b-2l]
    # on the GPU machine: regenerate the external weights (same values for the original and the
    # rewritten graphs: seeded by tensor name), then time prefill + N decode steps
    PYTHONPATH=/tmp/ortgpu:. TQ_ORT_LIBRARY=build/ort/libtq_ort_ops.so \
        python3 benchmarks/gpu/bench_e2e.py run .device/e2e --contexts 4096,32768 --steps 32

The weights are random (normal * 0.02, norms ones): the timings are those of the real shapes, the
generated text is noise. Each shape's folder holds orig.onnx (float16 optimum export, concat mode:
the graph concatenates past and new keys into a fresh present tensor every step, as ORT users of an
optimum export run it), k4v4.onnx and balanced.onnx (K4 V3 + the last 64 tokens exact), both run
with the shared cache buffer (only the new row is written per step).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SHAPES = {
    # SmolLM2-135M: hidden 576, 30 layers, 9 heads / 3 KV heads, head_dim 64, tied embeddings
    "smollm2": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5,
                    rope_theta=100000.0, tie_word_embeddings=True, max_position_embeddings=40960),
    # Llama-3-8B layer shapes cut to 2 layers, vocab reduced from 128256 to 32000
    "llama3-8b-2l": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=2,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5,
                         rope_theta=500000.0, tie_word_embeddings=False, max_position_embeddings=40960),
}
VARIANTS = {"k4v4": dict(key_bits=4, value_bits=4), "balanced": dict(key_bits=4, value_bits=3, recent_window=64)}
FP16 = 10  # onnx.TensorProto.FLOAT16
MIN_EXTERNAL = 4096  # bytes: float16 initializers at least this large live in the (regenerated) data file


# ------------------------------------------------------------------------------------------------
# host: build the graphs
# ------------------------------------------------------------------------------------------------
def _externalize(model, data_path: Path) -> list[str]:
    """Move float16 initializers >= MIN_EXTERNAL bytes into data_path; returns their names."""
    from onnx.external_data_helper import set_external_data

    names, off = [], 0
    with open(data_path, "wb") as f:
        for t in model.graph.initializer:
            if t.data_type == FP16 and t.raw_data and len(t.raw_data) >= MIN_EXTERNAL:
                raw = t.raw_data
                f.write(raw)
                set_external_data(t, data_path.name, offset=off, length=len(raw))
                t.ClearField("raw_data")
                off += len(raw)
                names.append(t.name)
    return names


def _strip_rewritten(dst: Path, keep: set[str]) -> None:
    """Keep external refs only for weights of the source model; inline every other tensor the
    rewrite wrote to the data file (codebooks, rotations, small constants)."""
    import onnx

    m = onnx.load(str(dst), load_external_data=False)
    inlined = 0
    for t in m.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        if t.name in keep and t.data_type == FP16:
            continue
        with open(dst.parent / info["location"], "rb") as f:
            f.seek(int(info.get("offset", 0)))
            raw = f.read(int(info["length"]))
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT
        t.raw_data = raw
        inlined += 1
    onnx.save(m, str(dst))
    print(f"  {dst.name}: inlined {inlined} non-weight tensors", flush=True)


def build(out_root: Path, shapes: list[str], variants: list[str]) -> None:
    import onnx
    import torch
    import transformers
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from graph_passes import TQConfig
    from graph_passes.pipeline import rewrite_file
    from models.export import export_optimum
    from models.tiny import make_tokenizer

    for shape in shapes:
        out = out_root / shape
        work = ROOT / ".cache" / "e2e" / shape
        out.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        cfg = transformers.LlamaConfig(bos_token_id=1, eos_token_id=2, **SHAPES[shape])
        if not (work / "fp32" / "model.onnx").exists():
            torch.manual_seed(0)
            model = transformers.LlamaForCausalLM(cfg).eval()
            model.save_pretrained(work / "hf", safe_serialization=True)
            make_tokenizer().save_pretrained(work / "hf")
            del model
            export_optimum(work / "hf", work / "fp32")
            print(f"{shape}: exported in {time.time() - t0:.0f} s", flush=True)
        m = onnx.load(str(work / "fp32" / "model.onnx"))
        m16 = convert_float_to_float16(m, keep_io_types=False, disable_shape_infer=True)
        del m
        (work / "fp16").mkdir(exist_ok=True)
        names = _externalize(m16, work / "fp16" / "model.onnx.data")
        onnx.save(m16, str(work / "fp16" / "model.onnx"))
        del m16
        (work / "fp16" / "config.json").write_text((work / "hf" / "config.json").read_text())
        print(f"{shape}: float16, {len(names)} external weights, {time.time() - t0:.0f} s", flush=True)
        for v in variants:
            dst = work / "fp16" / f"{v}.onnx"
            rewrite_file(work / "fp16" / "model.onnx", dst, TQConfig(**VARIANTS[v]))
            _strip_rewritten(dst, set(names))
            print(f"{shape}: rewrote {v}, {time.time() - t0:.0f} s", flush=True)
        # graphs to carry: the data files stay here
        import shutil
        shutil.copy2(work / "fp16" / "model.onnx", out / "orig.onnx")
        for v in variants:
            shutil.copy2(work / "fp16" / f"{v}.onnx", out / f"{v}.onnx")
        shutil.copy2(work / "fp16" / "config.json", out / "config.json")
        for f in sorted(out.iterdir()):
            print(f"  {f}: {f.stat().st_size / 1e6:.2f} MB")


def check_cpu(root: Path, shapes: list[str], variants: list[str], tokens: int = 3) -> None:
    """Run each graph (with its real data file, from .cache/e2e) on the CPU EP for a few tokens."""
    from tq_ort.session import DecoderSession

    for shape in shapes:
        d = ROOT / ".cache" / "e2e" / shape / "fp16"
        for name in ["model"] + variants:
            s = DecoderSession(d / f"{name}.onnx", device="cpu", max_length=32)
            s.reset(1)
            lg = s.step(np.arange(5, 12)[None])
            toks = []
            for _ in range(tokens):
                toks.append(int(lg.argmax()))
                lg = s.step(np.array([[toks[-1]]]))
            print(f"{shape}/{name}: cpu ok, finite={bool(np.isfinite(lg).all())}, tokens {toks}, "
                  f"shared={s.shared}, cache dtype {s.specs[0].dtype}", flush=True)


# ------------------------------------------------------------------------------------------------
# device: regenerate weights, time
# ------------------------------------------------------------------------------------------------
def regenerate(root: Path) -> None:
    """Write every graph's external data file: float16 normal*0.02 (norm weights: ones), seeded by
    tensor name, so that the original and the rewritten graphs of one shape hold the same weights."""
    import onnx

    for shape_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        t0 = time.time()
        graphs = {g: onnx.load(str(g), load_external_data=False) for g in sorted(shape_dir.glob("*.onnx"))}
        files: dict[Path, object] = {}
        jobs: dict[str, list] = {}
        for g, m in graphs.items():
            for t in m.graph.initializer:
                if t.data_location != onnx.TensorProto.EXTERNAL:
                    continue
                info = {e.key: e.value for e in t.external_data}
                path = shape_dir / info["location"]
                jobs.setdefault(t.name, []).append((path, int(info.get("offset", 0)), int(info["length"]), t.data_type))
        for path in {j[0] for js in jobs.values() for j in js}:
            files[path] = open(path, "wb")
        n = 0
        for name, js in jobs.items():
            length = js[0][2]
            assert all(j[2] == length and j[3] == FP16 for j in js), (name, js)
            count = length // 2
            if "norm" in name:
                arr = np.ones(count, np.float16)
            else:
                rng = np.random.default_rng(zlib.crc32(name.encode()))
                arr = (rng.standard_normal(count, dtype=np.float32) * 0.02).astype(np.float16)
            raw = arr.tobytes()
            for path, off, _, _ in js:
                files[path].seek(off)
                files[path].write(raw)
            n += count
        for f in files.values():
            f.close()
        print(f"{shape_dir.name}: regenerated {len(jobs)} tensors, {n * 2 / 1e9:.2f} GB per graph set, "
              f"{time.time() - t0:.1f} s", flush=True)


def _tile_cache(s, ctx: int) -> None:
    """Fill the cache up to ctx tokens by repeating the rows of the tokens prefilled so far."""
    import onnxruntime as ort

    L = s.length
    for sp in s.specs:
        if sp.ring:
            continue
        a = s._cache[sp.past].numpy()
        rows = a[:, :, :L]
        reps = -(-ctx // L)
        full = np.concatenate([rows] * reps, axis=2)[:, :, :ctx]
        if s.shared:
            a[:, :, :ctx] = full
        else:
            a = np.ascontiguousarray(full)
        s._cache[sp.past] = ort.OrtValue.ortvalue_from_numpy(a, "cuda", 0)
    s.length = ctx


def bench_one(path: Path, ctx: int, steps: int, batch: int, chunk: int, prefill_limit_s: float) -> dict:
    from tq_ort.session import DecoderSession

    warm = 3
    s = DecoderSession(path, device="cuda", max_length=ctx + warm + steps + 1)
    s.reset(batch)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    tiled = False
    while s.length < ctx:
        n = min(chunk, ctx - s.length)
        s.step(rng.integers(3, 30000, (batch, n)))
        if time.perf_counter() - t0 > prefill_limit_s and s.length < ctx:
            _tile_cache(s, ctx)
            tiled = True
    prefill_s = time.perf_counter() - t0
    tok = np.full((batch, 1), 7)
    for _ in range(warm):
        s.step(tok)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        lg = s.step(tok)  # logits come back to the host: each step is synchronous
        times.append(time.perf_counter() - t)
    ms = statistics.median(times) * 1e3
    rep = s.memory_report(context=ctx)
    r = dict(model=path.parent.name, variant=path.stem, ctx=ctx, batch=batch, shared=s.shared,
             prefill_s=round(prefill_s, 2), prefill_tiled=tiled, ms_median=round(ms, 3),
             ms_min=round(min(times) * 1e3, 3), ms_max=round(max(times) * 1e3, 3),
             tok_s=round(batch * 1e3 / ms, 1), cache_bytes_now=s.cache_bytes(), length_now=s.length,
             cache_bytes_at_ctx=rep["cache_bytes"], fp16_bytes_at_ctx=rep["fp16_cache_bytes"],
             finite=bool(np.isfinite(lg).all()))
    del s
    gc.collect()
    return r


def run(root: Path, contexts: list[int], steps: int, chunk: int, batch8_ctx: int, budget_s: float,
        out: Path | None, prefill_limit_s: float = 40.0) -> None:
    import onnxruntime as ort

    print("onnxruntime", ort.__version__, ort.get_available_providers(), flush=True)
    t_start = time.time()
    regenerate(root)
    results = []
    plan = []
    for shape_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for ctx in contexts:
            for v in ("orig", "k4v4", "balanced"):
                if (shape_dir / f"{v}.onnx").exists():
                    plan.append((shape_dir / f"{v}.onnx", ctx, 1))
        if batch8_ctx:
            for v in ("orig", "k4v4", "balanced"):
                if (shape_dir / f"{v}.onnx").exists():
                    plan.append((shape_dir / f"{v}.onnx", batch8_ctx, 8))
    for path, ctx, b in plan:
        if time.time() - t_start > budget_s:
            print(f"SKIP {path.parent.name}/{path.stem} ctx={ctx} B={b}: time budget", flush=True)
            continue
        try:
            r = bench_one(path, ctx, steps, b, chunk, prefill_limit_s=prefill_limit_s)
        except Exception as e:  # report and go on
            r = dict(model=path.parent.name, variant=path.stem, ctx=ctx, batch=b, error=f"{type(e).__name__}: {e}"[:400])
        results.append(r)
        print(json.dumps(r), flush=True)
        if out:
            out.write_text(json.dumps(results, indent=1))
    print(f"total {time.time() - t_start:.0f} s")


def profile(root: Path, models: list[str], ctx: int, steps: int, chunk: int, device: str = "cuda") -> None:
    """ORT profile of `steps` decode steps after a prefill to ctx: per-step wall time of the run, the
    summed time of the node events (host-side: launches on the CUDA EP are asynchronous) and the
    number of node events, by op type and provider."""
    import onnxruntime as ort

    from tq_ort.session import DecoderSession

    for spec in models:
        path = root / f"{spec}.onnx"
        so = ort.SessionOptions()
        so.enable_profiling = True
        so.profile_file_prefix = f"/tmp/prof_{spec.replace('/', '_')}"
        s = DecoderSession(path, device=device, max_length=ctx + steps + 8, session_options=so)
        s.reset(1)
        rng = np.random.default_rng(0)
        while s.length < ctx:
            s.step(rng.integers(3, 30000, (1, min(chunk, ctx - s.length))))
        for _ in range(steps + 3):
            s.step(np.full((1, 1), 7))
        f = s.sess.end_profiling()
        ev = json.load(open(f))
        runs = [e for e in ev if e.get("name") == "model_run"][-steps:]
        t0 = runs[0]["ts"]
        nodes = [e for e in ev if e.get("cat") == "Node" and e["ts"] >= t0 and e["name"].endswith("_kernel_time")]
        by = {}
        for e in nodes:
            k = (e["args"].get("op_name", "?"), e["args"].get("provider", "?"))
            c = by.setdefault(k, [0, 0.0])
            c[0] += 1
            c[1] += e["dur"]
        run_us = statistics.median(r["dur"] for r in runs)
        node_us = sum(c[1] for c in by.values()) / steps
        print(f"PROFILE {spec} ctx={ctx}: model_run median {run_us / 1e3:.2f} ms, node events/step "
              f"{len(nodes) / steps:.0f}, summed node time/step {node_us / 1e3:.2f} ms", flush=True)
        for (op, prov), (n, us) in sorted(by.items(), key=lambda kv: -kv[1][1])[:12]:
            print(f"    {op:28s} {prov:24s} n/step {n / steps:6.0f}  us/step {us / steps:9.1f}", flush=True)
        del s
        gc.collect()


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--out", default=str(ROOT / ".device" / "e2e"))
    b.add_argument("--shapes", default="smollm2,llama3-8b-2l")
    b.add_argument("--variants", default="k4v4,balanced")
    b.add_argument("--check", action="store_true", help="also run every graph on the CPU EP for 3 tokens")
    r = sub.add_parser("run")
    r.add_argument("root")
    r.add_argument("--contexts", default="4096,32768")
    r.add_argument("--steps", type=int, default=32)
    r.add_argument("--chunk", type=int, default=1024)
    r.add_argument("--batch8-ctx", type=int, default=4096)
    r.add_argument("--budget-s", type=float, default=400)
    r.add_argument("--prefill-limit-s", type=float, default=40, help="past this, the rest of the context is filled by repeating the prefilled rows")
    r.add_argument("--json", default=os.environ.get("OUT", "") and os.path.join(os.environ["OUT"], "e2e.json"))
    p = sub.add_parser("profile")
    p.add_argument("root")
    p.add_argument("--models", default="smollm2/orig,smollm2/k4v4,llama3-8b-2l/orig,llama3-8b-2l/k4v4")
    p.add_argument("--ctx", type=int, default=4096)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--regenerate", action="store_true")
    p.add_argument("--device", default="cuda")
    a = ap.parse_args()
    if a.cmd == "build":
        shapes, variants = a.shapes.split(","), [v for v in a.variants.split(",") if v]
        build(Path(a.out), shapes, variants)
        if a.check:
            check_cpu(Path(a.out), shapes, variants)
    elif a.cmd == "profile":
        if a.regenerate:
            regenerate(Path(a.root))
        profile(Path(a.root), a.models.split(","), a.ctx, a.steps, a.chunk, a.device)
    else:
        run(Path(a.root), [int(c) for c in a.contexts.split(",")], a.steps, a.chunk, a.batch8_ctx, a.budget_s,
            Path(a.json) if a.json else None, a.prefill_limit_s)


if __name__ == "__main__":
    main()
