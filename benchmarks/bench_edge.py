"""CPU benchmark of --target edge models (not a test): one decode step of a whole decoder at a given context.

Three models of the same export, run in plain onnxruntime on the CPU in concat mode (past fed in,
present = past + 1 row returned): the float original, the custom-op rewrite (TurboQuantAttention)
and the edge rewrite (standard ops). The custom-op model also runs in its shared-buffer mode
(DecoderSession's default: past and present one buffer). The cache is filled with valid rows
(random vectors encoded by the numpy reference; the float model gets random floats) instead of a
prefill, so 8K contexts need no 8K-token prefill; timing does not depend on the cache's content.

    python benchmarks/bench_edge.py ORIGINAL.onnx OP.onnx EDGE.onnx [--contexts 1024,4096,8192] [--out PATH]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tq_ort import codec
from tq_ort.cache import METADATA_KEY

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _session(path: Path, custom: bool) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if custom:
        from tq_ort import session_options

        so = session_options(so)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _cache(sess: ort.InferenceSession, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A valid cache of n tokens for every past input (rows from the reference encoder)."""
    import json

    meta = sess.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    layers, seed = {}, 0
    if meta:
        seed = json.loads(meta)["seed"]
        for L in json.loads(meta)["layers"]:
            layers[L["past_key"]] = (L, L["key_bits"])
            layers[L["past_value"]] = (L, L["value_bits"])
    out = {}
    for i in sess.get_inputs():
        if not i.name.startswith("past_key_values."):
            continue
        h, w = i.shape[1], i.shape[3]
        if i.type == "tensor(uint8)":
            L, bits = layers[i.name]
            d = L["head_dim"]
            x = rng.standard_normal((1, h, n, d)).astype(np.float32)
            out[i.name] = codec.encode(x, codec.rotation(d, seed + L["layer"]),
                                       codec.codebook(d, bits))
        else:
            out[i.name] = rng.standard_normal((1, h, n, w)).astype(np.float32)
    return out


def _feeds(sess, cache: dict, n: int) -> dict:
    names = {i.name for i in sess.get_inputs()}
    f = {"input_ids": np.array([[42]], np.int64), **cache}
    if "attention_mask" in names:
        f["attention_mask"] = np.ones((1, n + 1), np.int64)
    if "position_ids" in names:
        f["position_ids"] = np.array([[n]], np.int64)
    return f


def _timed(fn, warmup: int = 2, reps: int = 7) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def concat_step(sess, cache: dict, n: int) -> float:
    feeds = _feeds(sess, cache, n)
    return _timed(lambda: sess.run(["logits"], feeds))


def shared_step(sess, cache: dict, n: int) -> float:
    """Custom-op shared buffer: past/present bound to one buffer of capacity n + 1 (IOBinding)."""
    vals = {}
    for k, v in cache.items():
        buf = np.zeros(v.shape[:2] + (n + 1,) + v.shape[3:], v.dtype)
        buf[:, :, :n] = v
        vals[k] = ort.OrtValue.ortvalue_from_numpy(buf)
    io = sess.io_binding()
    io.bind_cpu_input("input_ids", np.array([[42]], np.int64))
    io.bind_cpu_input("attention_mask", np.ones((1, n + 1), np.int64))
    if "position_ids" in {i.name for i in sess.get_inputs()}:
        io.bind_cpu_input("position_ids", np.array([[n]], np.int64))
    for k, v in vals.items():
        io.bind_ortvalue_input(k, v)
        io.bind_ortvalue_output(k.replace("past_key_values.", "present."), v)
    io.bind_output("logits", "cpu")
    return _timed(lambda: sess.run_with_iobinding(io))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("original", type=Path)
    p.add_argument("op", type=Path)
    p.add_argument("edge", type=Path)
    p.add_argument("--contexts", default="1024,4096,8192")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "edge-cpu.md")
    a = p.parse_args(argv)
    rng = np.random.default_rng(0)
    sess = {"float": _session(a.original, False), "op": _session(a.op, True), "edge": _session(a.edge, False)}
    rows = []
    for n in [int(c) for c in a.contexts.split(",")]:
        caches = {k: _cache(s, n, rng) for k, s in sess.items()}
        t = {k: concat_step(s, caches[k], n) for k, s in sess.items()}
        t["op-shared"] = shared_step(sess["op"], caches["op"], n)
        mem = {k: sum(v.nbytes for v in c.values()) for k, c in caches.items()}
        rows.append((n, t, mem))
        print(n, {k: f"{v * 1e3:.1f} ms" for k, v in t.items()}, {k: f"{v / 2**20:.1f} MiB" for k, v in mem.items()},
              flush=True)
    load = os.getloadavg()[0]
    lines = ["# --target edge: CPU decode-step benchmark", "",
             f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
             f"load average at start of writing {load:.2f} (shared machine: absolute times are noisy)",
             f"- python {platform.python_version()}, onnxruntime {ort.__version__} (CPU EP, default threads)",
             f"- models: float `{a.original}`, custom-op `{a.op}`, edge `{a.edge}`",
             f"- command: `python benchmarks/bench_edge.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
             "- one decode step (S = 1) of the whole model at the given context, median of 7 after 2 warm-ups; "
             "concat mode = past fed in, present (past + 1 row) returned; op-shared = the custom op's "
             "shared-buffer mode (IOBinding, no copy of the past)", "",
             "| context | float (concat) | custom op (concat) | custom op (shared) | edge (concat) | edge / custom op "
             "(concat) | edge / float | cache float32 | cache rows | ratio |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for n, t, mem in rows:
        lines.append(f"| {n} | {t['float'] * 1e3:.1f} ms | {t['op'] * 1e3:.1f} ms | {t['op-shared'] * 1e3:.1f} ms | "
                     f"{t['edge'] * 1e3:.1f} ms | {t['edge'] / t['op']:.2f}x | {t['edge'] / t['float']:.2f}x | "
                     f"{mem['float'] / 2**20:.1f} MiB | {mem['edge'] / 2**20:.1f} MiB | "
                     f"{mem['float'] / mem['edge']:.2f}x |")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
