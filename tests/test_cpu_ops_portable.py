"""The slower kernel paths: a subset of the op tests rerun with the AVX-512 kernels off (AVX2 only) and
with all SIMD kernels off (portable C++), each in a subprocess since the choice is made once per process."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SUBSET = ("decode_dims_and_bits or decode_qjl or keys_only or prefill_everything or first_prompt "
          "or gqa_ratios or encode_matches_reference or encode_qjl or odd_head")


@pytest.mark.parametrize("switch", ["TQ_ORT_NO_AVX512", "TQ_ORT_NO_AVX2"])
def test_fallback_kernels_match_reference(switch):
    env = dict(os.environ, **{switch: "1"})
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                        str(HERE / "test_cpu_ops_attention.py"), str(HERE / "test_cpu_ops_codec.py"), "-k", SUBSET],
                       env=env, capture_output=True, text=True, cwd=HERE.parent)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
