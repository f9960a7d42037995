"""Needle in a haystack: can the model still find a planted fact when its cache is compressed?

A *haystack* is real text (tq_ort.texts) cut to a target length in tokens; a *needle* is one
sentence with a random number ("The secret passcode is 482913.") planted at a *depth* (0 = the
start of the text, 1 = just before the question), moved to the nearest sentence boundary. The
question follows the text and the answer is primed ("... The secret passcode is"), so a model that
reads the needle back from its cache continues with the number. A case is *found* when the greedy
continuation contains the number's digits.

The prompt is prefilled `chunk` tokens per step through one session (so every chunk reads all the
earlier text back from the cache: compressed rows for a rewritten model), then `answer_tokens`
greedy tokens are decoded one per step. The original model (float cache) runs the same prompts
through the same code, so a difference between the two is the cache's doing.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

NEEDLE = "The secret passcode is {code}."
QUESTION = "\n\nQuestion: What is the secret passcode mentioned in the text above?\nAnswer: The secret passcode is"


@dataclass(frozen=True)
class NeedleSettings:
    lengths: tuple[int, ...] = (2048, 4096, 8192)  # prompt tokens (haystack + needle + question)
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    trials: int = 2  # passcodes (and haystack offsets) per (length, depth)
    texts: tuple[str, ...] = ("lcet10", "plrabn12", "wiki")  # haystack sources, concatenated
    chunk: int = 256  # prefill tokens per step
    answer_tokens: int = 10
    seed: int = 0


@dataclass
class NeedleCase:
    length: int  # requested prompt length (the prompt ends on a whole sentence: up to one sentence less)
    depth: float
    trial: int
    code: str
    ids: list[int] = field(repr=False)
    needle_at: int  # token index where the needle starts

    def describe(self) -> dict:
        d = asdict(self)
        d.pop("ids")
        d["prompt_tokens"] = len(self.ids)
        return d


def _haystack_text(texts: tuple[str, ...]) -> str:
    from ..texts import load_text

    return "\n\n".join(re.sub(r"\s+\n", "\n", load_text(t)) for t in texts)


_BOUNDARY = re.compile(r"[.!?][\"')]?(?:\s+|$)")


def _sentence_cut(text: str, pos: int) -> int:
    """The sentence boundary (the start, or just after '. ', '.\n', '? ', '! ') nearest to character `pos`."""
    if pos <= 0:
        return 0
    base = max(0, pos - 2000)
    ends = [0] if base == 0 else []
    ends += [m.end() for m in _BOUNDARY.finditer(text, base, min(len(text), pos + 2000))]  # absolute
    return min(ends, key=lambda c: abs(c - pos)) if ends else min(pos, len(text))


def make_cases(tok, settings: NeedleSettings, *, haystack: str | None = None) -> list[NeedleCase]:
    """The prompts of every (length, depth, trial), deterministic in `settings.seed`."""
    rng = np.random.default_rng(settings.seed)
    text = haystack if haystack is not None else _haystack_text(settings.texts)
    bos = [tok.bos_token_id] if getattr(tok, "bos_token_id", None) is not None and \
        tok("a")["input_ids"][:1] == [tok.bos_token_id] else []
    q_ids = tok(QUESTION, add_special_tokens=False)["input_ids"]
    cases = []
    for L in settings.lengths:
        for depth in settings.depths:
            for t in range(settings.trials):
                code = str(int(rng.integers(100000, 999999)))
                needle = " " + NEEDLE.format(code=code) + " "
                n_ids = tok(needle, add_special_tokens=False)["input_ids"]
                budget = L - len(bos) - len(q_ids) - len(n_ids)
                if budget < 16:
                    raise ValueError(f"length {L}: too short for the needle and the question "
                                     f"({len(q_ids) + len(n_ids)} tokens)")
                # a different stretch of the text per trial: start at a random sentence boundary
                start = _sentence_cut(text, int(rng.integers(0, max(1, len(text) // 2))))
                chars = text[start:start + budget * 8]
                hay = tok(chars, add_special_tokens=False)["input_ids"][:budget]
                if len(hay) < budget:
                    raise ValueError(f"haystack texts {settings.texts} give {len(hay)} tokens from offset {start}; "
                                     f"{budget} needed for length {L}")
                hay_text = tok.decode(hay)
                ends = [m.end() for m in _BOUNDARY.finditer(hay_text)]
                if ends:  # end on a whole sentence: the question follows a full stop
                    hay_text = hay_text[:ends[-1]]
                cut = _sentence_cut(hay_text, int(round(depth * len(hay_text))))
                before, after = hay_text[:cut].rstrip(), hay_text[cut:].lstrip()
                b_ids = tok(before, add_special_tokens=False)["input_ids"] if before else []
                a_ids = tok(after, add_special_tokens=False)["input_ids"] if after else []
                n_ids = tok((" " if before else "") + NEEDLE.format(code=code) + (" " if after else ""),
                            add_special_tokens=False)["input_ids"]
                body = b_ids + n_ids + a_ids
                over = len(bos) + len(body) + len(q_ids) - L
                if over > 0:  # re-tokenising at the cut can add a token or two: trim the far end
                    if a_ids and len(a_ids) >= over:
                        body = b_ids + n_ids + a_ids[:len(a_ids) - over]
                    else:
                        body = b_ids[over:] + n_ids + a_ids
                        b_ids = b_ids[over:]
                ids = bos + body + q_ids
                cases.append(NeedleCase(L, float(depth), t, code, ids, len(bos) + len(b_ids)))
    return cases


def run_case(sess, case: NeedleCase, settings: NeedleSettings) -> np.ndarray:
    """Prefill the prompt `chunk` tokens per step, then greedy-decode; returns the answer token ids."""
    sess.reset(1)
    ids = np.asarray([case.ids], dtype=np.int64)
    for s0 in range(0, ids.shape[1], settings.chunk):
        logits = sess.step(ids[:, s0:s0 + settings.chunk])
    out = []
    for i in range(settings.answer_tokens):
        t = int(logits[0].argmax())
        out.append(t)
        if i + 1 < settings.answer_tokens:
            logits = sess.step(np.asarray([[t]], dtype=np.int64))
    return np.asarray(out)


def found(answer: str, code: str) -> bool:
    """The number's digits appear in the answer (spaces or commas between digits allowed)."""
    return code in re.sub(r"[\s,]", "", answer)


