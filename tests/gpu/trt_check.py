"""GPU machine: the TensorRT engine session (tq_ort.trt.session) and `tq-ort check` (b) + (c), on artifacts
made on the CPU machine (scripts: tests/gpu/trt_check_prepare.sh).

    TQ_TRT_PLUGINS=build/c2-gpu/libtq_trt_plugins.so PYTHONPATH=. python3 tests/gpu/trt_check.py build/c2-gpu

DIR: tq/ (rewritten tiny llama, K4V4), orig/ (its float export), tq.plan + tq.plan.json (shared buffer),
tq-concat.plan (+ .json), libtq_trt_plugins.so. Prints, per engine, whether TensorRT deserializes it (or
TensorRT's error: expected on Hopper, "does not support this compute capability 9.0"), the greedy tokens
against the ORT CUDA EP where it runs, then the check report. Exit 0 = check passed (engines that cannot
run on this GPU are reported, not failed), 1 = a mismatch.
"""
import sys
from pathlib import Path

import numpy as np

from tq_ort.check.checker import CheckOptions, run_check
from tq_ort.session import DecoderSession
from tq_ort.trt.session import TrtDecoderSession


def main(d: Path) -> int:
    prompt = [int(t) for t in np.random.default_rng(0).integers(0, 256, 7)]
    want = DecoderSession(d / "tq", device="cuda", max_length=40).generate(prompt, 32)
    runnable = []
    bad = 0
    for name in ("tq.plan", "tq-concat.plan"):
        try:
            sess = TrtDecoderSession(d / name, max_length=40)
        except RuntimeError as e:
            print(f"{name}: cannot run here: {e}")
            continue
        got = sess.generate(prompt, 32)
        ok = got == want
        bad += not ok
        print(f"{name}: {'shared' if sess.shared else 'concat'}, 32 greedy tokens {'EQUAL' if ok else 'DIFFER'} "
              f"to ORT CUDA EP\n  engine {got}\n  ORT    {want}")
        runnable.append(name)
    rep = run_check(d / "tq", CheckOptions(original=d / "orig", cuda=True, steps=32, verbose=False,
                                           engine=(d / runnable[0]) if runnable else None))
    print(rep.summary())
    return 1 if bad or not rep.passed else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
