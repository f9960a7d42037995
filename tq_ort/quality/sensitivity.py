"""Per-layer sensitivity of the cache to its width (`tq-ort calibrate`), measured through ONNX Runtime.

For every layer L, for keys and for values separately, and for every width b: the model is rewritten
with that one group (layer L's keys, or its values) at b bits and every other group at the base width
(8 bits: K8V8 is within 0.1% perplexity of float on SmolLM2), and evaluated against the original model
on the sample exactly as `tq-ort eval` does (tq_ort.quality: windows of `context` tokens, one token
per decode step by default, so every earlier token is read back from the compressed cache). The
cell's cost is its KL and its Δ NLL (= log of the perplexity ratio) over the all-base baseline
measured on the same tokens. tq_ort.quality.allocation turns the table into per-layer widths.

Each cell is a rewrite of the source export: the export is copied once with its weights in an external
file, so a cell writes only its graph (hundreds of kB) beside the shared weights. Measured cells are
kept in <cache>/eval beside the original model's reference (the same store as `tq-ort eval`), so an
interrupted run resumes.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from .allocation import FORMAT_SENSITIVITY, KINDS
from .data import EvalSettings, build_data, load_tokenizer, resolve_model_dir
from .report import command_line, environment, model_info, slug
from .runners import Reference, Variant, bytes_of, evaluate_variant, library_fingerprint, variant_key


class CellBuilder:
    """Rewrites of one source export that share its weights (one external-data copy in `work`)."""

    def __init__(self, src_onnx: Path, hf_config: dict, work: Path):
        import onnx_ir as ir

        self.hf, self.work = hf_config, work
        self.base = work / "source.onnx"
        work.mkdir(parents=True, exist_ok=True)
        ir.save(ir.load(src_onnx), self.base, external_data="weights.data")

    def build(self, cfg, name: str) -> Path:
        import onnx_ir as ir

        from graph_passes import rewrite_model

        model = ir.load(self.base)
        rewrite_model(model, cfg, hf_config=self.hf)
        dst = self.work / f"{name}.onnx"
        ir.save(model, dst)  # the weights stay references into weights.data beside it
        return dst


def cell_config(layer: int | None, kind: str, bits: int, *, base_bits: int = 8, seed: int = 0,
                recent_window: int = 0):
    """TQConfig of one cell: `kind` ('key' / 'value') of `layer` at `bits`, everything else at base_bits
    (layer None: the all-base baseline)."""
    from graph_passes import TQConfig

    lb = () if layer is None else ((layer, bits, base_bits) if kind == "key" else (layer, base_bits, bits),)
    cfg = TQConfig(key_bits=base_bits, value_bits=base_bits, seed=seed, recent_window=recent_window, layer_bits=lb)
    cfg.validate()
    return cfg


def _row(v: Variant, path: Path, ref: Reference, context: int) -> dict:
    r = evaluate_variant(path, ref, progress=False)
    return {"label": v.label, "family": v.family, "config": v.describe(), **bytes_of(v, path, context), **r}


def measure(model: str | Path | None, settings: EvalSettings, widths: tuple[int, ...] = (2, 3, 4), *,
            base_bits: int = 8, seed: int = 0, recent_window: int = 0, layers: tuple[int, ...] | None = None,
            kinds: tuple[str, ...] = KINDS, progress: bool = True, reuse: bool = True,
            log: Callable[[str], object] = print) -> dict:
    """The sensitivity record (FORMAT_SENSITIVITY): one cell per (layer, kind, width), costs over the baseline."""
    from tqdm import tqdm

    from graph_passes import TQConfig
    from tq_ort import codec

    from ..export import exported_model

    for b in (*widths, base_bits):
        if b not in codec.SUPPORTED_BITS:
            raise ValueError(f"--widths / --base-bits: {b} bits: expected one of {codec.SUPPORTED_BITS}")
    if any(b >= base_bits for b in widths):
        raise ValueError(f"--widths {','.join(map(str, widths))}: every width must be below --base-bits {base_bits} "
                         "(a cell's cost is measured against the all-base baseline)")
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"kinds {kinds!r}: expected a subset of {KINDS}")
    TQConfig(recent_window=recent_window).validate()
    t0 = time.time()
    model_dir = resolve_model_dir(model)
    src = exported_model(model_dir, "optimum")
    hf = json.loads((model_dir / "config.json").read_text())
    data = build_data(load_tokenizer(model_dir), settings)
    log(f"model {model_dir.name}: {data.windows.shape[0]} windows of {settings.context} tokens, chunk {settings.chunk}")
    ref = Reference(src, data, settings, progress=progress)
    work = Path(tempfile.mkdtemp(prefix="tq-calibrate-"))
    builder = None
    try:
        def cell(layer, kind, bits, desc):
            nonlocal builder
            cfg = cell_config(layer, kind, bits, base_bits=base_bits, seed=seed, recent_window=recent_window)
            v = Variant.from_config(cfg)
            cached = ref.dir / variant_key(v, settings)
            if reuse and cached.exists():
                return json.loads(cached.read_text()), True
            builder = builder or CellBuilder(src, hf, work)
            path = builder.build(cfg, slug(desc))
            try:
                row = _row(v, path, ref, settings.context)
            finally:
                path.unlink(missing_ok=True)
            cached.write_text(json.dumps(row, default=float))
            return row, False

        base, _ = cell(None, "key", base_bits, "baseline")
        dims = _layer_dims(src, hf)
        n = len(dims)
        todo = [(L, k, b) for L in (range(n) if layers is None else _check_layers(layers, n)) for k in kinds
                for b in sorted(widths)]
        cells, reused = [], 0
        bar = tqdm(todo, desc="sensitivity", unit="cell", disable=not progress, dynamic_ncols=True)
        for L, k, b in bar:
            row, was = cell(L, k, b, f"L{L}-{k}{b}")
            reused += was
            c = {"layer": L, "kind": k, "bits": b, "ppl_delta_pct": row["ppl_delta_pct"]["all"], "kl": row["kl"]["all"],
                 "top1_agreement": row["top1_agreement"],
                 "cost": {"kl": row["kl"]["all"] - base["kl"]["all"],
                          "nll": math.log(row["ppl"]["all"]) - math.log(base["ppl"]["all"])}}
            cells.append(c)
            bar.set_postfix_str(f"L{L} {k[0].upper()}{b}: kl +{c['cost']['kl']:.4f} ppl {c['ppl_delta_pct']:+.2f}%")
        bar.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"{len(cells)} cells ({reused} reused from {ref.dir})")
    return {
        "format": FORMAT_SENSITIVITY, "tool": "tq-ort calibrate",
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "command": command_line(), **environment(),
        "model": {**model_info(model_dir, src), "onnx_sha": _file_id(src)},
        "texts": data.texts, "tokens_digest": data.digest(), "settings": asdict(settings),
        "widths": sorted(widths), "base_bits": base_bits, "kinds": list(kinds), "seed": seed,
        "recent_window": recent_window, "library": library_fingerprint(),
        "layers": dims,
        "original": ref.summary(),
        "baseline": {"label": base["label"], "ppl": base["ppl"]["all"], "ppl_delta_pct": base["ppl_delta_pct"]["all"],
                     "kl": base["kl"]["all"], "bits_per_value": base["bits_per_value"]},
        "cells": cells,
        "cost_note": "cost = the cell's KL (nats, mean over positions) or NLL (nats/token) minus the all-base "
                     "baseline's, on the same tokens",
        "seconds_total": round(time.time() - t0, 1),
    }


def _check_layers(layers: tuple[int, ...], n: int) -> list[int]:
    bad = [L for L in layers if not -n <= L < n]
    if bad:
        raise ValueError(f"--layers {bad}: the model has {n} layers (expected {-n}..{n - 1})")
    return sorted({L % n for L in layers})


def _layer_dims(src: Path, hf: dict) -> list[dict]:
    """[{layer, kv_heads, head_dim}] from a rewrite's metadata (the dims do not depend on the widths)."""
    import onnx_ir as ir

    from graph_passes import TQConfig, rewrite_model

    model = rewrite_model(ir.load(src), TQConfig(key_bits=8, value_bits=8), hf_config=hf)
    meta = json.loads(model.metadata_props["turboquant.config"])
    return [{"layer": L["layer"], "kv_heads": L["kv_heads"], "head_dim": L["head_dim"]} for L in meta["layers"]]


