"""The fuzz worker: a child process that imports onnxruntime once, then runs cases read from stdin.

Protocol (both ways): an 8-byte little-endian length, then a pickle. A request is a dict
{model: bytes, feeds: {name: array or (EMPTY, shape, dtype)}, outputs: [names],
shared: {input: output}, threads: int};
the reply is ("ok", [arrays]) or ("error", message). A crash (signal), a hang or an out-of-memory
kill shows up in the parent as a dead or silent pipe (tests/fuzz/runner.py). The pickles come from
the parent process only (this package), never from a file.

Run as `python tests/fuzz/worker.py LIBRARY AS_LIMIT_MB` (0 = no address-space limit, e.g. under
ASan, whose shadow memory needs terabytes of address space).
"""
from __future__ import annotations

import os
import pickle
import resource
import signal
import struct
import sys
import time


EMPTY = "__empty__"  # a feed ("__empty__", shape, dtype name): a zero-size tensor of any declared dims


def read_msg(f) -> object | None:
    head = f.read(8)
    if len(head) < 8:
        return None
    (n,) = struct.unpack("<Q", head)
    return pickle.loads(f.read(n))


def write_msg(f, obj: object) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(struct.pack("<Q", len(data)))
    f.write(data)
    f.flush()


def limit_address_space(extra_mb: int) -> None:
    """RLIMIT_AS = the current virtual size + extra_mb (so that imports already done still fit)."""
    if extra_mb <= 0:
        return
    with open("/proc/self/statm") as f:
        vsz = int(f.read().split()[0]) * resource.getpagesize()
    lim = vsz + extra_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (lim, lim))


def self_test(np, what: str) -> tuple[str, object]:
    """Misbehaviours on request, so that the harness's own tests can see each outcome detected."""
    if what == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif what == "abort":
        os.abort()
    elif what == "hang":
        time.sleep(3600)
    elif what == "alloc":  # beyond the address-space limit: MemoryError, an error reply
        try:
            return "ok", [np.ones(2**40, np.uint8)]
        except MemoryError as e:
            return "error", f"MemoryError: {e}"
    return "error", f"unknown self test {what!r}"


def run_case(ort, np, lib: str, req: dict) -> tuple[str, object]:
    if "self_test" in req:
        return self_test(np, req["self_test"])
    so = ort.SessionOptions()
    so.register_custom_ops_library(lib)
    so.log_severity_level = 4
    so.intra_op_num_threads = int(req.get("threads", 1))
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        sess = ort.InferenceSession(req["model"], so, providers=["CPUExecutionProvider"])
        shared = dict(req.get("shared") or [])
        io = sess.io_binding()
        bufs, vals = {}, {}  # past and present bound to one buffer (the decode fast path)
        for name, arr in req["feeds"].items():
            if isinstance(arr, tuple) and arr[0] == EMPTY:  # an empty tensor numpy cannot make
                io.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_shape_and_type(list(arr[1]), np.dtype(arr[2])))
            elif name in shared:
                bufs[name] = np.array(arr, copy=True)  # the OrtValue wraps, not owns, this memory
                vals[shared[name]] = ort.OrtValue.ortvalue_from_numpy(bufs[name])
                io.bind_ortvalue_input(name, vals[shared[name]])
            else:
                io.bind_cpu_input(name, arr)
        for n in req["outputs"]:
            if n in vals:
                io.bind_ortvalue_output(n, vals[n])
            else:
                io.bind_output(n)
        sess.run_with_iobinding(io)
        got = io.get_outputs()
        by_out = {o: bufs[i] for i, o in shared.items() if i in bufs}
        return "ok", [by_out[n].copy() if n in by_out else got[k].numpy() for k, n in enumerate(req["outputs"])]
    except Exception as e:  # ORT errors (and MemoryError from numpy) are results, not crashes
        return "error", f"{type(e).__name__}: {e}"


def main(argv: list[str]) -> int:
    lib, extra_mb = argv[1], int(argv[2])
    import numpy as np
    import onnxruntime as ort

    limit_address_space(extra_mb)
    # The protocol gets its own copy of stdout; fd 1 then goes to stderr, so that nothing the
    # library or ORT prints can corrupt the pipe.
    fin, fout = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    write_msg(fout, ("ready", ort.__version__))
    while True:
        req = read_msg(fin)
        if req is None:
            return 0
        reply = run_case(ort, np, lib, req)
        try:
            write_msg(fout, reply)
        except MemoryError:  # outputs that fit the limit once but not twice (pickled): an error reply
            shapes = [list(getattr(a, "shape", ())) for a in reply[1]] if reply[0] == "ok" else []
            reply = None
            write_msg(fout, ("error", f"MemoryError: the outputs {shapes} do not fit the worker's limit twice"))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
