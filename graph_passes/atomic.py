"""Atomic outputs: a model file or folder is built beside its target and renamed into place.

`tq-ort export` and `tq-ort rewrite` write through here, so an interrupt (Ctrl-C, a kill, a full disk)
leaves the old output or none, never a half model. The staging area is a hidden sibling
`.<name>.tq-tmp-<pid>-<token>` of the target (same filesystem, so the final step is a rename); a run
killed outright leaves it behind, and the next successful write to the same target removes it.

Test hook (tests only): with TQ_ORT_TEST_PAUSE="<stage>:<marker file>" the writer creates the marker
and waits at that stage until it is signalled, so a test can interrupt it at a known point.
Stages: "rewrite-staged" (the rewritten model is in the staging folder, not yet checked),
"rewrite-swap" (the old model has been moved aside, the new one not yet in place), "export-staged"
(model.onnx is in the staging folder, the side files not yet), "export-swap" (the old folder has been
moved aside, the new one not yet in place).
"""
from __future__ import annotations

import os
import secrets
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

TEST_PAUSE_ENV = "TQ_ORT_TEST_PAUSE"
PAUSE_LIMIT_S = 120.0
_TMP, _OLD = "tq-tmp", "tq-old"
DATA_SUFFIX = ".data"  # model.onnx.data: external weights
ORIGINAL_SUFFIX = ".original.json"  # model.onnx.original.json: the float model it was rewritten from


def pause_point(stage: str) -> None:
    """Test hook: wait here if TQ_ORT_TEST_PAUSE names this stage (see the module docstring)."""
    spec = os.environ.get(TEST_PAUSE_ENV, "")
    want, _, marker = spec.partition(":")
    if want != stage or not marker:
        return
    Path(marker).write_text(str(os.getpid()))
    end = time.monotonic() + PAUSE_LIMIT_S
    while time.monotonic() < end:
        time.sleep(0.01)
    raise RuntimeError(f"{TEST_PAUSE_ENV}={spec}: waited {PAUSE_LIMIT_S:.0f} s at stage {stage!r}, no signal came")


def _sibling(target: Path, kind: str) -> Path:
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(target: Path) -> list[Path]:
    """Remove staging leftovers of `target` from writers that are gone (killed mid-write); returns them."""
    removed = []
    for kind in (_TMP, _OLD):
        for p in target.parent.glob(f".{target.name}.{kind}-*"):
            pid = p.name[len(f".{target.name}.{kind}-"):].split("-")[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p)
    return removed


@contextmanager
def _made_parents(path: Path) -> Iterator[None]:
    """Create path's missing parent folders; remove the ones created here again if the block fails."""
    first_missing = None
    for p in [path.parent, *path.parent.parents]:
        if p.exists():
            break
        first_missing = p
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if first_missing is not None:
            shutil.rmtree(first_missing, ignore_errors=True)
        raise


def check_replaceable(folder: Path) -> None:
    """An output folder may be replaced if it is absent, empty, or holds a model (model.onnx)."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder}: exists and is not a folder; expected a model folder path")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / "model.onnx").exists():
        raise ValueError(f"{folder}: exists, is not empty and holds no model.onnx; refusing to replace it "
                              "(choose a new or empty output folder)")


@contextmanager
def staged_folder(target: str | Path, stage: str = "") -> Iterator[Path]:
    """Yields an empty staging folder beside `target`; when the block succeeds it replaces `target`
    as a whole (the old folder is moved aside, the new one renamed in, the old one deleted). On an
    error or interrupt the staging folder is removed and the old folder stays (or is put back).
    `stage` names the test pause points (<stage>-staged is for the caller, <stage>-swap is here)."""
    target = Path(target)
    check_replaceable(target)
    with _made_parents(target):
        tmp = _sibling(target, _TMP)
        tmp.mkdir()
        try:
            yield tmp
            old = None
            if target.exists():
                old = _sibling(target, _OLD)
                os.rename(target, old)
            try:
                if stage:
                    pause_point(f"{stage}-swap")
                os.rename(tmp, target)
            except BaseException:
                if old is not None and not target.exists():
                    os.rename(old, target)
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    clean_stale(target)


def sidecar_names(name: str) -> tuple[str, ...]:
    """Files that belong to the model file `name`: itself, its external data, its original-model record."""
    return (name, name + DATA_SUFFIX, name + ORIGINAL_SUFFIX)


@contextmanager
def staged_file(target: str | Path, stage: str = "") -> Iterator[Path]:
    """Yields a path (inside a staging folder beside `target`) to write the model file to, with its
    sidecars (sidecar_names) beside it. When the block succeeds, the target's old files are moved
    aside, the new sidecars renamed in and the model file last; on an error or interrupt before the
    model file is in place, the old files are put back and the staging folder is removed.
    A target without sidecars is replaced by one atomic rename."""
    target = Path(target)
    if target.is_dir():
        raise ValueError(f"{target}: is a folder; expected a model file path (e.g. {target / 'model.onnx'})")
    with _made_parents(target):
        tmp = _sibling(target, _TMP)
        tmp.mkdir()
        try:
            yield tmp / target.name
            _commit_files(tmp, target, stage)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    clean_stale(target)


def _commit_files(tmp: Path, target: Path, stage: str) -> None:
    names = sidecar_names(target.name)
    new = [n for n in names if (tmp / n).exists()]
    if target.name not in new:
        raise FileNotFoundError(f"{tmp / target.name}: the writer produced no model file")
    dest = target.parent
    if new == [target.name] and not any((dest / n).exists() for n in names[1:]):
        if stage:
            pause_point(f"{stage}-swap")
        os.replace(tmp / target.name, target)  # one atomic step: the old model or the new one
        return
    aside = tmp / f".{_OLD}"
    aside.mkdir()
    moved, installed = [], []
    try:
        for n in names:  # the model file first: from here on no half model can be seen
            if (dest / n).exists():
                os.rename(dest / n, aside / n)
                moved.append(n)
        if stage:
            pause_point(f"{stage}-swap")
        for n in [n for n in new if n != target.name] + [target.name]:  # the model file last
            os.rename(tmp / n, dest / n)
            installed.append(n)
    except BaseException:
        if target.name not in installed:
            for n in installed:
                (dest / n).unlink(missing_ok=True)
            for n in moved:
                os.rename(aside / n, dest / n)
        raise
