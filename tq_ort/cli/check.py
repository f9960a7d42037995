"""`tq-ort check`: polygraphy parity of a rewritten model against its float export, across runtimes."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    c = sub.add_parser("check", help="per-step logits parity of a rewritten model (polygraphy)",
                       description="Feed a fixed token sequence (teacher-forced) and compare per-step logits with "
                       "polygraphy: (a) the original float export vs the rewritten model on ORT CPU, thresholds "
                       "derived from the bit widths; (b) ORT CPU vs the CUDA EP where onnxruntime has it; (c) vs a "
                       "TensorRT engine with --engine. Exit 0 = all pass, 1 = a mismatch, 2 = usage error. "
                       "Thresholds: docs/tensorrt.md.")
    c.add_argument("model", help="rewritten model folder or .onnx")
    c.add_argument("--original", help="the float model it was rewritten from (default: the one recorded beside it "
                   "in model.onnx.original.json by tq-ort export / rewrite)")
    c.add_argument("--skip-float", action="store_true", help="no float-vs-rewritten comparison (a)")
    c.add_argument("--engine", help="also compare this TensorRT engine (tq-ort trt-build; needs a GPU)")
    c.add_argument("--steps", type=int, default=32, help="decode steps after the prefill step (default 32)")
    c.add_argument("--prefill", type=int, default=4, help="tokens fed at step 0 (default 4)")
    c.add_argument("--text", help="text to tokenize for the inputs (default: a built-in paragraph; without a "
                   "tokenizer in the folder, deterministic token ids)")
    cuda = c.add_mutually_exclusive_group()
    cuda.add_argument("--cuda", dest="cuda", action="store_true", default=None,
                      help="require the CUDA EP comparison (b) (default: run it where onnxruntime has CUDA)")
    cuda.add_argument("--no-cuda", dest="cuda", action="store_false", help="skip the CUDA EP comparison (b)")
    c.add_argument("--snr-margin", type=float, default=None, metavar="DB",
                   help="(a): the mean logits SNR may be this far below the cache's SNR (default 8 dB)")
    c.add_argument("--save-results", metavar="JSON", help="write every runner's per-step logits as polygraphy "
                   "RunResults JSON (polygraphy inspect data / run --load-outputs read it)")
    c.add_argument("--quiet", action="store_true", help="only the summary (and polygraphy's failures)")
    c.set_defaults(fn=run)
    return c


def run(a: argparse.Namespace) -> int:
    from ..check.checker import CheckOptions, run_check
    from ..check.tolerances import MEAN_MARGIN_DB

    rep = run_check(a.model, CheckOptions(
        steps=a.steps, prefill=a.prefill, text=a.text, original=Path(a.original) if a.original else None,
        engine=Path(a.engine) if a.engine else None, cuda=a.cuda, skip_float=a.skip_float,
        mean_margin_db=MEAN_MARGIN_DB if a.snr_margin is None else a.snr_margin,
        save_results=Path(a.save_results) if a.save_results else None, verbose=not a.quiet))
    print(rep.summary())
    if a.save_results:
        print(f"wrote {a.save_results}")
    return rep.exit_code
