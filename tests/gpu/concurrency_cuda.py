"""On a GPU machine: the concurrency checks of tests/test_concurrency.py on the CUDA EP. Several threads
running one InferenceSession at once, and several sessions in one process, must give results
bit-identical to serial runs: the encode / decode / attention op models (CUDA EP alone, no CPU fallback
of our nodes), and a tiny rewritten decoder (DecoderSession(device="cuda") forks and separate sessions).

    PYTHONPATH=/tmp/ortgpu:. TQ_ORT_LIBRARY=build/ort/libtq_ort_ops.so python3 tests/gpu/concurrency_cuda.py [DIR]

DIR: a rewritten tiny model folder (model.onnx + config and tokenizer files), e.g. made on the CPU with
`python -c "import sys; sys.path.insert(0, 'tests'); from tiny_exports import rewritten_folder; \
print(rewritten_folder(sys.argv[1], 'llama'))" /tmp/conc`; without DIR, and without torch to make one,
the decoder part is skipped. Prints one line per check; exit 0 all identical (or no CUDA: skipped),
1 on a mismatch or an error.
"""
from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))


def main(argv: list[str]) -> int:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print(f"SKIP: this onnxruntime ({ort.__version__}) has no CUDAExecutionProvider: "
              f"{ort.get_available_providers()}")
        return 0
    import test_concurrency as tc

    from tq_ort.library import library_path

    lib = library_path()
    print(f"onnxruntime {ort.__version__}, library {lib}, {tc.THREADS} threads")
    bad = 0
    for label, kw in (("ops, one session per model", dict(intra=1, sessions_per_model=1)),
                      ("ops, 3 sessions per model", dict(intra=1, sessions_per_model=3))):
        t = time.time()
        try:
            n = tc.check_ops_concurrent(lib, 1234, providers=("CUDAExecutionProvider",), **kw)
            print(f"{label}: {n} concurrent runs identical to serial ({time.time() - t:.1f} s) OK")
        except Exception:  # noqa: BLE001 - report every check
            bad += 1
            print(f"{label}: FAILED\n{traceback.format_exc()}")
    folder = Path(argv[0]) if argv else None
    if folder is None:
        try:
            import tempfile

            from tiny_exports import rewritten_folder

            folder = rewritten_folder(Path(tempfile.mkdtemp()), "llama")
        except BaseException as e:  # noqa: BLE001 - pytest.skip raises a BaseException subclass
            print(f"decoder: SKIP (no DIR given and no tiny model could be made here: {type(e).__name__}: {e})")
    if folder is not None:
        t = time.time()
        try:
            n = tc.check_decoder_concurrent(folder, device="cuda")
            print(f"decoder {folder}: {n} concurrent greedy runs (tokens + logits) identical to serial "
                  f"({time.time() - t:.1f} s) OK")
        except Exception:  # noqa: BLE001
            bad += 1
            print(f"decoder {folder}: FAILED\n{traceback.format_exc()}")
    print("FAILED" if bad else "ALL OK")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
