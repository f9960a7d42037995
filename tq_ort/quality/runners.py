"""Running the models: what is evaluated (Variant, parse_variant, build_variant, bytes_of), the
original model's reference (Reference), one variant against it (evaluate_variant) and the whole
run (run_eval). The method is described in tq_ort.quality."""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..paths import cache_dir
from .data import EvalData, EvalSettings, build_data, load_tokenizer, resolve_model_dir
from .metrics import kl_divergence, log_softmax, per_text
from .report import command_line, environment, model_info, slug


# --------------------------------------------------------------------------------------------
# what is evaluated
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One cache configuration: kind 'tq' (TurboQuant rewrite, `tq` = TQConfig kwargs) or
    'uniform' (per-token uniform int-`bits` baseline) or 'prebuilt' (an already rewritten ONNX)."""

    kind: str
    tq: tuple = ()  # sorted (key, value) pairs of TQConfig kwargs
    bits: int = 0
    path: str = ""
    name: str = ""

    @staticmethod
    def turboquant(**kw) -> "Variant":
        return Variant("tq", tq=tuple(sorted(kw.items())))

    @staticmethod
    def from_config(cfg) -> "Variant":
        """The TurboQuant variant of a validated TQConfig: every field that differs from TQConfig's
        default is kept (so `eval` means the same as `export` for every flag and preset)."""
        import dataclasses

        from graph_passes import TQConfig

        default = TQConfig()
        kw = {}
        for f in dataclasses.fields(cfg):
            v = getattr(cfg, f.name)
            if f.name in ("key_bits", "value_bits") or v != getattr(default, f.name):
                kw[f.name] = tuple(v) if isinstance(v, list) else v
        return Variant.turboquant(**kw)

    @staticmethod
    def uniform(bits: int, recent_window: int = 0) -> "Variant":
        return Variant("uniform", bits=bits, tq=(("recent_window", recent_window),) if recent_window else ())

    @property
    def window(self) -> int:
        """recent_window of a uniform baseline (TurboQuant variants: see tq_config())."""
        return dict(self.tq).get("recent_window", 0)

    @staticmethod
    def prebuilt(path: str | Path, name: str = "") -> "Variant":
        return Variant("prebuilt", path=str(path), name=name)

    def tq_config(self):
        from graph_passes import TQConfig

        kw = dict(self.tq)
        if "protect_layers" in kw:
            kw["protect_layers"] = tuple(kw["protect_layers"])
        return TQConfig(**kw)

    @property
    def family(self) -> str:
        if self.kind == "uniform":
            return "uniform int-b (per token, no rotation)" + (
                f", last {self.window} tokens also exact" if self.window else "")
        if self.kind == "prebuilt":
            return "prebuilt"
        c = self.tq_config()
        if c.keys_only:
            return "TurboQuant keys only"
        if c.use_qjl:
            return "TurboQuant + QJL"
        if c.protect_layers:
            return "TurboQuant, layers " + ",".join(map(str, c.protect_layers)) + f" at {c.protect_bits} bits"
        if c.layer_bits:
            return "TurboQuant, per-layer widths" + (f", last {c.recent_window} tokens also exact"
                                                     if c.recent_window else "")
        if c.recent_window:
            return f"TurboQuant, last {c.recent_window} tokens also exact"
        return "TurboQuant"

    @property
    def label(self) -> str:
        if self.kind == "uniform":
            return f"uniform int{self.bits}" + (f" recent{self.window}" if self.window else "")
        if self.kind == "prebuilt":
            return self.name or Path(self.path).parent.name
        c = self.tq_config()
        s = f"K{c.key_bits}" + ("" if c.keys_only else f"V{c.value_bits}")
        if c.layer_bits:  # an allocation's tag names it; a short inline spec is shown as given
            from graph_passes.layer_bits import format_layer_bits

            spec = format_layer_bits(c.layer_bits)
            s = c.layer_bits_source or (f"{s} layers={spec}" if len(c.layer_bits) <= 3 else
                                        f"{s} layers[{len(c.layer_bits)}]-{hashlib.sha256(spec.encode()).hexdigest()[:6]}")
        if c.use_qjl:
            s += f" qjl({c.key_bits - 1}+1)"
        if c.keys_only:
            s += " keys-only"
        if c.protect_layers:
            s += f" protect {','.join(map(str, c.protect_layers))}@{c.protect_bits}"
        if c.recent_window:
            s += f" recent{c.recent_window}"
        if c.seed:
            s += f" seed{c.seed}"
        if c.target != "ort":
            s += f" {c.target}"
        return s

    def describe(self) -> dict:
        if self.kind == "uniform":
            return {"kind": "uniform", "bits": self.bits, **({"recent_window": self.window} if self.window else {})}
        if self.kind == "prebuilt":
            return {"kind": "prebuilt", "path": self.path}
        c = self.tq_config()
        d = {"kind": "turboquant", "key_bits": c.key_bits, "value_bits": 0 if c.keys_only else c.value_bits,
             "use_qjl": c.use_qjl, "keys_only": c.keys_only, "protect_layers": list(c.protect_layers),
             "protect_bits": c.protect_bits, "seed": c.seed}
        if c.recent_window:  # only when set, so results cached before the option existed keep their keys
            d["recent_window"] = c.recent_window
        if c.layer_bits:
            d["layer_bits"] = [list(e) for e in c.layer_bits]
        return d


def parse_variant(spec: str) -> Variant:
    """'K4V4', 'K3.5V3' (split widths), 'K4V3+qjl', 'K4+keys', 'K3V3+protect', 'K4V4+protect=0,1,-2,-1@8', 'K4V4+recent64', 'int4',
    'uniform4', 'int4+recent64'; per-layer widths: 'K4V3+layers=0:K8V8,-1:K8V4' or 'K4V3+layers=ALLOC.json'
    (an allocation file), 'K4V4+budget=3.5@SENSITIVITY.json' (solved as --bits-budget / --sensitivity do)."""
    s = spec.strip()
    low = s.lower()
    if low.startswith("int") or low.startswith("uniform"):
        head, _, opt = low.partition("+")
        if opt and not opt.startswith("recent"):
            raise ValueError(f"variant {spec!r}: the uniform baseline takes one option, recentN")
        return Variant.uniform(int(head.replace("uniform", "").replace("int", "")),
                               int(opt[6:].lstrip("=")) if opt else 0)
    parts = s.split("+")
    head, opts = parts[0].upper(), [p if p.lower().startswith(("layers=", "budget=")) else p.lower()
                                    for p in parts[1:]]
    if not head.startswith("K"):
        raise ValueError(f"variant {spec!r}: expected e.g. K4V4, K4V3+qjl, K4+keys, K4V4+protect, int4")
    if "V" in head:
        kb, vb = head[1:].split("V")
    else:
        kb, vb = head[1:], "4"
    from graph_passes.widths import parse_width

    kw = {"key_bits": parse_width(kb), "value_bits": parse_width(vb)}
    for o in opts:
        if o == "qjl":
            kw["use_qjl"] = True
        elif o in ("keys", "keys-only", "keysonly"):
            kw["keys_only"] = True
        elif o.startswith("protect"):
            layers, bits = "0,1,-2,-1", 8
            if "=" in o:
                rest = o.split("=", 1)[1]
                layers, _, b = rest.partition("@")
                bits = int(b) if b else 8
            kw["protect_layers"] = tuple(int(x) for x in layers.split(",") if x.strip())
            kw["protect_bits"] = bits
        elif o.startswith("seed"):
            kw["seed"] = int(o[4:].lstrip("="))
        elif o.startswith("recent"):
            kw["recent_window"] = int(o[6:].lstrip("="))
        elif o.startswith("layers="):
            kw["layer_bits"], kw["layer_bits_source"] = layer_bits_arg(o.split("=", 1)[1])
        elif o.startswith("budget="):
            budget, at, path = o.split("=", 1)[1].partition("@")
            if not at:
                raise ValueError(f"variant {spec!r}: expected budget=BITS@SENSITIVITY.json")
            kw["layer_bits"], kw["layer_bits_source"] = budget_arg(float(budget), path)
        else:
            raise ValueError(f"variant {spec!r}: unknown option {o!r} (qjl, keys, protect[=L,L@B], recentN, seedN, "
                             "layers=SPEC|FILE, budget=BITS@FILE)")
    return Variant.turboquant(**kw)


def layer_bits_arg(value: str) -> tuple[tuple, str]:
    """(layer_bits, source tag) of `--layer-bits VALUE`: an allocation file (JSON) or an inline spec."""
    from graph_passes.layer_bits import parse_layer_bits

    from .allocation import load_allocation

    if value.endswith(".json") or Path(value).is_file():
        return load_allocation(value)
    return parse_layer_bits(value), ""


def budget_arg(budget: float, sensitivity: str, metric: str = "kl") -> tuple[tuple, str]:
    """(layer_bits, source tag) of `--bits-budget BUDGET --sensitivity FILE` (the solver, deterministic)."""
    from .allocation import allocation_from_sensitivity

    rec = allocation_from_sensitivity(sensitivity, budget, metric)
    return tuple(tuple(e) for e in rec["layer_bits"]), rec["tag"]


# --------------------------------------------------------------------------------------------
# building variants
# --------------------------------------------------------------------------------------------
def bytes_of(variant: Variant, model_path: Path, context: int = 512) -> dict:
    """Bits per value (scales and QJL included) and compression vs float16, from the rewritten model.

    TurboQuant: from the metadata row_bytes (keys-only values counted as float16, as they would be
    stored in a float16 deployment); exact recent-window rings (a fixed R tokens in float16) are
    spread over `context` tokens, and `compression_at` gives the ratio at longer contexts.
    Uniform baseline: analytic (b bits + fp16 scale and zero per row)."""
    import onnx

    from ..inspect import ring_bytes

    m = onnx.load(str(model_path), load_external_data=False)
    props = {p.key: p.value for p in m.metadata_props}
    if "turboquant.config" in props:
        cfg = json.loads(props["turboquant.config"])
        tq = fp16 = 0
        for L in cfg["layers"]:
            h, d = L["kv_heads"], L["head_dim"]
            tq += h * (L["key_row_bytes"] + (L["value_row_bytes"] or 2 * d))
            fp16 += h * 4 * d
        values = sum(2 * L["kv_heads"] * L["head_dim"] for L in cfg["layers"])
        # rings counted in float16, as a float16 deployment stores them (this export is float32)
        ring = sum(ring_bytes(L, itemsize=2) for L in cfg["layers"])
        how = "metadata row_bytes" + (" (values float16)" if any(not L["value_row_bytes"] for L in cfg["layers"]) else "")
        return _spread(tq, fp16, ring, values, context, how,
                       f"float16 rings of the last {cfg['requested'].get('recent_window')} tokens")
    if "tq_ort.uniform_baseline" in props:
        b = json.loads(props["tq_ort.uniform_baseline"])
        values = sum(2 * L["kv_heads"] * L["head_dim"] for L in b["layers"])
        return _spread(b["bytes_per_token"], b["fp16_bytes_per_token"], b.get("ring_bytes", 0), values, context,
                       "analytic: b bits + fp16 scale + fp16 zero point per token per head",
                       f"float16 rows of the last {b.get('recent_window')} tokens")
    return {"bits_per_value": 16.0, "compression": 1.0, "how": "no compressed-cache metadata"}


def _spread(tq: int, fp16: int, ring: int, values: int, context: int, how: str, ring_how: str) -> dict:
    """Bits per value and compression with a fixed `ring` of bytes spread over `context` tokens."""
    out = {"bits_per_value": 8 * (tq + ring / context) / values, "bytes_per_token": tq, "fp16_bytes_per_token": fp16,
           "compression": fp16 * context / (tq * context + ring), "how": how}
    if ring:
        out["ring_bytes"] = ring
        out["compression_at"] = {str(n): fp16 * n / (tq * n + ring) for n in (4096, 32768)}
        out["how"] += f"; {ring_how} over {context} tokens"
    return out


def build_variant(variant: Variant, src_onnx: Path, hf_config: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / "model.onnx"
    if variant.kind == "prebuilt":
        return Path(variant.path)
    if variant.kind == "uniform":
        from graph_passes.rule_uniform_baseline import rewrite_uniform_baseline

        return rewrite_uniform_baseline(src_onnx, dst, variant.bits, hf_config=hf_config,
                                        recent_window=variant.window)
    from graph_passes import rewrite_file

    return rewrite_file(src_onnx, dst, variant.tq_config(), hf_config=hf_config)


# --------------------------------------------------------------------------------------------
# running sessions
# --------------------------------------------------------------------------------------------
def decoder_session(path: Path, max_length: int, threads: int = 0):
    import onnxruntime as ort

    from ..session import DecoderSession

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    return DecoderSession(path, max_length=max_length, session_options=so)


def _fingerprint(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:12]


class Reference:
    """The original model's log-probs on the windows and its greedy continuations (cached on disk)."""

    def __init__(self, onnx_path: Path, data: EvalData, settings: EvalSettings, *, progress: bool = True,
                 store: Path | None = None):
        self.path, self.data, self.settings = onnx_path, data, settings
        key = f"{_fingerprint(onnx_path)}-{data.digest()}-g{settings.gen_tokens}"
        self.dir = Path(store) if store else cache_dir() / "eval" / key
        self.dir.mkdir(parents=True, exist_ok=True)
        W, L = data.windows.shape
        done = self.dir / "done.json"
        if done.exists():
            meta = json.loads(done.read_text())
            self.vocab = meta["vocab"]
            self.logp = np.load(self.dir / "logp.npy", mmap_mode="r")
            self.gen = np.load(self.dir / "gen.npy")
            self.nll = np.load(self.dir / "nll.npy")
            self.chunking_check = meta["chunking_check"]
            self.seconds = meta["seconds"]
            return
        t0 = time.time()
        cap = max(L, data.prompts.shape[1] + settings.gen_tokens)
        sess = decoder_session(onnx_path, cap, settings.threads)
        from tqdm import tqdm

        o = data.offset
        n_scored = L - 1 - o
        bar = tqdm(total=W + settings.gen_tokens, desc="original model", unit="step", disable=not progress,
                   dynamic_ncols=True)
        logp = None
        nll = np.zeros((W, n_scored), dtype=np.float64)
        for w in range(W):
            sess.reset(1)
            lg = sess.step(data.windows[w:w + 1], all_logits=True)[0]  # [L, V]
            lp = log_softmax(lg[o:L - 1])
            if logp is None:
                self.vocab = lp.shape[-1]
                logp = np.lib.format.open_memmap(self.dir / "logp.npy", mode="w+", dtype=np.float32,
                                                 shape=(W, n_scored, self.vocab))
            logp[w] = lp
            nll[w] = -lp[np.arange(n_scored), data.windows[w, o + 1:L]]
            bar.update()
        logp.flush()
        # chunking check: the first 64 positions of window 0 fed one token at a time
        n_chk = min(64, L)
        sess.reset(1)
        step_logits = np.concatenate([sess.step(data.windows[:1, i:i + 1]) for i in range(n_chk)])
        lp_step = log_softmax(step_logits[o:n_chk - 1])
        lp_pre = np.asarray(logp[0, :n_chk - 1 - o])
        self.chunking_check = {
            "positions": int(n_chk - 1 - o),
            "max_abs_logit_diff": float(np.abs(step_logits[o:n_chk - 1] - _prefill_logits(sess, data, n_chk, o)).max()),
            "kl_mean": float(kl_divergence(lp_pre, lp_step).mean()),
        }
        # greedy continuations (prompts prefilled, then one token per step; batch = all prompts)
        P = data.prompts.shape[0]
        gen = np.zeros((P, settings.gen_tokens), dtype=np.int64)
        if P:
            sess.reset(P)
            lg = sess.step(data.prompts)
            for t in range(settings.gen_tokens):
                gen[:, t] = lg.argmax(-1)
                if t + 1 < settings.gen_tokens:
                    lg = sess.step(gen[:, t:t + 1])
                bar.update()
        bar.close()
        self.logp, self.gen, self.nll = np.load(self.dir / "logp.npy", mmap_mode="r"), gen, nll
        np.save(self.dir / "gen.npy", gen)
        np.save(self.dir / "nll.npy", nll)
        self.seconds = time.time() - t0
        done.write_text(json.dumps({"vocab": self.vocab, "chunking_check": self.chunking_check,
                                    "seconds": self.seconds, "model": str(onnx_path)}))

    def summary(self) -> dict:
        per = per_text(self.data, self.nll)
        return {"ppl": {k: math.exp(v) for k, v in per.items()}, "nll": per, "seconds": round(self.seconds, 1),
                "chunking_check": self.chunking_check,
                "note": "unrewritten optimum export, float32 cache; each window prefilled in one run"}


