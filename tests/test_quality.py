"""Quality evaluation (tq_ort.quality): a short perplexity / KL / greedy run through ONNX Runtime.

The measured run uses SmolLM2-135M if its optimum export is already in the cache (converting and
exporting it takes ~2.5 min on 2 cores, too slow for CI), else the tiny random llama from
tests/tiny_exports.py. Text: the repository's own docs (real English, always there, offline).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pytest

from tiny_exports import library_has_attention, tiny_export

REPO = Path(__file__).resolve().parents[1]
HAS_ATTENTION = library_has_attention()


def _doc_text(tmp_path: Path) -> str:
    text = "\n\n".join((REPO / "docs" / n).read_text() for n in ("ops.md", "export-forms.md"))
    p = tmp_path / "docs.txt"
    p.write_text(text)
    return f"file:{p}"


def _cached_smollm2() -> Path | None:
    """SmolLM2's HF folder if it and its optimum export are already cached (never converts)."""
    try:
        from models.smollm2 import FOLDER_NAME, _is_complete, cache_root
        from tq_ort.export import _fingerprint
        from tq_ort.paths import cache_dir
    except Exception:  # noqa: BLE001
        return None
    d = cache_root() / FOLDER_NAME
    if not _is_complete(d):
        return None
    exp = cache_dir() / "exports" / f"{d.name}-optimum-{_fingerprint(d)}" / "model.onnx"
    return d if exp.exists() else None


def _model_for_test() -> tuple[Path, int]:
    """(HF folder, context): SmolLM2 when cached, else the tiny llama (max 256 positions)."""
    d = _cached_smollm2()
    if d is not None:
        return d, 128
    onnx_path = tiny_export("llama")
    hf = onnx_path.parent.parent / "llama-hf"
    return hf, 96


# -- no custom op needed -------------------------------------------------------------------------
def test_parse_variant_and_labels():
    from tq_ort.quality import parse_variant

    v = parse_variant("K4V3+qjl")
    c = v.tq_config()
    assert (c.key_bits, c.value_bits, c.use_qjl) == (4, 3, True)
    assert v.label == "K4V3 qjl(3+1)" and v.family == "TurboQuant + QJL"
    assert parse_variant("K3V3+protect").tq_config().protect_layers == (0, 1, -2, -1)
    assert parse_variant("K3V3+protect=0,-1@4").tq_config().protect_bits == 4
    assert parse_variant("K4+keys").tq_config().keys_only
    assert parse_variant("int4").bits == 4 and parse_variant("int4").kind == "uniform"
    with pytest.raises(ValueError):
        parse_variant("K4V4+bogus")


def test_uniform_baseline_cache_holds_int_b_values(tmp_path):
    """The rewritten cache = per-token min/max int-b quantise-dequantise (fp16 scale/zero) of the
    original's K/V; the step's own tokens still attend exactly (same logits on a fresh cache)."""
    from graph_passes.rule_uniform_baseline import read_baseline_metadata, rewrite_uniform_baseline
    from tq_ort.session import DecoderSession

    src = tiny_export("llama")
    bits = 4
    dst = rewrite_uniform_baseline(src, tmp_path / "model.onnx", bits)
    md = read_baseline_metadata(dst)
    assert md["bits"] == 4 and md["layers"][0]["bits_per_value"] == 4 + 32 / 64
    a, b = DecoderSession(src, max_length=32), DecoderSession(dst, max_length=32)
    a.reset(2)
    b.reset(2)
    ids = np.random.default_rng(0).integers(0, 256, (2, 12))
    np.testing.assert_array_equal(a.step(ids, all_logits=True), b.step(ids, all_logits=True))
    for name in ("past_key_values.0.key", "past_key_values.1.value"):
        x = a._cache[name].numpy()
        z = x.min(-1, keepdims=True).astype(np.float16).astype(np.float32)
        s = ((x.max(-1, keepdims=True) - z) / (2 ** bits - 1)).astype(np.float16).astype(np.float32)
        q = np.clip(np.round((x - z) / s), 0, 2 ** bits - 1)
        np.testing.assert_allclose(b._cache[name].numpy(), q * s + z, rtol=0, atol=1e-6)
        levels = np.round((b._cache[name].numpy() - z) / s)
        assert levels.min() >= 0 and levels.max() <= 2 ** bits - 1


