"""Needle-in-a-haystack retrieval with a compressed cache vs the original model (tq_ort/quality/needle.py).

    python benchmarks/quality/needle.py                                   # SmolLM2, 2K/4K/8K, float + the presets
    python benchmarks/quality/needle.py --variants float,K4V4,balanced --lengths 2048 --trials 1
    python benchmarks/quality/needle.py --docs-only RESULTS.json          # redraw the table and plot

Variants: `float` (the unrewritten export, float32 cache), a preset name (quality, balanced,
max-compression: tq_ort/presets.py) or a `tq-ort eval --variant` spec (K4V4, K4V3+recent64, ...).
Writes benchmarks/quality/results/needle-<model>-<date>.{json,md,png}.
"""
from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tq_ort.quality import needle  # noqa: E402


def _variant(spec: str):
    from graph_passes import TQConfig
    from tq_ort.presets import PRESETS, preset_config
    from tq_ort.quality import Variant, parse_variant

    if spec in PRESETS:
        kw = {k: (tuple(v) if k == "protect_layers" else v) for k, v in preset_config(spec).items()}
        return Variant.from_config(TQConfig(**kw))
    return parse_variant(spec)


def markdown(record: dict) -> str:
    s = record["settings"]
    lines = [f"# Needle in a haystack: {record['model']}", "",
             f"{record['date']}, `{record['command']}`", "",
             f"Prompt = real text ({', '.join(s['texts'])}) + one planted sentence \"{needle.NEEDLE}\" at the depth, "
             f"moved to the nearest sentence boundary, + the question; prefill {s['chunk']} tokens per step "
             f"(each chunk reads the earlier text back from the cache), then {s['answer_tokens']} greedy tokens. "
             f"Found = the number's digits in the answer. {s['trials']} passcodes and haystack offsets per cell. "
             f"Machine: {record['machine']}, onnxruntime {record['onnxruntime']}.", ""]
    depths = [float(d) for d in s["depths"]]
    lines.append("| variant | compression | prompt tokens | " + " | ".join(f"depth {d:g}" for d in depths) + " | all |")
    lines.append("|---|---|---|" + "---|" * (len(depths) + 1))
    for name, v in record["variants"].items():
        tab = needle.accuracy_table(v["rows"])
        for L, row in tab.items():
            got = [r["found"] for r in v["rows"] if r["length"] == L]
            cells = " | ".join(f"{row.get(d, float('nan')):.0%}" for d in depths)
            lines.append(f"| {name} | {v.get('compression', '')} | {L} | {cells} | {sum(got)}/{len(got)} |")
    lines += ["", f"Seconds per variant: " + ", ".join(f"{n} {v['seconds']}" for n, v in record["variants"].items()), ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="as for tq-ort eval (default smollm2)")
    ap.add_argument("--variants", default="float,quality,balanced,max-compression",
                    help="comma-separated: float, preset names, eval --variant specs")
    ap.add_argument("--lengths", default="2048,4096,8192", help="prompt lengths in tokens")
    ap.add_argument("--depths", default="0,0.25,0.5,0.75,1", help="needle depths, 0 = start, 1 = end")
    ap.add_argument("--trials", type=int, default=2, help="passcodes per (length, depth) (default 2)")
    ap.add_argument("--chunk", type=int, default=256, help="prefill tokens per step (default 256)")
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (default: its own)")
    ap.add_argument("--results-dir", default=str(ROOT / "benchmarks/quality/results"))
    ap.add_argument("--name", help="results file stem (default needle-<model>-<date>)")
    ap.add_argument("--resume", action="store_true", help="keep the variants already in the results file "
                    "(same --name) and run only the others (an interrupted run goes on)")
    ap.add_argument("--docs-only", metavar="JSON", help="only redraw the markdown and plot of this results file")
    a = ap.parse_args()

    if a.docs_only:
        rec = json.loads(Path(a.docs_only).read_text())
        p = Path(a.docs_only)
        p.with_suffix(".md").write_text(markdown(rec))
        needle.plot_accuracy({n: v["rows"] for n, v in rec["variants"].items()}, p.with_suffix(".png"), rec["model"])
        return 0

    import platform

    import onnxruntime
    from tqdm import tqdm

    from tq_ort.export import exported_model
    from tq_ort.quality import bytes_of, build_variant, load_tokenizer, resolve_model_dir
    from tq_ort.quality.runners import decoder_session

    settings = needle.NeedleSettings(lengths=tuple(int(x) for x in a.lengths.split(",")),
                                     depths=tuple(float(x) for x in a.depths.split(",")), trials=a.trials,
                                     chunk=a.chunk)
    model_dir = resolve_model_dir(a.model)
    src = exported_model(model_dir, "optimum")
    hf = json.loads((model_dir / "config.json").read_text())
    tok = load_tokenizer(model_dir)
    cases = needle.make_cases(tok, settings)
    cap = max(len(c.ids) for c in cases) + settings.answer_tokens + 8
    stem = a.name or f"needle-{model_dir.name.lower()}-{datetime.date.today().isoformat()}"
    out = Path(a.results_dir) / stem
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"tool": "benchmarks/quality/needle.py", "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": "python " + " ".join(sys.argv), "model": model_dir.name,
              "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
              "onnxruntime": onnxruntime.__version__,
              "settings": {**{k: list(v) if isinstance(v, tuple) else v for k, v in vars(settings).items()}},
              "variants": {}}
    if a.resume and out.with_suffix(".json").exists():
        old = json.loads(out.with_suffix(".json").read_text())
        if old["settings"] != record["settings"] or old["model"] != record["model"]:
            raise SystemExit(f"--resume: {out}.json was made with other settings or another model")
        record["variants"] = old["variants"]
        record["command"] = old["command"] + " ; " + record["command"]
    for spec in [s.strip() for s in a.variants.split(",") if s.strip()]:
        if spec in record["variants"]:
            print(f"{spec}: kept from {out}.json")
            continue
        tmp = Path(tempfile.mkdtemp(prefix="tq-needle-"))
        try:
            t0 = time.time()
            if spec == "float":
                path, extra = src, {"compression": "1.00x"}
            else:
                v = _variant(spec)
                path = build_variant(v, src, hf, tmp)
                b = bytes_of(v, path, max(settings.lengths))
                extra = {"label": v.label, "compression": f"{b['compression']:.2f}x", "bits_per_value": b["bits_per_value"]}
            sess = decoder_session(path, cap, a.threads)
            bar = tqdm(total=len(cases), desc=spec, unit="case", dynamic_ncols=True)
            hits = [0]

            def on_case(c, ok, bar=bar, hits=hits):
                hits[0] += ok
                bar.update()
                bar.set_postfix_str(f"found {hits[0]}/{bar.n}")

            rows = needle.run_cases(sess, cases, tok, settings, on_case)
            bar.close()
            record["variants"][spec] = {**extra, "rows": rows, "seconds": round(time.time() - t0, 1)}
            del sess
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        out.with_suffix(".json").write_text(json.dumps(record, indent=1))  # after each variant: resumable by hand
        print(f"{spec}: found {sum(r['found'] for r in rows)}/{len(rows)}")
    out.with_suffix(".md").write_text(markdown(record))
    needle.plot_accuracy({n: v["rows"] for n, v in record["variants"].items()}, out.with_suffix(".png"),
                         f"{model_dir.name}: needle found (fraction)")
    print(markdown(record))
    print(f"wrote {out}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