def _file_id(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.name}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# the table, the plot
# --------------------------------------------------------------------------------------------
def grid(sens: dict, metric: str) -> tuple[list[int], list[tuple[str, int]], list[list[float | None]]]:
    """(layers, columns [(kind, bits)], rows of values) of metric 'kl' / 'nll' (costs) or 'ppl' (Δ ppl %)."""
    cols = [(k, b) for k in sens.get("kinds", KINDS) for b in sens["widths"]]
    layers = sorted({c["layer"] for c in sens["cells"]})
    at = {(c["layer"], c["kind"], c["bits"]): c for c in sens["cells"]}
    val = (lambda c: c["ppl_delta_pct"]) if metric == "ppl" else (lambda c: c["cost"][metric])
    return layers, cols, [[val(at[(L, k, b)]) if (L, k, b) in at else None for k, b in cols] for L in layers]


def markdown(sens: dict) -> str:
    m, st = sens["model"], sens["settings"]
    texts = ", ".join(f"{t['name']} ({t['scored_tokens']} scored tokens)" for t in sens["texts"])
    layers, cols, kl = grid(sens, "kl")
    _, _, ppl = grid(sens, "ppl")
    head = " | ".join(f"{k[0].upper()}{b}" for k, b in cols)
    b = sens["baseline"]
    lines = [f"# Per-layer sensitivity: {m['name']}", "",
             f"- command: `{sens['command']}` ({sens['date']}, {sens['seconds_total']:.0f} s)",
             f"- texts: {texts}; windows of {st['context']} tokens, {st['chunk']} token(s) per step, batch {st['batch']}",
             f"- each cell: that layer's keys (K) or values (V) at the width, every other layer at {sens['base_bits']} "
             f"bits (seed {sens['seed']}, recent window {sens['recent_window']}); baseline {b['label']}: "
             f"Δ ppl {b['ppl_delta_pct']:+.2f}%, KL {b['kl']:.4f} vs the original",
             "- cost = the cell's KL (nats) minus the baseline's, on the same tokens; in brackets the cell's "
             "Δ perplexity vs the original (%)", "",
             f"| layer | {head} |", "|---:|" + "---:|" * len(cols)]
    for L, row_kl, row_p in zip(layers, kl, ppl):
        cells = " | ".join("" if k is None else f"{k:.4f} ({p:+.1f})" for k, p in zip(row_kl, row_p))
        lines.append(f"| {L} | {cells} |")
    sums = [sum(r[i] for r in kl if r[i] is not None) for i in range(len(cols))]
    lines.append("| sum | " + " | ".join(f"{s:.4f}" for s in sums) + " |")
    return "\n".join(lines) + "\n"