def test_uniform_baseline_with_a_window_quantises_rows_as_they_leave_it(tmp_path):
    """int4 + recent window 5: after a 12-token prefill and 3 single steps the stored cache holds the
    original's K/V quantised at positions < T - 5 and exact in the last 5 (the KIVI-style baseline
    for TurboQuant's exact recent window)."""
    from graph_passes.rule_uniform_baseline import read_baseline_metadata, rewrite_uniform_baseline
    from tq_ort import quality
    from tq_ort.session import DecoderSession

    src, bits, R = tiny_export("llama"), 4, 5
    dst = rewrite_uniform_baseline(src, tmp_path / "model.onnx", bits, recent_window=R)
    md = read_baseline_metadata(dst)
    assert md["recent_window"] == R and md["ring_bytes"] == 2 * 2 * 2 * R * 64 * 2
    a, b = DecoderSession(src, max_length=32), DecoderSession(dst, max_length=32)
    a.reset(1)
    b.reset(1)
    ids = np.random.default_rng(1).integers(0, 256, (1, 15))
    b.step(ids[:, :12])
    a.step(ids)  # the original's K/V of all 15 tokens in one go
    for t in range(12, 15):
        b.step(ids[:, t:t + 1])
    for name in ("past_key_values.0.key", "past_key_values.0.value"):  # layer 0: K/V depend on the tokens only
        x, y = a._cache[name].numpy(), b._cache[name].numpy()
        z = x.min(-1, keepdims=True).astype(np.float16).astype(np.float32)
        s = ((x.max(-1, keepdims=True) - z) / (2 ** bits - 1)).astype(np.float16).astype(np.float32)
        q = np.clip(np.round((x - z) / s), 0, 2 ** bits - 1) * s + z
        np.testing.assert_allclose(y[:, :, :15 - R], q[:, :, :15 - R], rtol=0, atol=1e-5)
        np.testing.assert_allclose(y[:, :, 15 - R:], x[:, :, 15 - R:], rtol=0, atol=1e-5)
        assert np.abs(q[:, :, 15 - R:] - x[:, :, 15 - R:]).max() > 1e-3  # exact != quantised: the test can fail
    v = quality.parse_variant("int4+recent64")
    assert (v.bits, v.window, v.label) == (4, 64, "uniform int4 recent64")
    # 4.5 bits per value for the rows + R float16 tokens spread over the 64-token context
    assert quality.bytes_of(v, dst, 64)["bits_per_value"] == pytest.approx(4 + 32 / 64 + 16 * R / 64)


def test_all_logits_step_matches_last_position():
    from tq_ort.session import DecoderSession

    s = DecoderSession(tiny_export("llama"), max_length=16)
    s.reset(1)
    ids = np.arange(1, 9)[None]
    full = s.step(ids, all_logits=True)
    assert full.shape[:2] == (1, 8)
    s.reset(1)
    np.testing.assert_array_equal(s.step(ids), full[:, -1])


def test_strip_wikitext():
    from tq_ort.texts import strip_wikitext

    raw = ("'''Anarchism''' is a [[political philosophy]]{{sfn|X|2005}}<ref>cite</ref> that "
           "[[Advocacy|advocates]] self-governed societies.\n[[Category:Anarchism]]\n== History ==\n"
           "{| class=wikitable\n| a || b\n|}\n[[File:A.jpg|thumb|a [[caption]] here]]Text.")
    assert strip_wikitext(raw) == ("Anarchism is a political philosophy that advocates self-governed "
                                   "societies.\n\nHistory\nText.")


def test_eval_cli_parser():
    from tq_ort.cli.eval import register as add_eval_parser, settings_from_args, variants_from_args

    p = argparse.ArgumentParser(prog="tq-ort")
    add_eval_parser(p.add_subparsers(dest="cmd"))
    a = p.parse_args(["eval", "--key-bits", "3", "--value-bits", "2", "--protect-layers", "0,-1", "--chunk", "4",
                      "--texts", "alice:1024,wiki:512"])
    (v,) = variants_from_args(a)
    assert v.tq_config().protect_layers == (0, -1) and v.tq_config().value_bits == 2
    st = settings_from_args(a)
    assert st.chunk == 4 and st.texts == ("alice:1024", "wiki:512")
    assert [x.label for x in variants_from_args(p.parse_args(["eval", "--variant", "int4", "--variant", "K8V8"]))] \
        == ["uniform int4", "K8V8"]