def _prefill_logits(sess, data: EvalData, n: int, o: int) -> np.ndarray:
    sess.reset(1)
    return sess.step(data.windows[:1, :n], all_logits=True)[0][o:n - 1]


def evaluate_variant(model_path: Path, ref: Reference, *, progress: bool = True, desc: str = "variant") -> dict:
    """Perplexity, KL, top-1 and greedy agreement of the model at `model_path` against `ref`."""
    from tqdm import tqdm

    data, st = ref.data, ref.settings
    W, L = data.windows.shape
    o = data.offset
    n_scored = L - 1 - o
    cap = max(L, data.prompts.shape[1] + st.gen_tokens)
    t_load = time.time()
    sess = decoder_session(model_path, cap, st.threads)
    t_load = time.time() - t_load
    B = max(1, min(st.batch, W))
    chunk = max(1, st.chunk)
    steps_per_window = math.ceil(L / chunk)
    n_batches = math.ceil(W / B)
    total = n_batches * steps_per_window + (st.gen_tokens if data.prompts.shape[0] else 0)
    bar = tqdm(total=total, desc=desc, unit="step", disable=not progress, dynamic_ncols=True)
    nll = np.zeros((W, n_scored))
    kl = np.zeros((W, n_scored))
    top1 = np.zeros((W, n_scored), dtype=bool)
    t0 = time.time()
    fed = 0
    for b0 in range(0, W, B):
        rows = list(range(b0, min(W, b0 + B)))
        sess.reset(len(rows))
        ids = data.windows[rows]
        for s0 in range(0, L, chunk):
            lg = sess.step(ids[:, s0:s0 + chunk], all_logits=True)  # [b, s, V]
            fed += lg.shape[0] * lg.shape[1]
            # logit position i predicts token i+1; scored positions are o..L-2
            lo, hi = max(s0, o), min(s0 + lg.shape[1], L - 1)
            if hi > lo:
                lp = log_softmax(lg[:, lo - s0:hi - s0])
                ref_lp = np.asarray(ref.logp[rows, lo - o:hi - o])
                tgt = ids[:, lo + 1:hi + 1]
                nll[rows, lo - o:hi - o] = -np.take_along_axis(lp, tgt[..., None], axis=-1)[..., 0]
                kl[rows, lo - o:hi - o] = kl_divergence(ref_lp, lp)
                top1[rows, lo - o:hi - o] = lp.argmax(-1) == ref_lp.argmax(-1)
            bar.update()
            if progress and s0 % (64 * chunk) == 0:
                done = nll[rows, : max(0, hi - o)]
                if done.size:
                    base = ref.nll[rows, : max(0, hi - o)]
                    bar.set_postfix_str(f"ppl {100 * (math.exp(done.mean() - base.mean()) - 1):+.2f}% "
                                        f"kl {kl[rows, :max(0, hi - o)].mean():.4f}")
    t_ppl = time.time() - t0
    gen = _teacher_forced(sess, data, ref.gen, bar) if data.prompts.shape[0] else None
    bar.close()
    per = per_text(data, nll)
    base = per_text(data, ref.nll)
    names = np.asarray(data.window_text)
    out = {
        "ppl": {k: math.exp(v) for k, v in per.items()},
        "ppl_delta_pct": {k: 100 * (math.exp(per[k] - base[k]) - 1) for k in per},
        "kl": {**{t: float(kl[names == t].mean()) for t in dict.fromkeys(data.window_text)}, "all": float(kl.mean())},
        "kl_p99": float(np.quantile(kl, 0.99)),
        "top1_agreement": float(top1.mean()),
        "seconds": {"load": round(t_load, 1), "ppl": round(t_ppl, 1), "tokens_per_s": round(fed / max(t_ppl, 1e-9), 1)},
        "shared_buffer": bool(sess.shared),
    }
    if gen is not None:
        out["generation"] = gen
    return out


