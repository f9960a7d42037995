"""`tq-ort generate`: text from a prompt with a rewritten model, and the KV-cache memory saved."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEFAULT_PROMPT = "The capital of France is"


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
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
    g.add_argument("--engine", help="run this TensorRT engine (tq-ort trt-build) on the GPU instead of the ONNX model; "
                   "the tokenizer comes from MODEL, else from the folder of the model the engine was built from")
    g.set_defaults(fn=run)
    return g


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB"


def run(a: argparse.Namespace) -> int:
    from ..export import default_export
    from ..quality.data import folder_tokenizer
    from ..session import DecoderSession, Sampling

    if a.engine:
        from ..trt.session import engine_model_dir

        model = Path(a.model) if a.model else engine_model_dir(a.engine)
    else:
        model = Path(a.model) if a.model else default_export()
    model_dir = model if model.is_dir() else model.parent
    if not a.engine:  # the model file first: missing, truncated or of another row layout -> a clear error
        from graph_passes import model_config

        model_config(model / "model.onnx" if model.is_dir() else model)
    tok = folder_tokenizer(model_dir)
    prompt = a.prompt
    if a.chat:
        prompt = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=not a.chat)["input_ids"]  # the chat template brings its own
    max_length = a.max_length or len(ids) + a.max_new_tokens
    if a.engine:
        from ..trt.session import TrtDecoderSession

        sess = TrtDecoderSession(a.engine, max_length=max_length, shared_buffer=False if a.concat else None)
    else:
        sess = DecoderSession(model, device=a.device, max_length=max_length, shared_buffer=False if a.concat else None)
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
    print(f"\n\n{len(out)} tokens in {dt:.2f} s ({len(out) / max(dt, 1e-9):.1f} tok/s, {'TensorRT' if a.engine else a.device}, "
          f"{'shared buffer' if sess.shared else 'concat'})")
    if sess.config:
        print(f"KV cache at {rep['context']} tokens: {_mib(rep['cache_bytes'])} vs {_mib(rep['fp16_cache_bytes'])} "
              f"in float16: {rep['compression']:.2f}x smaller, {_mib(rep['fp16_cache_bytes'] - rep['cache_bytes'])} "
              f"saved ({rep['bytes_per_token']} vs {rep['fp16_bytes_per_token']} bytes/token)")
    return 0
