"""Long caches: TurboQuantAttention over more than 100K cached rows against the numpy reference, and a
DecoderSession at max_length = 131,072 whose cache costs its compressed size, measured in process RSS.

The op cases plant "needles": cached keys aligned with a query head, at a position near the start of
the cache and one past 65,536, with distinct values, so that a kernel that skipped or wrapped far rows
would move the output far beyond the tolerance (each test checks that the needle does move it).
"""
from __future__ import annotations

import ctypes
import gc
import sys

import numpy as np
import pytest

from test_cpu_ops_attention import Case, check_rows, run_concat, run_shared
from tiny_exports import library_has_attention, rewritten_folder
from tq_ort import codec

LONG = 131_072
NEEDLES = (3, 70_001)  # one near the start, one past 2^16
pytestmark = pytest.mark.skipif(not library_has_attention(), reason="custom-op library without TurboQuantAttention")


def plant_needles(c: Case, positions: tuple[int, ...] = NEEDLES, factor: float = 0.75) -> None:
    """Overwrite cached rows at `positions` (every batch row, every kv head) with keys aligned with one
    query head of the group (the first query of the step, after RoPE when the case rotates) and values
    of norm 8, encoded with the case's codec. Needle n aligns with query head n % group of its kv head."""
    group = c.Hq // c.Hkv
    d = c.d
    rng = np.random.default_rng(len(positions) * 7919 + c.P)
    for b in range(c.B):
        past_len = int(c.sl[b]) + 1 - c.S
        q = np.asarray(c.q[b, 0], np.float32).reshape(c.Hq, d)
        if c.do_rotary:
            q = codec.apply_rotary(q[None], np.array([past_len]), c.cos, c.sin)[0]
        for n, pos in enumerate(positions):
            assert pos < past_len, f"needle at {pos}: expected inside the {past_len} cached rows"
            for g in range(c.Hkv):
                k = (factor * q[g * group + n % group])[None]
                v = rng.standard_normal((1, d)).astype(np.float32)
                c.pk[b, g, pos] = codec.encode(k, c.rot, c.kcb, c.use_qjl, c.qjl)[0]
                v = 8.0 * v / np.linalg.norm(v)
                c.pv[b, g, pos] = codec.encode(v, c.rot, c.vcb)[0] if c.value_bits else v.astype(c.dtype)[0]