def _teacher_forced(sess, data: EvalData, ref_gen: np.ndarray, bar) -> dict:
    P, T = ref_gen.shape
    sess.reset(P)
    lg = sess.step(data.prompts)
    match = np.zeros((P, T), dtype=bool)
    for t in range(T):
        match[:, t] = lg.argmax(-1) == ref_gen[:, t]
        if t + 1 < T:
            lg = sess.step(ref_gen[:, t:t + 1])
        bar.update()
    first = [int(np.argmin(m)) if not m.all() else T for m in match]
    return {"agreement": float(match.mean()), "first_divergence": first,
            "first_divergence_mean": float(np.mean(first)), "first_divergence_min": int(min(first)),
            "prompts": P, "tokens": T, "prompt_texts": list(data.prompt_text)}


# --------------------------------------------------------------------------------------------
# the whole run
# --------------------------------------------------------------------------------------------
def library_fingerprint() -> str:
    try:
        from ..library import library_path

        p = Path(library_path())
        st = p.stat()
        return hashlib.sha256(f"{p}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:10]
    except Exception:  # noqa: BLE001
        return "nolib"


def variant_key(v: Variant, settings: EvalSettings) -> str:
    lib = library_fingerprint() if v.kind != "uniform" else "std"
    h = hashlib.sha256(json.dumps([v.describe(), settings.chunk, lib], sort_keys=True).encode()).hexdigest()[:12]
    return f"variant-{slug(v.label)}-{h}.json"


def run_eval(model: str | Path | None, variants: list[Variant], settings: EvalSettings, *,
             progress: bool = True, keep_dir: Path | None = None, log=print, reuse: bool = True) -> dict:
    """Evaluate each variant against the original model; returns the results record.

    With `reuse`, a variant already measured on the same tokens, chunk and (TurboQuant) custom-op
    library build is read back from `<cache>/eval/` instead of being run again (sweeps resume)."""
    t_start = time.time()
    model_dir = resolve_model_dir(model)
    from ..export import exported_model

    src = exported_model(model_dir, "optimum")
    hf = json.loads((model_dir / "config.json").read_text())
    tok = load_tokenizer(model_dir)
    data = build_data(tok, settings)
    scored = ", ".join(f"{t['name']} {t['scored_tokens']}" for t in data.texts)
    log(f"model {model_dir.name}: {data.windows.shape[0]} windows of {settings.context} tokens "
        f"({scored} scored), "
        f"{data.prompts.shape[0]} prompts x {settings.gen_tokens} greedy tokens, chunk {settings.chunk}")
    ref = Reference(src, data, settings, progress=progress)
    record = {
        "tool": "tq-ort eval", "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": command_line(),
        **environment(),
        "model": model_info(model_dir, src),
        "texts": data.texts,
        "settings": asdict(settings),
        "original": ref.summary(),
        "results": [],
    }
    for i, v in enumerate(variants):
        cached = ref.dir / variant_key(v, settings)
        if reuse and v.kind != "prebuilt" and cached.exists():
            row = json.loads(cached.read_text())
            row["reused"] = True
            record["results"].append(row)
            log(f"{v.label:<34} (reused {cached.name})")
            continue
        tmp = Path(tempfile.mkdtemp(prefix="tq-eval-", dir=keep_dir)) if keep_dir is None else keep_dir / slug(v.label)
        try:
            t0 = time.time()
            path = build_variant(v, src, hf, tmp)
            t_build = time.time() - t0
            r = evaluate_variant(path, ref, progress=progress, desc=f"[{i + 1}/{len(variants)}] {v.label}")
            r["seconds"]["build"] = round(t_build, 1)
            row = {"label": v.label, "family": v.family, "config": v.describe(), **bytes_of(v, path, settings.context), **r}
            record["results"].append(row)
            if v.kind != "prebuilt":
                cached.write_text(json.dumps(row, default=float))
            log(f"{v.label:<34} {row['bits_per_value']:5.2f} bits  {row['compression']:4.2f}x  "
                f"ppl {row['ppl_delta_pct']['all']:+7.2f}%  KL {row['kl']['all']:.4f}  "
                f"gen agree {row.get('generation', {}).get('agreement', float('nan')):.3f}")
        except Exception as e:  # noqa: BLE001 - one failing variant must not lose the sweep
            record["results"].append({"label": v.label, "family": v.family, "config": v.describe(),
                                      "error": f"{type(e).__name__}: {e}"})
            log(f"{v.label}: FAILED {type(e).__name__}: {e}")
        finally:
            if keep_dir is None:
                shutil.rmtree(tmp, ignore_errors=True)
    record["seconds_total"] = round(time.time() - t_start, 1)
    return record
