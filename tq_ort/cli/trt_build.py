"""`tq-ort trt-build`: a TensorRT engine (+ ENGINE.json sidecar) from a rewritten model folder."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    b = sub.add_parser("trt-build", help="build a TensorRT engine from a rewritten model",
                       description="Load the tq-ort TensorRT plugins, parse MODEL (folder with model.onnx, or an .onnx "
                       "file), give the dynamic batch / sequence / past-length dimensions an optimization profile and "
                       "write ENGINE plus ENGINE.json (TensorRT and plugin versions, profile, model fingerprint). "
                       "Needs the [tensorrt] extra; TensorRT-RTX builds on the CPU, no GPU needed.")
    b.add_argument("model", help="rewritten model folder or .onnx")
    b.add_argument("-o", "--output", required=True, help="engine file to write (the sidecar goes to OUTPUT.json)")
    b.add_argument("--max-context", type=int, default=2048,
                   help="largest cache in tokens, past + new (default 2048): the profile's past/total maximum")
    b.add_argument("--max-batch", type=int, default=1, help="largest batch (default 1)")
    b.add_argument("--max-prompt", type=int, default=0,
                   help="most tokens fed in one step (prefill); default 0 = --max-context")
    b.add_argument("--fp16", action="store_true", help="let TensorRT run layers in float16 (full TensorRT's FP16 "
                   "flag; TensorRT-RTX is strongly typed and refuses it: export a float16 model instead)")
    b.add_argument("--compute-capability", default="", metavar="SM",
                   help="TensorRT-RTX target GPU, e.g. sm89, sm120, current (default: TensorRT-RTX's default)")
    b.add_argument("--concat", action="store_true", help="build for concat cache mode (present = past ++ new rows) "
                   "even where the model allows a shared buffer (the default then: present aliases past)")
    b.add_argument("--quiet", action="store_true", help="no build timer")
    b.add_argument("--verbose", action="store_true", help="also print TensorRT's warnings")
    b.set_defaults(fn=run)
    return b


def run(a: argparse.Namespace) -> int:
    from ..trt.build import BuildOptions, build_engine

    rec = build_engine(a.model, a.output, BuildOptions(
        max_context=a.max_context, max_batch=a.max_batch, max_prompt=a.max_prompt, fp16=a.fp16,
        compute_capability=a.compute_capability, concat=a.concat, progress=not a.quiet, verbose=a.verbose))
    plugins = rec["plugins"]
    print(f"wrote {a.output} ({rec['engine_bytes'] / 2**20:.2f} MiB) and {a.output}.json in {rec['build_seconds']:.1f} s "
          f"({rec['tensorrt']['module']} {rec['tensorrt']['version']}; plugins: "
          f"{', '.join(plugins['creators']) if plugins else 'none (no TurboQuant ops)'}"
          f"{'; shared-buffer cache' if rec['shared_buffer'] else ''})")
    return 0