def long_case(kind: str, rng: np.random.Generator, block: int = 4096) -> Case:
    """'decode': float32 4-bit K/V, one new token over LONG - 1 cached rows (concat mode: the op copies
    them into a present of LONG rows). 'prefill': float16, QJL keys (3+1 bits), 3-bit values, RoPE, a
    4-token chunk over 100,003 cached rows of a LONG-row shared buffer. The cached rows are `block`
    encoded random vectors tiled (encoding 131K vectors in numpy takes seconds), plus the needles."""
    if kind == "decode":
        c = Case(B=1, S=1, Hq=4, Hkv=2, d=64, key_bits=4, value_bits=4, P=LONG - 1, past_lens=(LONG - 1,))
    elif kind == "prefill":
        c = Case(B=1, S=4, Hq=4, Hkv=2, d=64, key_bits=3, value_bits=3, use_qjl=True, dtype=np.float16,
                 do_rotary=True, P=LONG, past_lens=(100_003,))
    else:
        raise ValueError(f"kind {kind!r}: expected 'decode' or 'prefill'")
    P, c.P = c.P, block
    c.build(rng)
    c.P = P
    reps = -(-P // block)
    c.pk = np.ascontiguousarray(np.tile(c.pk, (1, 1, reps, 1))[:, :, :P])
    c.pv = np.ascontiguousarray(np.tile(c.pv, (1, 1, reps, 1))[:, :, :P])
    if c.do_rotary:  # any RoPE table serves; it must cover the capacity
        ang = np.arange(P + 4)[:, None] / (10000.0 ** (np.arange(c.d // 2) / (c.d // 2)))
        c.cos, c.sin = np.cos(ang).astype(c.dtype), np.sin(ang).astype(c.dtype)
    plant_needles(c)
    return c


def check_long(c: Case, got: list, ref: tuple, seed: int, what: str, tol: float | None = None) -> float:
    """Output within `tol` (default 2e-3 for float32, 1e-2 for float16) of the output's scale; present rows
    as the reference. Returns the output's max abs error relative to its scale."""
    out, pk, pv = got
    r_out = np.asarray(ref[0], np.float32)
    scale = float(np.abs(r_out).max())
    rel = float(np.abs(out.astype(np.float32) - r_out).max()) / scale
    tol = tol if tol is not None else (1e-2 if c.dtype == np.float16 else 2e-3)
    assert rel <= tol, f"{what} seed={seed}: output max abs error {rel:.2e} of its scale {scale:.3g} (tol {tol})"
    check_rows(pk, ref[1], c.d, c.key_bits, c.use_qjl, f"{what} present_key", seed, c.m)
    check_rows(pv, ref[2], c.d, c.value_bits, False, f"{what} present_value", seed)
    return rel


@pytest.mark.parametrize("kind,mode", [("decode", "concat"), ("prefill", "shared")])
def test_attention_over_a_long_cache(ops, rng, seed, kind, mode):
    c = long_case(kind, rng)
    run = run_concat if mode == "concat" else run_shared
    got = run(ops, c)
    ref = c.reference()
    assert got[1].shape[2] == LONG, f"present_key rows {got[1].shape}: expected {LONG}"
    rel = check_long(c, got, ref, seed, f"{kind}/{mode}")
    # the check is sensitive to the far rows: replacing either needle by its neighbour row moves the
    # op's output by far more than the tolerance (what a kernel skipping or wrapping that row would get)
    out = got[0].astype(np.float32)
    moved = []
    for pos in NEEDLES:
        keep = c.pk.copy(), c.pv.copy()
        c.pk[:, :, pos], c.pv[:, :, pos] = c.pk[:, :, pos + 1], c.pv[:, :, pos + 1]
        moved.append(float(np.abs(run(ops, c)[0].astype(np.float32) - out).max() / np.abs(out).max()))
        c.pk, c.pv = keep
    print(f"\n{kind}/{mode}: {int(c.sl[0]) + 1 - c.S} cached rows in a {got[1].shape[2]}-row present, output max "
          f"error {rel:.2e} of its scale; the needles at {NEEDLES} move it by {', '.join(f'{m:.2e}' for m in moved)}")
    for pos, m in zip(NEEDLES, moved):
        assert m > 20 * max(rel, 1e-3), f"seed={seed}: needle at {pos} moves the output by {m:.2e} only"


# -- a session at 131,072 tokens ----------------------------------------------------------------------------
def buffer_view(v) -> np.ndarray:
    """A writable numpy view of a CPU OrtValue's memory (uint8, its shape)."""
    shape = tuple(v.shape())
    n = int(np.prod(shape))
    return np.ctypeslib.as_array((ctypes.c_uint8 * n).from_address(v.data_ptr())).reshape(shape)


def touch(sess) -> None:
    """Write every page of the session's cache buffers (zeros over zeros: freshly allocated buffers are
    not resident until written, so this stands for a full cache)."""
    for v in sess._cache.values():
        ctypes.memset(v.data_ptr(), 0, int(np.prod(v.shape())))


def greedy(sess, prompt: list[int], steps: int) -> tuple[list[int], np.ndarray]:
    """Greedy tokens and the logits of every step, continuing from the session's current state."""
    logits = [sess.step(np.asarray([prompt]))]
    toks = []
    for _ in range(steps):
        toks.append(int(logits[-1][0].argmax()))
        logits.append(sess.step(np.asarray([[toks[-1]]])))
    return toks, np.stack(logits)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return rewritten_folder(tmp_path_factory.mktemp("long"), "llama")


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status: no {key} line")


def measure_memory(folder: str) -> dict:
    """In a fresh process (the __main__ below): RSS growth when a DecoderSession at max_length = LONG
    allocates its cache and every page of it is written (a full cache), then over 9 greedy steps (and
    the peak over them, where the kernel lets the peak be reset); a plain buffer of the same size as a
    check of the probe. glibc's mmap threshold is fixed at 1 MiB first, so freed buffers leave RSS."""
    libc = ctypes.CDLL(None)
    if hasattr(libc, "mallopt"):
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    from tq_ort.session import DecoderSession

    s = DecoderSession(folder, max_length=LONG)
    prompt = list(range(40, 48))
    s.reset()
    greedy(s, prompt, 8)  # warm-up: onnxruntime's arena for activations
    s._cache = {}
    gc.collect()
    r0 = _status("VmRSS")
    s.reset()
    touch(s)
    r1 = _status("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        peak_ok = _status("VmHWM") <= r1 + (1 << 20)
    except OSError:
        peak_ok = False
    toks, logits = greedy(s, prompt, 8)
    r2 = _status("VmRSS")
    peak = _status("VmHWM") if peak_ok else None
    nbytes = s.cache_bytes()
    del s
    gc.collect()
    r3 = _status("VmRSS")
    probe = np.ones(nbytes, np.uint8)
    r4 = _status("VmRSS")
    del probe
    return {"cache_bytes": nbytes, "alloc": r1 - r0, "run": r2 - r1, "peak_run": None if peak is None else peak - r1,
            "probe": r4 - r3, "tokens": toks, "finite": bool(np.isfinite(logits).all())}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RSS read from /proc")
def test_session_at_131072_tokens_costs_the_compressed_size(tiny_folder):
    import json
    import subprocess

    from tq_ort.session import DecoderSession

    s = DecoderSession(tiny_folder, max_length=LONG)
    assert s.shared, "the tiny rewritten llama should decode with a shared buffer"
    prompt = list(range(40, 48))
    s.reset()
    short = DecoderSession(tiny_folder, max_length=64)
    short.reset()
    toks = greedy(s, prompt, 8)[0]
    assert toks == greedy(short, prompt, 8)[0], "capacity 131072 changed the greedy tokens"
    # the compressed size, from the model's own metadata: rows x row bytes per layer, K and V
    rows = LONG * s.batch
    expected = sum(rows * L["kv_heads"] * (L["key_row_bytes"] + L["value_row_bytes"]) for L in s.config["layers"])
    fp16 = sum(rows * 2 * L["kv_heads"] * L["head_dim"] * 2 for L in s.config["layers"])
    assert s.cache_bytes() == expected == s.memory_report()["cache_bytes"], (s.cache_bytes(), expected)
    assert fp16 / expected > 3.5, f"compressed {expected} B vs float16 {fp16} B"
    r = subprocess.run([sys.executable, __file__, str(tiny_folder)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(r.stdout.strip().splitlines()[-1])
    mib = 2 ** 20
    peak = "n/a" if m["peak_run"] is None else f"{m['peak_run'] / mib:.2f}"
    print(f"\ncache {expected / mib:.2f} MiB (float16 {fp16 / mib:.2f} MiB); RSS +{m['alloc'] / mib:.2f} MiB for the "
          f"written cache, +{m['run'] / mib:.2f} MiB over 9 steps (peak +{peak} MiB); probe buffer "
          f"+{m['probe'] / mib:.2f} MiB")
    assert m["cache_bytes"] == expected and m["tokens"] == toks and m["finite"], m
    slack = 4 * mib
    assert 0.9 * expected <= m["probe"] <= 1.1 * expected + slack, f"the RSS probe is off: {m}"
    assert 0.9 * expected <= m["alloc"] <= 1.1 * expected + slack, f"cache buffers vs {expected} B: {m}"
    for k in ("run", "peak_run"):
        if m[k] is not None:
            assert m[k] <= 0.25 * expected, f"{k}: 9 decode steps grew RSS by {m[k]} B (cache {expected} B): {m}"


def test_session_decodes_over_131000_cached_rows(tiny_folder):
    """The model reads 131,000 cached rows (the model's own rows, tiled) at positions up to 131,003:
    shared-buffer and concat decoding give the same logits."""
    from tq_ort.session import DecoderSession

    seed_sess = DecoderSession(tiny_folder, max_length=512)
    seed_sess.reset()
    seed_sess.step(np.random.default_rng(0).integers(0, 256, (1, 512)))
    block = seed_sess.cache_arrays()  # [1, Hkv, 512, row_bytes] each
    n = 131_000
    shared = DecoderSession(tiny_folder, max_length=LONG)
    concat = DecoderSession(tiny_folder, max_length=LONG, shared_buffer=False)
    shared.reset()
    concat.reset()
    import onnxruntime as ort

    for name, rows in block.items():
        full = np.tile(rows, (1, 1, -(-n // rows.shape[2]), 1))[:, :, :n]
        buffer_view(shared._cache[name])[:, :, :n] = full
        concat._cache[name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(full))
    shared.length = concat.length = n
    ids = [7, 100, 200]
    a = np.stack([shared.step(np.asarray([[t]])) for t in ids])
    b = np.stack([concat.step(np.asarray([[t]])) for t in ids])
    assert np.isfinite(a).all()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg="shared vs concat over 131,000 cached rows")
    # the long cache matters: the same tokens over an empty cache give other logits
    fresh = DecoderSession(tiny_folder, max_length=8)
    fresh.reset()
    c = np.stack([fresh.step(np.asarray([[t]])) for t in ids])
    assert np.abs(a - c).max() > 1e-2


if __name__ == "__main__":  # the fresh process of test_session_at_131072_tokens_costs_the_compressed_size
    import json

    print(json.dumps(measure_memory(sys.argv[1])))
