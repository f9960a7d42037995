"""Quality sweep: every cache configuration family against the original model, one results file + a plot.

    python benchmarks/quality/sweep.py                      # SmolLM2, the full list (~1 h on 2 cores)
    python benchmarks/quality/sweep.py --model gemma3-270m  # Gemma-3-270M, its shorter list
    python benchmarks/quality/sweep.py --variants K4V4,K3V3+protect,int4 --texts alice:1024
    python benchmarks/quality/sweep.py --docs               # only rebuild docs/quality.md + plots from results

Families: TurboQuant K/V bits (8/4/3/2, separately), keys only, + QJL (key bits b = b-1 code bits
+ 1 sign bit), layers 0,1,-2,-1 protected at 8 bits, and the per-token uniform int-b cache
without rotation (graph_passes/rule_uniform_baseline.py) at the same bytes. Each variant runs
through ONNX Runtime (see tq_ort/quality/ for the method). Results: benchmarks/quality/results/
sweep-<model>-<date>.{json,md}; with --docs-out / --plot (defaults below for the default settings)
docs/quality.md and docs/quality.png. Variants already measured on the same tokens with the same
op library are reused from <cache>/eval (pass --fresh to measure again), so an interrupted sweep
resumes.
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tq_ort import quality  # noqa: E402
from tq_ort.quality.report import slug  # noqa: E402

SMOLLM2 = [
    # TurboQuant, K and V bits separately
    "K8V8", "K4V4", "K4V3", "K3V3", "K4V2", "K3V2", "K2V2", "K8V4", "K4V8", "K3V4", "K8V3",
    # first and last two layers at 8 bits
    "K4V4+protect", "K4V3+protect", "K3V3+protect", "K4V2+protect", "K3V2+protect", "K2V2+protect",
    # QJL: key_bits b = (b-1)-bit codes + 1-bit sketch
    "K4V4+qjl", "K4V3+qjl", "K3V3+qjl",
    # keys only (values float16)
    "K4+keys", "K3+keys", "K2+keys",
    # what a user would pick instead at the same bytes
    "int8", "int4", "int3", "int2",
]
GEMMA = ["K8V8", "K4V4", "K4V3", "K3V3", "K4V2", "K3V2", "K4V4+qjl", "K3V3+protect", "int8", "int4", "int3",
         "K8V4", "K8V3", "K4+keys"]
DEFAULTS = {
    "smollm2": dict(variants=SMOLLM2, texts="ptb:2048,alice:1024,wiki:1024", context=512,
                    plot="docs/quality.png"),
    "gemma3-270m": dict(variants=GEMMA, texts="ptb:2048,alice:1024,wiki:1024", context=1024,
                        plot="docs/quality-gemma3-270m.png"),
}


# studies beside the main sweep (--tag): results file prefix -> section title in docs/quality.md
STUDIES = {"recent": "the exact recent window (last R tokens also kept in float16)",
           "recent2": "the exact recent window with 8-bit keys",
           "recent-uniform": "the uniform int-b baseline with the same exact recent window (KIVI-style)",
           "split": "split widths (fractional bits, docs/ops.md 1.4.1) at the 4.5x frontier",
           "k56": "5- and 6-bit keys where 4 bits fail"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="smollm2 (default), gemma3-270m or a HF folder")
    p.add_argument("--variants", help="comma-separated variant specs (default: the model's list; see "
                   "tq_ort.quality.parse_variant)")
    p.add_argument("--texts", help="NAME:TOKENS,... (default ptb:2048,alice:1024,wiki:1024)")
    p.add_argument("--context", type=int, help="window length (default 512; gemma3-270m 1024, twice its "
                   "sliding window)")
    p.add_argument("--chunk", type=int, default=1, help="tokens per step (default 1 = true decoding)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--gen-prompts", type=int, default=4)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--gen-tokens", type=int, default=256)
    p.add_argument("--results-dir", default=str(ROOT / "benchmarks/quality/results"))
    p.add_argument("--plot", help="plot path (default docs/quality.png for smollm2)")
    p.add_argument("--tag", help="name the results TAG-<model>-<date> (a study beside the main sweep; docs/quality.md "
                   "gets a section per tag, e.g. --tag recent for the exact recent window)")
    p.add_argument("--fresh", action="store_true", help="re-measure variants found in the cache")
    p.add_argument("--docs", action="store_true", help="only rebuild docs/quality.md and the plots from the latest "
                   "sweep results in --results-dir")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.docs:
        write_docs(Path(a.results_dir))
        return 0
    d = DEFAULTS.get(a.model, DEFAULTS["smollm2"])
    specs = a.variants.split(",") if a.variants else d["variants"]
    variants = [quality.parse_variant(s) for s in specs]
    settings = quality.EvalSettings(
        texts=tuple((a.texts or d["texts"]).split(",")), context=a.context or d["context"], chunk=a.chunk,
        batch=a.batch, gen_prompts=a.gen_prompts, prompt_tokens=a.prompt_tokens, gen_tokens=a.gen_tokens)
    record = quality.run_eval(a.model, variants, settings, progress=not a.quiet, reuse=not a.fresh)
    record["tool"] = "benchmarks/quality/sweep.py"
    name = record["model"]["name"]
    full = not a.variants and not a.texts and not a.context and a.chunk == 1
    stem = f"{a.tag or ('sweep' if full else 'partial')}-{slug(name)}-{record['date'][:10]}"
    j, md = quality.write_results(record, Path(a.results_dir), stem)
    plot = Path(a.plot) if a.plot else (ROOT / d["plot"] if a.model in DEFAULTS and full else None)
    if a.tag and not a.plot:
        plot = ROOT / "docs" / f"quality-{a.tag}-{slug(name)}.png"
    if plot:
        quality.plot(record, plot)
    print(quality.markdown_table(record))
    print(f"wrote {j}, {md}" + (f", {plot}" if plot else ""))
    if (full or a.tag) and a.model in DEFAULTS:
        write_docs(Path(a.results_dir))
    return 0


def latest_sweeps(results_dir: Path, kind: str = "sweep") -> dict[str, dict]:
    out = {}
    for f in sorted(glob.glob(str(results_dir / f"{kind}-*.json"))):
        r = json.loads(Path(f).read_text())
        out[r["model"]["name"]] = r  # the latest per model wins (sorted by date in the name)
        Path(f).with_suffix(".md").write_text(quality.markdown_report(r))  # in step with the JSON
    return out


def write_docs(results_dir: Path, md_path: Path = ROOT / "docs/quality.md") -> Path:
    """docs/quality.md: per model, the table, how it was measured, the command; the presets."""
    sweeps = latest_sweeps(results_dir)
    if not sweeps:
        raise SystemExit(f"no sweep-*.json in {results_dir}")
    from tq_ort.presets import PRESETS

    lines = ["# KV-cache quality on real models", "",
             "Measured with `benchmarks/quality/sweep.py` (method: `tq_ort/quality/`; single configurations: "
             "`tq-ort eval`). Every number comes from running the ONNX models in ONNX Runtime: the original "
             "optimum export (float32 cache) against the same export rewritten so its cache is TurboQuant rows "
             "read by the `TurboQuantAttention` custom op, or rewritten with a per-token uniform int-b cache "
             "(no rotation) as the baseline a user would otherwise pick.", ""]
    presets = ["## Presets (`tq_ort/presets.py`)", "",
               "| preset | configuration | rests on (SmolLM2-135M) |", "|---|---|---|"]
    for name, p in PRESETS.items():
        kw = {k: v for k, v in p.items() if k != "measured"}
        m = p.get("measured", {})
        presets.append(f"| `{name}` | `{kw}` | {m.get('summary', '')} |")
    lines += presets + [""]
    findings = Path(__file__).with_name("findings.md")
    if findings.exists():
        lines += [findings.read_text().strip(), ""]
    for name, r in sweeps.items():
        st = r["settings"]
        lines += [f"## {name}", "",
                  quality.markdown_report(r).split("\n", 2)[2].strip(), "",
                  f"Produced by: `{r['command']}` ({r['date']}, {r.get('seconds_total', 0) / 60:.0f} min on "
                  f"{r['machine']['cores']} cores; chunk {st['chunk']}).", ""]
        png = DEFAULTS.get("smollm2" if "smollm2" in name.lower() else "gemma3-270m", {}).get("plot")
        if png and (ROOT / png).exists():
            lines += [f"![perplexity increase vs compression, {name}]({Path(png).name})", ""]
    for tag, title in STUDIES.items():
        for name, r in latest_sweeps(results_dir, tag).items():
            lines += [f"## {name}: {title}", "", quality.markdown_report(r).split("\n", 2)[2].strip(), "",
                      f"Produced by: `{r['command']}` ({r['date']}, {r.get('seconds_total', 0) / 60:.0f} min on "
                      f"{r['machine']['cores']} cores; chunk {r['settings']['chunk']}).", ""]
            png = ROOT / "docs" / f"quality-{tag}-{slug(name)}.png"
            if png.exists():
                lines += [f"![{title}, {name}]({png.name})", ""]
    md_path.write_text("\n".join(lines))
    print(f"wrote {md_path}")
    return md_path


if __name__ == "__main__":
    sys.exit(main())
