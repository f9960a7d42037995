"""tq-ort command line: export, rewrite, generate, inspect. Parses arguments and calls layers 3-4."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DEFAULT_PROMPT = "The capital of France is"


def _add_codec_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("compression")
    g.add_argument("--key-bits", type=int, default=4, help="bits per key coordinate, 1-4 or 8 (default 4; "
                   "with --qjl one of them is the QJL sign bit)")
    g.add_argument("--value-bits", type=int, default=4, help="bits per value coordinate, 1-4 or 8 (default 4)")
    g.add_argument("--qjl", action="store_true", help="add the 1-bit QJL residual sketch to keys (unbiased scores)")
    g.add_argument("--keys-only", action="store_true", help="compress keys only; values stay float")
    g.add_argument("--protect-layers", default="", help="comma-separated layers kept at --protect-bits, "
                   "negative counts from the end (e.g. 0,1,-2,-1)")
    g.add_argument("--protect-bits", type=int, default=8, help="bits for protected layers (default 8)")
    g.add_argument("--recent-window", type=int, default=0, metavar="R",
                   help="also keep the last R cached tokens exact, in a fixed float ring beside the compressed rows "
                   "(costs R tokens of float cache; the biggest quality lever on small models, docs/quality.md; "
                   "default 0 = off)")
    g.add_argument("--seed", type=int, default=0, help="seed of the rotations and QJL matrices (default 0)")
    g.add_argument("--preset", help="a named configuration chosen from the quality sweep (docs/quality.md); "
                   "overrides the bit flags. See tq_ort/presets.py for the names and the numbers behind them")


def _config(a: argparse.Namespace):
    from graph_passes import TQConfig

    layers = tuple(int(x) for x in a.protect_layers.split(",") if x.strip()) if a.protect_layers else ()
    if getattr(a, "preset", None):
        from .presets import preset_config

        kw = {k: (tuple(v) if k == "protect_layers" else v) for k, v in preset_config(a.preset).items()}
        cfg = TQConfig(**{"seed": a.seed, "recent_window": a.recent_window, **kw})
        cfg.validate()
        return cfg
    cfg = TQConfig(key_bits=a.key_bits, value_bits=a.value_bits, use_qjl=a.qjl, keys_only=a.keys_only,
                   protect_layers=layers, protect_bits=a.protect_bits, seed=a.seed, recent_window=a.recent_window)
    cfg.validate()
    return cfg


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB"


def cmd_export(a) -> int:
    from .export import export_and_rewrite

    t = time.time()
    dst = export_and_rewrite(Path(a.model) if a.model else None, Path(a.output), _config(a), source=a.source,
                             progress=not a.quiet)
    print(f"wrote {dst} in {time.time() - t:.1f} s")
    return 0


def cmd_rewrite(a) -> int:
    from graph_passes import rewrite_file

    hf = json.loads(Path(a.config).read_text()) if a.config else None
    dst = rewrite_file(a.input, a.output, _config(a), hf_config=hf)
    print(f"wrote {dst}")
    return 0


def default_export(cfg=None) -> Path:
    """The embedded default model exported and rewritten with the default configuration (cached)."""
    from graph_passes import TQConfig

    from .export import export_and_rewrite
    from .paths import cache_dir

    cfg = cfg or TQConfig()
    out = cache_dir() / "default" / f"smollm2-k{cfg.key_bits}v{cfg.value_bits}"
    if not (out / "model.onnx").exists():
        export_and_rewrite(None, out, cfg)
    return out


def _tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def cmd_generate(a) -> int:
    from .session import DecoderSession, Sampling

    model = Path(a.model) if a.model else default_export()
    model_dir = model if model.is_dir() else model.parent
    tok = _tokenizer(model_dir)
    prompt = a.prompt
    if a.chat:
        prompt = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=not a.chat)["input_ids"]  # the chat template brings its own
    sess = DecoderSession(model, device=a.device, max_length=a.max_length or len(ids) + a.max_new_tokens,
                          shared_buffer=False if a.concat else None)
    out: list[int] = []
    shown = ""
    sys.stdout.write(prompt)

    def stream(t: int) -> None:
        nonlocal shown
        out.append(t)
        text = tok.decode(out, skip_special_tokens=True)
        sys.stdout.write(text[len(shown):])
        sys.stdout.flush()
        shown = text

    t0 = time.time()
    sess.generate(ids, a.max_new_tokens, sampling=Sampling(a.temperature, a.top_k, a.top_p, a.seed),
                  eos_token_id=tok.eos_token_id, on_token=stream)
    dt = time.time() - t0
    rep = sess.memory_report(sess.length)
    print(f"\n\n{len(out)} tokens in {dt:.2f} s ({len(out) / max(dt, 1e-9):.1f} tok/s, {a.device}, "
          f"{'shared buffer' if sess.shared else 'concat'})")
    if sess.config:
        print(f"KV cache at {rep['context']} tokens: {_mib(rep['cache_bytes'])} vs {_mib(rep['fp16_cache_bytes'])} "
              f"in float16: {rep['compression']:.2f}x smaller, {_mib(rep['fp16_cache_bytes'] - rep['cache_bytes'])} "
              f"saved ({rep['bytes_per_token']} vs {rep['fp16_bytes_per_token']} bytes/token)")
    return 0


def cmd_inspect(a) -> int:
    from .inspect import inspect_model

    print(inspect_model(Path(a.model), context=a.context, batch=a.batch, as_json=a.json))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tq-ort", description="TurboQuant KV-cache compression for ONNX Runtime decoders")
    sub = p.add_subparsers(dest="cmd", required=True)

    e = sub.add_parser("export", help="export a Hugging Face decoder and rewrite its KV cache",
                       description="Export MODEL_DIR (default: the embedded SmolLM2-135M-Instruct) to ONNX and "
                       "rewrite it so the KV cache stays TurboQuant-compressed.")
    e.add_argument("model", nargs="?", help="Hugging Face model folder (default: embedded SmolLM2-135M-Instruct)")
    e.add_argument("-o", "--output", required=True, help="output folder (model.onnx + tokenizer files)")
    e.add_argument("--source", default="optimum", choices=("optimum", "dynamo", "genai"),
                   help="exporter whose graph is rewritten (default optimum)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_codec_args(e)
    e.set_defaults(fn=cmd_export)

    r = sub.add_parser("rewrite", help="rewrite an exported decoder ONNX file",
                       description="Rewrite IN.onnx (optimum / torch.onnx / onnxruntime-genai export) into OUT.onnx.")
    r.add_argument("input", help="exported decoder ONNX")
    r.add_argument("-o", "--output", required=True, help="rewritten ONNX path")
    r.add_argument("--config", help="the model's config.json (default: the one beside IN.onnx, if any)")
    _add_codec_args(r)
    r.set_defaults(fn=cmd_rewrite)

    g = sub.add_parser("generate", help="generate text with a rewritten model",
                       description="Generate from a prompt with a rewritten model folder (default: the embedded "
                       "model, exported on first use) and report the KV-cache memory saved.")
    g.add_argument("model", nargs="?", help="rewritten model folder or .onnx (default: embedded SmolLM2)")
    g.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"prompt text (default {DEFAULT_PROMPT!r})")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    g.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate (default 32)")
    g.add_argument("--max-length", type=int, default=0, help="cache capacity in tokens (default prompt + new)")
    g.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="execution provider (default cpu)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = all)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")
    g.add_argument("--concat", action="store_true", help="concat cache mode instead of the shared buffer")
    g.set_defaults(fn=cmd_generate)

    i = sub.add_parser("inspect", help="configuration and cache memory of a rewritten model",
                       description="Print the TurboQuant configuration, bytes per token per layer and the cache "
                       "memory at a context length against float16.")
    i.add_argument("model", help="rewritten model folder or .onnx")
    i.add_argument("--context", type=int, default=4096, help="context length for the memory figure (default 4096)")
    i.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(fn=cmd_inspect)

    from .cli_eval import add_eval_parser

    add_eval_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # clear message, no traceback
        print(f"tq-ort {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
