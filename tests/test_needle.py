"""Needle-in-a-haystack harness (tq_ort/quality/needle.py): prompt construction, chunked prefill, scoring.

A word-level stand-in tokenizer keeps this fast and offline; the measured runs use SmolLM2
(benchmarks/quality/needle.py, results in benchmarks/quality/results/needle-*)."""
from __future__ import annotations

import re

import numpy as np
import pytest

from tq_ort.quality import needle

WORDS = ("alpha beta gamma delta. epsilon zeta eta theta! iota kappa lambda mu? nu xi omicron pi. "
         "rho sigma tau upsilon. phi chi psi omega. ") * 400


class WordTokenizer:
    """Each whitespace-separated piece is one token (pieces keep their leading space)."""

    bos_token_id = 0

    def __init__(self):
        self.vocab: dict[str, int] = {"<bos>": 0}
        self.inv: list[str] = ["<bos>"]

    def _id(self, piece: str) -> int:
        if piece not in self.vocab:
            self.vocab[piece] = len(self.inv)
            self.inv.append(piece)
        return self.vocab[piece]

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        ids = [self._id(p) for p in re.findall(r"\s*\S+|\s+$", text)]
        return {"input_ids": ([0] if add_special_tokens else []) + ids}

    def decode(self, ids) -> str:
        return "".join(self.inv[i] for i in ids if i != 0)


@pytest.fixture()
def cases():
    st = needle.NeedleSettings(lengths=(300, 600), depths=(0.0, 0.5, 1.0), trials=2, seed=3)
    tok = WordTokenizer()
    return tok, st, needle.make_cases(tok, st, haystack=WORDS)


def test_cases_plant_the_needle_at_its_depth(cases):
    tok, st, cs = cases
    assert len(cs) == 2 * 3 * 2
    for c in cs:
        text = tok.decode(c.ids)
        assert c.length - 40 <= len(c.ids) <= c.length, (c.length, len(c.ids))
        assert c.ids[0] == tok.bos_token_id
        assert text.count(f"The secret passcode is {c.code}.") == 1
        assert text.endswith(needle.QUESTION)
        assert tok.decode(c.ids[c.needle_at:c.needle_at + 5]).strip().startswith("The secret passcode is")
        body = len(c.ids) - 1 - len(tok(needle.QUESTION, add_special_tokens=False)["input_ids"])
        frac = (c.needle_at - 1) / body
        assert abs(frac - c.depth) < 0.06, (c.depth, frac)  # moved to a sentence boundary: a few tokens
        # the needle sits at a sentence boundary: the text before it ends a sentence (or is empty)
        before = tok.decode(c.ids[1:c.needle_at]).rstrip()
        assert before == "" or before[-1] in ".!?"
    # deterministic in the seed, different passcodes across cases
    again = needle.make_cases(tok, st, haystack=WORDS)
    assert [c.ids for c in again] == [c.ids for c in cs]
    assert len({c.code for c in cs}) > len(cs) // 2


def test_too_short_length_is_refused():
    with pytest.raises(ValueError, match="too short"):
        needle.make_cases(WordTokenizer(), needle.NeedleSettings(lengths=(20,), depths=(0.5,), trials=1),
                          haystack=WORDS)


class ScriptedSession:
    """Records the step sizes; its logits spell `answer` one token per decode step."""

    def __init__(self, answer: list[int], prompt_tokens: int, vocab: int = 50):
        self.answer, self.n, self.vocab, self.steps = answer, prompt_tokens, vocab, []

    def reset(self, batch: int = 1) -> None:
        self.steps, self.fed = [], 0

    def step(self, ids: np.ndarray) -> np.ndarray:
        self.steps.append(ids.shape[1])
        self.fed += ids.shape[1]
        lg = np.zeros((1, self.vocab), dtype=np.float32)
        lg[0, self.answer[max(0, self.fed - self.n)]] = 1.0  # after the prompt: answer[0]; each decode step: the next
        return lg


def test_run_case_prefills_in_chunks_then_decodes(cases):
    tok, st, cs = cases
    c = cs[0]
    sess = ScriptedSession([5, 6, 7, 8, 9, 10, 11, 12, 13, 14], len(c.ids))
    st = needle.NeedleSettings(chunk=128, answer_tokens=4)
    out = needle.run_case(sess, c, st)
    n = len(c.ids)
    assert sess.steps[:-3] == [128] * (n // 128) + ([n % 128] if n % 128 else [])
    assert sess.steps[-3:] == [1, 1, 1]  # the 4th token needs no further step
    assert out.tolist() == [5, 6, 7, 8]


def test_found_matches_digits_only():
    assert needle.found(" 482913.", "482913")
    assert needle.found(" 482 913", "482913")
    assert not needle.found(" 48291", "482913")
    assert not needle.found(" 482914", "482913")


def test_accuracy_table_and_plot(tmp_path):
    rows = [{"length": 2048, "depth": d, "found": f} for d, f in [(0.0, True), (0.0, False), (1.0, True)]]
    assert needle.accuracy_table(rows) == {2048: {0.0: 0.5, 1.0: 1.0}}
    p = tmp_path / "n.png"
    needle.plot_accuracy({"float": rows, "K4V4": rows}, p)
    assert p.stat().st_size > 1000


def test_sentence_cut_far_into_a_text():
    text = "x" * 5000 + " one two. three four. five"
    cut = needle._sentence_cut(text, 5012)
    assert text[:cut].endswith("one two. ") and needle._sentence_cut(text, len(text)) == len(text) - 4
    assert needle._sentence_cut(text, 0) == 0