# -- through the custom op ---------------------------------------------------------------------------
@pytest.mark.skipif(not HAS_ATTENTION, reason="custom-op library without TurboQuantAttention")
def test_eval_8bit_stays_close_to_float(tmp_path, monkeypatch):
    """K8V8 through TurboQuantAttention, fed one token per step: perplexity within 1% of the float
    model, tiny KL, near-total greedy agreement; every number finite. ~1 min on 2 cores."""
    from tq_ort import quality

    if _cached_smollm2() is None:  # tiny model: keep its export and reference out of the user cache
        monkeypatch.setenv("TQ_ORT_CACHE", str(tmp_path / "cache"))
    model, ctx = _model_for_test()
    st = quality.EvalSettings(texts=(_doc_text(tmp_path) + f":{2 * ctx}",), context=ctx, chunk=1, batch=2,
                              gen_prompts=1, prompt_tokens=16, gen_tokens=32)
    rec = quality.run_eval(model, [quality.parse_variant("K8V8"), quality.parse_variant("int8")], st,
                           progress=False, reuse=False, log=lambda *_: None)
    assert all("error" not in r for r in rec["results"]), [r.get("error") for r in rec["results"]]
    tq, uni = rec["results"]
    for r in (tq, uni):
        nums = [r["ppl"]["all"], r["ppl_delta_pct"]["all"], r["kl"]["all"], r["top1_agreement"],
                r["generation"]["agreement"], r["bits_per_value"], r["compression"]]
        assert all(math.isfinite(x) for x in nums), r
    assert abs(tq["ppl_delta_pct"]["all"]) < 1.0, tq["ppl_delta_pct"]
    assert tq["kl"]["all"] < 0.01, tq["kl"]
    assert tq["generation"]["agreement"] >= 0.9, tq["generation"]
    assert tq["bits_per_value"] == pytest.approx(8 * 68 / 64)  # row of 4-byte scale + 64 bytes of codes
    assert all(math.isfinite(v) for v in rec["original"]["ppl"].values())
    md = quality.markdown_report(rec)
    assert "K8V8" in md and "uniform int8" in md


@pytest.mark.parametrize("flags", [["--preset", "balanced"], ["--preset", "quality"], ["--preset", "max-compression"],
                                   ["--key-bits", "4", "--value-bits", "3", "--recent-window", "64"],
                                   ["--key-bits", "3", "--qjl", "--protect-layers", "0,-1", "--protect-bits", "4",
                                    "--seed", "7"],
                                   ["--keys-only", "--target", "edge"],
                                   ["--preset", "balanced", "--seed", "3"],
                                   ["--layer-bits", "0:K8V8,-1:K2V3", "--preset", "balanced"],
                                   ["--key-bits", "3", "--layer-bits", "1:K4V2,2:K8V8", "--protect-layers", "0"]])
def test_eval_and_export_build_the_same_config(flags):
    """Every compression flag means the same in `eval` as in `export` (and `rewrite`): one config path.
    A preset's recent window used to be dropped by eval (K4V3 evaluated as plain K4V3)."""
    from tq_ort.cli.codec_flags import config_from_args
    from tq_ort.cli.eval import variants_from_args
    from tq_ort.cli.main import build_parser

    p = build_parser()
    want = config_from_args(p.parse_args(["export", "-o", "x", *flags]))
    assert config_from_args(p.parse_args(["rewrite", "in.onnx", "-o", "out.onnx", *flags])) == want
    (v,) = variants_from_args(p.parse_args(["eval", *flags]))
    assert v.tq_config() == want
    if "balanced" in flags:
        assert want.recent_window == 64 and v.label.startswith("K4V3") and " recent64" in v.label
    if "--layer-bits" in flags:  # per-layer widths (--bits-budget / --sensitivity: tests/test_layer_bits.py)
        from graph_passes.layer_bits import parse_layer_bits

        assert want.layer_bits == parse_layer_bits(flags[flags.index("--layer-bits") + 1]) != ()


def test_eval_json_stdout_holds_the_json_alone(monkeypatch, capsys, tmp_path):
    """`eval --json`: progress lines (ours and anything a library prints) go to stderr, stdout parses as JSON."""
    import json

    from tq_ort import quality
    from tq_ort.cli.main import main

    def fake_run_eval(model, variants, settings, *, progress=True, keep_dir=None, log=print, reuse=True):
        log("model tiny: 1 window of 8 tokens")  # the default logger is print
        print("a library's own progress line")
        return {"model": str(model), "results": [{"variant": v.label} for v in variants]}

    monkeypatch.setattr(quality, "run_eval", fake_run_eval)
    monkeypatch.setattr(quality, "write_results", lambda rec, d, name: (tmp_path / "r.json", tmp_path / "r.md"))
    assert main(["eval", "--preset", "balanced", "--json", "--quiet"]) == 0
    out = capsys.readouterr()
    rec = json.loads(out.out)
    assert rec["results"] == [{"variant": "K4V3 recent64"}]
    assert "a library's own progress line" in out.err and "1 window" in out.err
