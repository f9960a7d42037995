"""`tq-ort calibrate`: per-layer sensitivity table and per-layer widths for a bits budget (parses and calls)."""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

EPILOG = """\
what is measured (tq_ort/quality/sensitivity.py): for every layer, its keys and then its values at
each --widths width, every other layer at --base-bits, evaluated through ONNX Runtime against the
original model on the texts as `tq-ort eval` does (one token per decode step). A cell's cost is its
KL (and Δ NLL) over the all-base baseline. Writes STEM.json (the table), STEM.md, STEM.png (a layer x
width heatmap) and, per --bits-budget, STEM-allocB.json: the widths the solver picks
(tq_ort/quality/allocation.py: an exact multiple-choice knapsack over the row bytes).

apply an allocation (the same in export, rewrite and eval):
  tq-ort export -o out/m --layer-bits STEM-alloc3.5.json
  tq-ort export -o out/m --bits-budget 3.5 --sensitivity STEM.json     # solves again: the same widths
  tq-ort eval --bits-budget 3.5 --sensitivity STEM.json --recent-window 64

examples:
  tq-ort calibrate --bits-budget 3.5 --bits-budget 4.0            # SmolLM2, Paradise Lost + lcet10 sample
  tq-ort calibrate --sensitivity STEM.json --bits-budget 3.0        # solve only, no measuring
"""


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("calibrate", help="per-layer sensitivity to the cache width, and widths for a bits budget",
                       description="Measure each layer's cost (KL, perplexity) of compressing its keys or its values "
                       "at each width on a small real text sample, through ONNX Runtime, and choose per-layer widths "
                       "for a target average bits per value. Optional: the presets need no data.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default="smollm2",
                   help="Hugging Face model folder, or 'smollm2' (default) or 'gemma3-270m'")
    m = p.add_argument_group("what is measured")
    m.add_argument("--widths", default="2,3,4", help="widths measured per layer, comma-separated (default 2,3,4)")
    m.add_argument("--base-bits", type=int, default=8, help="width of every other layer while one is measured "
                   "(default 8; the solver may also keep a layer at it)")
    m.add_argument("--layers", help="only these layers (comma-separated; default all): a partial table, which the "
                   "solver refuses")
    m.add_argument("--seed", type=int, default=0, help="rotation seed of the measured models (default 0)")
    m.add_argument("--recent-window", type=int, default=0, metavar="R", help="exact recent window of the measured "
                   "models (default 0; with a short --context a window hides most of the rows)")
    d = p.add_argument_group("data")
    d.add_argument("--texts", default="plrabn12:512,lcet10:512",
                   help="NAME:TOKENS,... (default plrabn12:512,lcet10:512: Canterbury texts that tq-ort eval's default "
                   "ptb, alice and wiki do not contain, so an allocation is not judged on its own calibration "
                   "tokens; see tq-ort eval --help for the names)")
    d.add_argument("--context", type=int, default=64, help="window length in tokens (default 64)")
    d.add_argument("--chunk", type=int, default=1, help="tokens per step (default 1 = true decoding)")
    d.add_argument("--batch", type=int, default=16, help="windows decoded together (default 16: a step costs about "
                   "the same at any small batch on a CPU)")
    d.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (default: its own)")
    s = p.add_argument_group("allocation")
    s.add_argument("--bits-budget", type=float, action="append", default=[], metavar="BITS",
                   help="also write the widths for this average bits per value (repeatable; row bytes with their "
                   "scales as tq-ort eval counts them: 3.5 = the bytes of K3V3 at head_dim 64)")
    s.add_argument("--metric", choices=("kl", "nll"), default="kl", help="cost the solver minimises (default kl: "
                   "positive and far less noisy per layer than the perplexity change on a small sample)")
    s.add_argument("--sensitivity", metavar="FILE", help="solve from this table instead of measuring")
    o = p.add_argument_group("output")
    o.add_argument("--results-dir", default="benchmarks/quality/results", help="where the files go (default "
                   "benchmarks/quality/results)")
    o.add_argument("--name", help="file stem (default calibrate-<model>-<date>)")
    o.add_argument("--no-plot", action="store_true", help="no heatmap")
    o.add_argument("--fresh", action="store_true", help="measure cells again even if cached")
    o.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=run)
    return p


def _ints(s: str, flag: str) -> tuple[int, ...]:
    try:
        out = tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{flag} {s!r}: expected comma-separated integers") from None
    if not out:
        raise ValueError(f"{flag} {s!r}: lists nothing")
    return out


def run(a: argparse.Namespace) -> int:
    from ..quality import EvalSettings
    from ..quality.allocation import allocation_from_sensitivity, read_json
    from ..quality.report import slug

    out = Path(a.results_dir)
    if a.sensitivity:
        read_json(a.sensitivity, "--sensitivity")  # a clear error before anything else
        stem = Path(a.sensitivity).stem
        if not a.bits_budget:
            raise ValueError("--sensitivity without --bits-budget: nothing to do (give one or more budgets)")
    else:
        from ..quality import sensitivity

        for n in ("context", "chunk", "batch"):
            if getattr(a, n) < 1:
                raise ValueError(f"--{n} must be >= 1")
        settings = EvalSettings(texts=tuple(t.strip() for t in a.texts.split(",") if t.strip()), context=a.context,
                                chunk=a.chunk, batch=a.batch, gen_prompts=0, threads=a.threads)
        log = (lambda *x: print(*x, file=sys.stderr))
        sens = sensitivity.measure(a.model, settings, _ints(a.widths, "--widths"), base_bits=a.base_bits, seed=a.seed,
                                   recent_window=a.recent_window,
                                   layers=_ints(a.layers, "--layers") if a.layers else None,
                                   progress=not a.quiet, reuse=not a.fresh, log=log)
        stem = a.name or f"calibrate-{slug(sens['model']['name'])}-{datetime.date.today():%Y-%m-%d}"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{stem}.json").write_text(json.dumps(sens, indent=1, default=float))
        md = sensitivity.markdown(sens)
        (out / f"{stem}.md").write_text(md)
        print(md)
        print(f"wrote {out / (stem + '.json')} and {out / (stem + '.md')}")
        if not a.no_plot:
            print(f"wrote {sensitivity.heatmap(sens, out / (stem + '.png'))}")
    src = a.sensitivity or out / f"{stem}.json"
    for budget in a.bits_budget:
        rec = allocation_from_sensitivity(src, budget, a.metric)  # names the table and its sha256
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{stem}-alloc{budget:g}.json"
        path.write_text(json.dumps(rec, indent=1))
        print(f"budget {budget:g}: {rec['bits_per_value']:.3f} bits/value, predicted {a.metric} cost "
              f"{rec['predicted_cost'][a.metric]:.4f}; keys {rec['widths_used']['key']}, values "
              f"{rec['widths_used']['value']}\n  {rec['spec']}\nwrote {path} ({rec['tag']})")
    return 0
