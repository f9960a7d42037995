"""docs/architecture.md and its picture stay true to the tree: every path they name exists, and the
SVG was rendered from the current .dot source (every label line of the source is in the SVG)."""
from __future__ import annotations

import glob
import html
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TOP = ("custom_ops", "tq_ort", "graph_passes", "models", "tests", "docs", "benchmarks", "examples")
PATH_RE = re.compile(r"(?<![\w./-])((?:%s)/[\w./*-]*)" % "|".join(TOP))


def _paths(text: str) -> set[str]:
    return {m.rstrip(".,)") for m in PATH_RE.findall(text)}


def _labels(dot: str) -> list[str]:
    return [line.strip() for lab in re.findall(r'label="([^"]*)"', dot) for line in lab.split("\\n") if line.strip()]


def test_every_named_path_exists():
    missing = []
    for doc in ("architecture.md", "architecture.dot"):
        text = (DOCS / doc).read_text()
        for p in sorted(_paths(text)):
            if not glob.glob(str(ROOT / p)):
                missing.append(f"{doc}: {p}")
    readme = (ROOT / "custom_ops" / "README.md")
    if readme.exists():
        for p in sorted(_paths(readme.read_text())):
            if not glob.glob(str(ROOT / p)):
                missing.append(f"custom_ops/README.md: {p}")
    assert not missing, "paths named in the architecture docs that do not exist:\n" + "\n".join(missing)


def test_svg_rendered_from_current_source():
    dot = (DOCS / "architecture.dot").read_text()
    svg = html.unescape((DOCS / "architecture.svg").read_text())
    stale = [lab for lab in _labels(dot) if lab not in svg]
    assert len(_labels(dot)) > 20
    assert not stale, ("docs/architecture.svg is older than docs/architecture.dot (re-render: "
                       "dot -Tsvg docs/architecture.dot -o docs/architecture.svg); labels missing: " + repr(stale))
