"""Import hygiene: every module imports alone, the project's import graph has no cycle, the passes and
the codec stay free of onnxruntime / torch / transformers, and imports follow the layers of the
design (docs/architecture.md; ../shared/design.md section 6):

2. tq_ort.codec and tq_ort.library import nothing else of the project (the tq_ort package __init__
   imports only tq_ort.library, lazily).
3. graph_passes and models import, outside themselves, only tq_ort.codec, tq_ort.library and the
   tq_ort package __init__; neither imports the other.
5. nothing outside tq_ort.cli imports tq_ort.cli; inside it, the subcommand modules import only
   tq_ort.cli.codec_flags (tq_ort.cli.main finds them by name through importlib, not an import).

The graph is static (ast): module-level and function-level imports, relative imports resolved,
`from pkg import name` counted as an import of pkg.name when that is a module. An import of a
module's own ancestor packages is not an edge (they are always loaded first).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tq_ort", "graph_passes", "models")
HEAVY = ("onnxruntime", "torch", "transformers")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            if "__pycache__" not in f.parts:
                out[_module_name(f)] = f
    return out


SOURCES = _sources()
MODULES = sorted(m for m in SOURCES if not m.endswith(".__main__"))  # __main__ runs the program


def _ancestors(mod: str) -> set[str]:
    parts = mod.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def _project(name: str) -> str | None:
    """The longest prefix of the dotted `name` that is a project module (None: not the project's)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in SOURCES:
            return ".".join(parts[:i])
    return None


def _imports(mod: str) -> set[str]:
    """Project modules imported anywhere in `mod` (and the packages loaded on the way to them)."""
    path = SOURCES[mod]
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                pkg = ".".join(base + ([node.module] if node.module else []))
            else:
                pkg = node.module or ""
            names = [f"{pkg}.{a.name}" if f"{pkg}.{a.name}" in SOURCES else pkg for a in node.names]
        for n in names:
            target = _project(n)
            if target:
                found |= {target} | _ancestors(target)
    return found - {mod} - _ancestors(mod)


GRAPH = {m: _imports(m) for m in SOURCES}


def _edges_from(prefix: str) -> list[tuple[str, str]]:
    return [(m, t) for m in GRAPH if m == prefix or m.startswith(prefix + ".") for t in sorted(GRAPH[m])]


def _inside(mod: str, prefix: str) -> bool:
    return mod == prefix or mod.startswith(prefix + ".")


# -- each module alone, in a fresh interpreter -------------------------------------------------------
@pytest.fixture(scope="module")
def alone() -> dict[str, subprocess.CompletedProcess]:
    def run(mod: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", "import importlib, sys; importlib.import_module(sys.argv[1])", mod],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(MODULES, pool.map(run, MODULES)))


@pytest.mark.parametrize("mod", MODULES)
def test_module_imports_alone(mod, alone):
    r = alone[mod]
    assert r.returncode == 0, f"`import {mod}` in a fresh interpreter failed:\n{r.stderr[-3000:]}"


# -- the static graph --------------------------------------------------------------------------------
def test_the_graph_sees_the_known_imports():
    """The scanner itself: a relative, a from-package and a function-level import are edges."""
    assert "tq_ort.quality.data" in GRAPH["tq_ort.quality.runners"]  # from .data import ...
    assert "tq_ort.codec" in GRAPH["graph_passes.config"]  # from tq_ort import codec
    assert "tq_ort.library" in GRAPH["tq_ort"]  # inside a function
    assert "tq_ort.cli.codec_flags" in GRAPH["tq_ort.cli.export"]
    assert "tq_ort.quality" not in GRAPH["tq_ort.quality.data"]  # own package: not an edge


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(GRAPH.get(m, ())):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state:
                c = visit(t)
                if c:
                    return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(GRAPH):
        if m not in state:
            c = visit(m)
            if c:
                return c
    return None


def test_no_import_cycles():
    c = _cycle()
    assert c is None, "import cycle: " + " -> ".join(c)


# -- heavy runtimes stay out of the passes and the codec ---------------------------------------------
@pytest.mark.parametrize("mod", ["graph_passes", "tq_ort.codec", "models"])
def test_no_heavy_runtime_on_import(mod):
    code = f"import sys, {mod}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "", f"`import {mod}` loads {r.stdout.strip()}"


# -- the layers ---------------------------------------------------------------------------------------
def test_layer2_codec_and_library_import_nothing_else():
    bad = [(m, t) for m, t in _edges_from("tq_ort.codec") if not _inside(t, "tq_ort.codec")]
    bad += _edges_from("tq_ort.library")
    bad += [(m, t) for m, t in [("tq_ort", t) for t in sorted(GRAPH["tq_ort"])] if t != "tq_ort.library"]
    assert not bad, bad


@pytest.mark.parametrize("pkg", ["graph_passes", "models"])
def test_layer3_imports_only_layer2(pkg):
    allowed = ("tq_ort.codec", "tq_ort.library")
    bad = [(m, t) for m, t in _edges_from(pkg)
           if not _inside(t, pkg) and t != "tq_ort" and not any(_inside(t, a) for a in allowed)]
    assert not bad, f"{pkg} may import only {', '.join(allowed)} outside itself: {bad}"


def test_nothing_below_the_cli_imports_it():
    bad = [(m, t) for m in GRAPH if not _inside(m, "tq_ort.cli") for t in GRAPH[m] if _inside(t, "tq_ort.cli")]
    assert not bad, bad


def test_subcommands_import_only_the_codec_flags():
    shared = {"tq_ort.cli.codec_flags"}
    bad = [(m, t) for m, t in _edges_from("tq_ort.cli")
           if _inside(t, "tq_ort.cli") and t not in shared and (m, t) != ("tq_ort.cli.__main__", "tq_ort.cli.main")]
    assert not bad, bad
    assert not GRAPH["tq_ort.cli"], "tq_ort/cli/__init__.py imports nothing (a subcommand loads alone)"
