"""Perplexity increase vs compression, one line per configuration family."""
from __future__ import annotations

from pathlib import Path

from .report import table_rows


def plot(record: dict, path: Path, *, title: str | None = None) -> Path:
    """Perplexity delta vs compression, one line per configuration family (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams: dict[str, list] = {}
    for r in table_rows(record):
        if "error" not in r:
            fams.setdefault(r["family"], []).append(r)
    fig, ax = plt.subplots(figsize=(8, 5.2), dpi=130)
    markers = "os^vDP*Xh<>"
    for i, (fam, rs) in enumerate(sorted(fams.items())):
        rs.sort(key=lambda r: (r["compression"], r["dppl"]))
        best: dict[float, dict] = {}
        for r in rs:  # the line joins the best configuration at each compression
            best.setdefault(round(r["compression"], 3), r)
        line = list(best.values())
        (h,) = ax.plot([r["compression"] for r in line], [r["dppl"] for r in line], marker=markers[i % len(markers)],
                       label=fam, linestyle="--" if fam.startswith("uniform") else "-")
        others = [r for r in rs if r not in line]
        if others:
            ax.scatter([r["compression"] for r in others], [r["dppl"] for r in others], marker=markers[i % len(markers)],
                       facecolors="none", edgecolors=h.get_color())
        for r in rs:
            ax.annotate(r["config"].split(" protect")[0].replace(" keys-only", "").replace("uniform ", ""),
                        (r["compression"], r["dppl"]), fontsize=6, xytext=(3, 3), textcoords="offset points",
                        color=h.get_color())
    ax.set_yscale("symlog", linthresh=0.1)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    ax.axhline(0.0, color="black", linewidth=0.5)
    ax.set_xlabel("KV-cache compression vs float16 (x)")
    ax.set_ylabel("perplexity increase (%) [symlog; dotted: +1%]")
    ax.text(0.99, 0.01, "line: best configuration of the family at each compression; hollow: the others",
            transform=ax.transAxes, fontsize=6, ha="right", va="bottom", color="grey")
    ax.set_title(title or f"{record['model']['name']}: perplexity increase vs KV-cache compression")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