def run_cases(sess, cases: list[NeedleCase], tok, settings: NeedleSettings,
              on_case: Callable[[NeedleCase, bool], None] | None = None) -> list[dict]:
    rows = []
    for c in cases:
        ans = tok.decode(run_case(sess, c, settings).tolist())
        ok = found(ans, c.code)
        rows.append({**c.describe(), "answer": ans, "found": ok})
        if on_case:
            on_case(c, ok)
    return rows


def accuracy_table(rows: list[dict]) -> dict[int, dict[float, float]]:
    """length -> depth -> fraction found."""
    out: dict[int, dict[float, list[bool]]] = {}
    for r in rows:
        out.setdefault(r["length"], {}).setdefault(r["depth"], []).append(bool(r["found"]))
    return {L: {d: float(np.mean(v)) for d, v in sorted(ds.items())} for L, ds in sorted(out.items())}


def plot_accuracy(results: dict[str, list[dict]], path: Path, title: str = "") -> None:
    """One heatmap per variant: length (rows) x depth (columns), fraction found."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names) + 1, 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        tab = accuracy_table(results[name])
        Ls = list(tab)
        ds = sorted({d for v in tab.values() for d in v})
        grid = np.array([[tab[L].get(d, np.nan) for d in ds] for L in Ls])
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(ds)), [f"{d:g}" for d in ds])
        ax.set_yticks(range(len(Ls)), [f"{L // 1024}K" for L in Ls])
        ax.set_xlabel("needle depth")
        ax.set_title(name, fontsize=9)
        for i in range(len(Ls)):
            for j in range(len(ds)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.0%}", ha="center", va="center", fontsize=7)
    axes[0][0].set_ylabel("prompt tokens")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="found")
    if title:
        fig.suptitle(title, fontsize=10, y=1.03)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
