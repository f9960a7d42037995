"""Property-based fuzzing of the turboquant ops on ORT's CPU EP (docs/reliability.md).

- `cases`: hypothesis strategies that draw one op case (model, feeds, expectation) at a time,
  valid ones (compared with the numpy reference, tq_ort.codec) and mutated ones (bad shapes,
  dtypes, attributes, sequence lengths, non-finite values, empty or missing tensors).
- `worker`: the child process that imports onnxruntime once and runs cases sent over a pipe, under
  an address-space limit.
- `runner`: starts the worker, applies the per-case timeout, restarts it after a crash and turns
  what came back into an outcome (match, result, error, crash, hang, oom, mismatch, refused).

Used by tests/test_fuzz_ops.py (a fixed-seed profile) and benchmarks/fuzz_ops.py (>= 10,000 cases).
Nothing here imports the project's ORT layer: the library path comes from tq_ort.library (or
TQ_ORT_LIBRARY), the reference from tq_ort.codec.
"""
