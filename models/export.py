"""Export recipes: HF model folder -> decoder ONNX with a KV cache, in the three source forms the
graph passes rewrite (see docs/export-forms.md for what each graph looks like).

- ``export_optimum``: optimum-onnx ``text-generation-with-past`` -> ``model.onnx`` (one graph,
  not merged; prefill = empty past). TorchScript exporter, opset 18, decomposed attention.
- ``export_dynamo``: ``torch.onnx.export(dynamo=True)`` at opset 23 -> ONNX ``Attention``,
  ``RotaryEmbedding``, ``RMSNormalization`` ops; same I/O names as optimum.
- ``export_genai``: onnxruntime-genai's model builder -> ``model.onnx`` + ``model.onnx.data`` +
  ``genai_config.json`` with one ``com.microsoft.GroupQueryAttention`` per layer. The builder of
  onnxruntime-genai 0.18.0 needs transformers 5.x (it imports ``Qwen3_5ForConditionalGeneration``)
  while optimum-onnx 0.1.0 needs transformers < 4.58, so it runs in a subprocess with a Python
  that has transformers 5.x: ``python=``, else ``$TQ_ORT_GENAI_PYTHON``, else
  ``<cache>/genai-venv/bin/python`` if present, else the current interpreter. See
  ``models/REQUIREMENTS.txt`` for making that venv.

Everything runs offline: ``HF_HUB_OFFLINE=1`` is set for in-process and subprocess exports.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

#: Cache I/O names shared by all three sources (genai: same names, see docs for order/dims).
PAST_KEY = "past_key_values.{}.key"
PAST_VALUE = "past_key_values.{}.value"
PRESENT_KEY = "present.{}.key"
PRESENT_VALUE = "present.{}.value"


def _offline_env() -> dict:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _copy_side_files(model_dir: Path, out: Path) -> None:
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt"):
        src = model_dir / name
        if src.exists() and not (out / name).exists():
            shutil.copy2(src, out / name)


# --------------------------------------------------------------------------------------------
# optimum
# --------------------------------------------------------------------------------------------
def export_optimum(model_dir, out_dir, *, opset: int | None = None) -> Path:
    """optimum ``text-generation-with-past`` export, fp32, CPU. Returns the path of ``model.onnx``.

    One non-merged graph (``use_merged`` does not exist any more in optimum-onnx 0.1): inputs
    ``input_ids, attention_mask, position_ids (not gemma3), past_key_values.{i}.key/.value``,
    outputs ``logits, present.{i}.key/.value``; prefill feeds past with 0 rows.
    """
    from optimum.exporters.onnx import main_export

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kw = {} if opset is None else {"opset": opset}
    main_export(str(model_dir), output=str(out), task="text-generation-with-past", device="cpu",
                dtype="fp32", no_post_process=False, do_validation=False,
                local_files_only=True, **kw)
    return out / "model.onnx"


# --------------------------------------------------------------------------------------------
# torch.onnx dynamo
# --------------------------------------------------------------------------------------------
def _cache_dims(config) -> tuple[int, int, int]:
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    hd = getattr(config, "head_dim", None) or config.hidden_size // heads
    return layers, kv, hd


def export_dynamo(model_dir, out_dir, opset: int = 23) -> Path:
    """``torch.onnx.export(dynamo=True)`` of the HF model (sdpa attention) with a DynamicCache.

    I/O: ``input_ids [B,S]``, ``attention_mask [B,T]`` (dim ``total_sequence_length``),
    ``position_ids [B,S]`` (every family, gemma3 included), ``past_key_values.{i}.key/.value``
    ``[B,Hkv,P,d]`` -> ``logits``, ``present.{i}.key/.value`` ``[B,Hkv,P+S,d]``.
    opset >= 23 gives ONNX ``Attention`` (+ ``RotaryEmbedding``, ``RMSNormalization``); lower
    opsets give a decomposed MatMul/Softmax graph. Returns the path of ``model.onnx``.
    """
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32,
                                                 attn_implementation="sdpa").eval()
    cfg = model.config
    n_layers, kvh, hd = _cache_dims(cfg)

    class _Decoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, position_ids, past):
            # No config: every layer is a plain DynamicLayer that keeps all rows (sliding-window
            # layers included; the window lives in the mask), like optimum's export. With
            # config=..., gemma3's sliding layers would crop the cache to window-1 rows.
            cache = DynamicCache()
            for i in range(n_layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            o = self.m(input_ids=input_ids, attention_mask=attention_mask,
                       position_ids=position_ids, past_key_values=cache, use_cache=True)
            flat = []
            for layer in o.past_key_values.layers:
                flat += [layer.keys, layer.values]
            return (o.logits, *flat)

    # Sample shapes: the traced mask code must take its general path, so the sample total length
    # exceeds any sliding window (with T <= window transformers skips the window term).
    b, s, p = 2, 4, 3
    window = getattr(cfg, "sliding_window", None)
    if isinstance(window, int) and window > 0:
        p = max(p, window + 2)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, min(cfg.vocab_size, 256), (b, s), generator=g)
    am = torch.ones(b, p + s, dtype=torch.int64)
    pos = torch.arange(p, p + s).expand(b, s).contiguous()
    past = [torch.randn(b, kvh, p, hd, generator=g) for _ in range(2 * n_layers)]
    Dim = torch.export.Dim
    batch, seq, psl, tsl = (Dim("batch_size"), Dim("sequence_length"),
                            Dim("past_sequence_length"), Dim("total_sequence_length"))
    dyn = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: tsl},
           "position_ids": {0: batch, 1: seq},
           "past": [{0: batch, 2: psl} for _ in range(2 * n_layers)]}
    in_names = ["input_ids", "attention_mask", "position_ids"] + [
        n.format(i) for i in range(n_layers) for n in (PAST_KEY, PAST_VALUE)]
    out_names = ["logits"] + [n.format(i) for i in range(n_layers) for n in (PRESENT_KEY, PRESENT_VALUE)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(_Decoder(model).eval(), (ids, am, pos, past), dynamic_shapes=dyn,
                                 dynamo=True, opset_version=opset, input_names=in_names,
                                 output_names=out_names, optimize=True, verbose=False)
    path = out / "model.onnx"
    n_params = sum(t.numel() for t in model.parameters())
    prog.save(str(path), external_data=n_params * 4 > 1_800_000_000)
    _copy_side_files(Path(model_dir), out)
    return path


# --------------------------------------------------------------------------------------------
# onnxruntime-genai model builder
# --------------------------------------------------------------------------------------------
def _cache_root() -> Path:
    from .smollm2 import cache_root

    return cache_root()


def genai_builder_python(python: str | None = None) -> str:
    """The interpreter that runs the onnxruntime-genai builder (see the module docstring)."""
    if python:
        return str(python)
    if os.environ.get("TQ_ORT_GENAI_PYTHON"):
        return os.environ["TQ_ORT_GENAI_PYTHON"]
    venv = _cache_root() / "genai-venv" / "bin" / "python"
    if venv.exists():
        return str(venv)
    return sys.executable


_PROBE = ("import importlib.util, sys, transformers\n"
          "ok = importlib.util.find_spec('onnxruntime_genai') is not None\n"
          "ok = ok and hasattr(transformers, 'Qwen3_5ForConditionalGeneration')\n"
          "print(transformers.__version__); sys.exit(0 if ok else 3)\n")


_PROBED: dict[str, tuple[bool, str]] = {}


def genai_builder_available(python: str | None = None) -> tuple[bool, str]:
    """(usable, reason) for the builder interpreter (probed once per interpreter path)."""
    py = genai_builder_python(python)
    if py not in _PROBED:
        _PROBED[py] = _probe(py)
    return _PROBED[py]


def _probe(py: str) -> tuple[bool, str]:
    try:
        r = subprocess.run([py, "-c", _PROBE], capture_output=True, text=True, env=_offline_env(),
                           timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"{py}: {e}"
    if r.returncode != 0:
        return False, (f"{py}: onnxruntime-genai builder needs onnxruntime-genai and transformers "
                       f">= 5 (has {r.stdout.strip() or r.stderr.strip()[-200:]})")
    return True, f"{py} (transformers {r.stdout.strip()})"


# Runs the builder in the builder's interpreter. One compatibility patch: builder 0.18.0's
# Gemma3Model reads a flat ``rope_parameters`` (+ ``rope_local_base_freq``), but transformers 5.x
# gives Gemma3 a per-layer-type dict {"full_attention": {...}, "sliding_attention": {...}}
# (KeyError 'rope_type'); flatten it to the global layers' params + the local theta.
_LAUNCHER = r"""
import runpy, sys
import onnxruntime_genai.models  # puts the builder folder on sys.path
try:
    from builders import gemma as _g
    _orig_init = _g.Gemma3Model.__init__
    def _init(self, config, *a, **k):
        rp = getattr(config, "rope_parameters", None)
        if (type(self) is _g.Gemma3Model and isinstance(rp, dict) and "rope_type" not in rp
                and "full_attention" in rp and "sliding_attention" in rp):
            config.rope_local_base_freq = rp["sliding_attention"]["rope_theta"]
            config.rope_theta = rp["full_attention"]["rope_theta"]
            config.rope_parameters = dict(rp["full_attention"])
        _orig_init(self, config, *a, **k)
    _g.Gemma3Model.__init__ = _init
