"""Which layers' compressed keys (or values) cost the perplexity? One layer at a time.

    python benchmarks/quality/layer_scan.py --what keys --bits 4 --chunk 8

For each layer L, every other layer is kept at 8 bits (near lossless) and layer L gets `--bits`
for keys (values 8) or for values (keys 8); the perplexity increase over the original model says
how much that layer alone contributes. A diagnostic for choosing protect_layers, not a headline
number: with --chunk > 1 it is optimistic in absolute terms (tokens of a chunk see each other
uncompressed) but ranks the layers. Results: benchmarks/quality/results/layer-scan-*.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tq_ort import quality  # noqa: E402
from tq_ort.quality.report import slug  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--what", choices=("keys", "values"), default="keys")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--texts", default="ptb:1024,alice:1024")
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--chunk", type=int, default=8)
    p.add_argument("--results-dir", default=str(ROOT / "benchmarks/quality/results"))
    a = p.parse_args(argv)
    model_dir = quality.resolve_model_dir(a.model)
    n = json.loads((model_dir / "config.json").read_text())["num_hidden_layers"]
    kb, vb = (a.bits, 8) if a.what == "keys" else (8, a.bits)
    variants = [quality.Variant.turboquant(key_bits=kb, value_bits=vb, protect_bits=8,
                                           protect_layers=tuple(j for j in range(n) if j != L)) for L in range(n)]
    settings = quality.EvalSettings(texts=tuple(a.texts.split(",")), context=a.context, chunk=a.chunk, batch=8,
                                    gen_prompts=0)
    rec = quality.run_eval(model_dir, variants, settings, log=lambda *x: None)
    rec["tool"] = "benchmarks/quality/layer_scan.py"
    rows = []
    for L, r in enumerate(rec["results"]):
        rows.append((L, r["ppl_delta_pct"]["all"], r["kl"]["all"]))
    stem = f"layer-scan-{slug(model_dir.name)}-{a.what}{a.bits}-chunk{a.chunk}"
    out = Path(a.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(rec, indent=1, default=float))
    md = [f"# {model_dir.name}: {a.what} at {a.bits} bits in one layer, every other layer at 8 bits", "",
          f"command: `{rec['command']}`; texts {a.texts}, context {a.context}, chunk {a.chunk}; "
          f"original perplexity {rec['original']['ppl']['all']:.3f}", "",
          "| layer | Δ ppl | KL |", "|---:|---:|---:|"]
    md += [f"| {L} | {d:+.2f}% | {k:.4f} |" for L, d, k in rows]
    (out / f"{stem}.md").write_text("\n".join(md) + "\n")
    for L, d, k in sorted(rows, key=lambda r: -r[1]):
        print(f"layer {L:>2}: {d:+6.2f}%  KL {k:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