def heatmap(sens: dict, path: Path) -> Path:
    """Layer x width heatmap of the KL cost, keys and values side by side (log colour scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LogNorm

    layers, cols, kl = grid(sens, "kl")
    arr = np.array([[np.nan if v is None else max(v, 1e-5) for v in r] for r in kl], dtype=float)
    kinds = [k for k in sens.get("kinds", KINDS)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(2.2 + 1.6 * len(kinds) * len(sens["widths"]) / 3,
                                                     1.6 + 0.22 * len(layers)), dpi=130, squeeze=False,
                             layout="constrained")
    finite = arr[np.isfinite(arr)]
    norm = LogNorm(vmin=max(finite.min(), 1e-5), vmax=finite.max()) if finite.size else None
    im = None
    for ax, k in zip(axes[0], kinds):
        idx = [i for i, (kk, _) in enumerate(cols) if kk == k]
        sub = arr[:, idx]
        im = ax.imshow(sub, aspect="auto", cmap="magma_r", norm=norm, interpolation="nearest")
        ax.set_xticks(range(len(idx)), [f"{cols[i][1]}" for i in idx])
        ax.set_yticks(range(len(layers)), [str(L) for L in layers], fontsize=6)
        ax.set_xlabel(f"{k} bits")
        for y in range(sub.shape[0]):
            for x in range(sub.shape[1]):
                if np.isfinite(sub[y, x]):
                    ax.text(x, y, f"{sub[y, x]:.3f}", ha="center", va="center", fontsize=4.5,
                            color="white" if norm and norm(sub[y, x]) > 0.6 else "black")
    axes[0][0].set_ylabel("layer")
    if im is not None:
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="KL cost over the baseline (nats)")
    fig.suptitle(f"{sens['model']['name']}: KL cost of one layer's keys / values at each width "
                 f"(others at {sens['base_bits']} bits)", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