except Exception as e:  # the patch is best effort; the builder runs unpatched
    print("tq-ort: gemma3 builder patch not applied:", e, file=sys.stderr)
sys.argv = ["onnxruntime_genai.models.builder"] + sys.argv[1:]
runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)
"""


def export_genai(model_dir, out_dir, *, precision: str = "fp32", execution_provider: str = "cpu",
                 extra_options: dict | None = None, python: str | None = None,
                 timeout: float = 3600) -> Path:
    """Run ``python -m onnxruntime_genai.models.builder -i model_dir -o out_dir -p fp32 -e cpu``.

    Returns the path of ``model.onnx`` (weights in ``model.onnx.data``, plus ``genai_config.json``
    and the tokenizer files). Raises ``RuntimeError`` with the builder's output on failure.
    """
    ok, why = genai_builder_available(python)
    if not ok:
        raise RuntimeError(
            why + "\nCreate the builder env once (see models/REQUIREMENTS.txt):\n"
            f"  python -m venv --system-site-packages {_cache_root() / 'genai-venv'}\n"
            f"  {_cache_root() / 'genai-venv' / 'bin' / 'pip'} install transformers==5.24.0\n"
            "or point TQ_ORT_GENAI_PYTHON at a Python with onnxruntime-genai and transformers 5.x.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tq-genai-cache-") as cache:
        cmd = [genai_builder_python(python), "-c", _LAUNCHER,
               "-i", str(model_dir), "-o", str(out), "-p", precision, "-e", execution_provider,
               "-c", cache]
        if extra_options:
            cmd += ["--extra_options"] + [f"{k}={v}" for k, v in extra_options.items()]
        r = subprocess.run(cmd, capture_output=True, text=True, env=_offline_env(), timeout=timeout)
    path = out / "model.onnx"
    if r.returncode != 0 or not path.exists():
        shown = " ".join(["<python>", "-m", "onnxruntime_genai.models.builder"] + cmd[3:])
        raise RuntimeError(f"onnxruntime-genai builder failed (rc={r.returncode}): {shown}\n"
                           f"{(r.stdout + r.stderr)[-4000:]}")
    return path


def read_genai_config(out_dir) -> dict:
    return json.loads((Path(out_dir) / "genai_config.json").read_text())


EXPORTERS = {"optimum": export_optimum, "dynamo": export_dynamo, "genai": export_genai}


if __name__ == "__main__":  # python -m models.export {optimum|dynamo|genai} MODEL_DIR OUT_DIR
    kind, src, dst = sys.argv[1:4]
    print(EXPORTERS[kind](src, dst))
