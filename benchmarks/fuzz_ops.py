"""Fuzz campaign of the turboquant ops on ORT's CPU EP (not a test; tests/test_fuzz_ops.py is the
fixed-seed profile). Runs --cases hypothesis cases (default 10,000) in --jobs driver processes, each
with its own worker child (tests/fuzz/), and records the outcomes by op, by outcome and by mutation
in benchmarks/results/fuzz-cpu.md and .json, with the machine, versions and command. Failing cases
(crash, hang, oom, mismatch, refused, vague-error) are saved as .onnx + .npz under --save.

    python benchmarks/fuzz_ops.py [--cases 10000] [--jobs 2] [--seed 19] [--out benchmarks/results/fuzz-cpu]

Under a sanitizer build, preload its runtime and point TQ_ORT_LIBRARY at it (docs/reliability.md).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fuzz.cases import OPS, fuzz  # noqa: E402
from fuzz.check import FAIL, OUTCOMES  # noqa: E402
from fuzz.runner import Runner  # noqa: E402


def job(lib: str, n: int, seed: int, save: str, timeout: float, q) -> None:
    """One driver: n cases from the given seed; every outcome goes to the queue."""
    saved = 0
    with Runner(lib, timeout_s=timeout) as runner:
        def report(case, out):
            nonlocal saved
            path = ""
            if not out.passed and saved < 50:
                Path(save).mkdir(parents=True, exist_ok=True)
                path = f"{save}/seed{seed}-{saved:02d}-{out.kind}"
                case.save(path)
                saved += 1
            q.put((out.op, out.label, out.valid, out.kind, out.detail[:300] if not out.passed else "",
                   case.describe()[:1200] if not out.passed else "", path))
        fuzz(runner, n, seed=seed, on_outcome=report, stop_on_failure=False)
    q.put(None)


def machine() -> dict:
    cpu = platform.processor()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "load_at_start": round(os.getloadavg()[0], 2)}


def versions(lib: str) -> dict:
    import hypothesis
    import numpy
    import onnxruntime
    return {"python": platform.python_version(), "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__,
            "hypothesis": hypothesis.__version__, "library": lib,
            "library_sha256": hashlib.sha256(Path(lib).read_bytes()).hexdigest()[:16],
            "sanitizer_preload": os.environ.get("LD_PRELOAD", "")}


def write_results(out: str, rec: dict) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out + ".json").write_text(json.dumps(rec, indent=1) + "\n")
    by_op = rec["by_op"]
    lines = [
        "# Fuzzing the turboquant ops on the CPU EP",
        "",
        f"- command: `{rec['command']}`",
        f"- machine: {rec['machine']['cpu']}, {rec['machine']['cores']} logical cores, "
        f"load {rec['machine']['load_at_start']} at start (machine shared with other jobs)",
        f"- versions: python {rec['versions']['python']}, onnxruntime {rec['versions']['onnxruntime']}, "
        f"numpy {rec['versions']['numpy']}, hypothesis {rec['versions']['hypothesis']}",
        f"- library: `{rec['versions']['library']}` (sha256 {rec['versions']['library_sha256']}…)"
        + (f", preloaded `{rec['versions']['sanitizer_preload']}`" if rec['versions']['sanitizer_preload'] else ""),
        f"- {rec['cases']} cases in {rec['seconds']:.0f} s ({rec['jobs']} drivers, seeds {rec['seeds']}), "
        f"worker restarts after a death: counted as crashes/hangs below",
        "",
        "Outcomes: `match` valid case, outputs equal to the numpy reference; `result` invalid case that ORT "
        "ran anyway; `error` ORT returned an error; failures: " + ", ".join(f"`{k}`" for k in FAIL) + ".",
        "",
        "| op | cases | " + " | ".join(OUTCOMES) + " |",
        "|---|---|" + "---|" * len(OUTCOMES),
    ]
    for op in list(OPS) + ["all"]:
        row = by_op.get(op, {})
        lines.append(f"| {op} | {sum(row.values())} | " + " | ".join(str(row.get(k, 0)) for k in OUTCOMES) + " |")
    lines += ["", "## By mutation (op / label: outcomes)", ""]
    for key, row in sorted(rec["by_label"].items()):
        lines.append(f"- {key}: " + ", ".join(f"{k} {v}" for k, v in sorted(row.items())))
    lines += ["", f"## Failures ({len(rec['failures'])} recorded)", ""]
    for f in rec["failures"][:40]:
        lines.append(f"- **{f['kind']}** {f['op']} [{f['label']}]: {f['detail']}  \n  `{f['case'][:400]}`"
                     + (f" (saved {f['saved']})" if f["saved"] else ""))
    if not rec["failures"]:
        lines.append("None.")
    Path(out + ".md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=10000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per case before it counts as a hang")
    ap.add_argument("--library", default=None, help="default: TQ_ORT_LIBRARY or the installed library")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/fuzz-cpu"), help="results path without suffix")
    ap.add_argument("--save", default=str(ROOT / "build/fuzz-failures"), help="folder for failing cases")
    args = ap.parse_args(argv)
    from tqdm import tqdm

    from tq_ort.library import library_path
    lib = args.library or library_path()
    per = [args.cases // args.jobs + (1 if i < args.cases % args.jobs else 0) for i in range(args.jobs)]
    seeds = [args.seed + i for i in range(args.jobs)]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=job, args=(lib, n, s, args.save, args.timeout, q)) for n, s in zip(per, seeds)]
    t0 = time.perf_counter()
    rec = {"command": "python benchmarks/fuzz_ops.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "machine": machine(), "versions": versions(lib), "jobs": args.jobs, "seeds": seeds}
    for p in procs:
        p.start()
    by_op: dict = {}
    by_label: dict = {}
    failures = []
    done, n = 0, 0
    with tqdm(total=args.cases, unit="case", smoothing=0.05) as bar:
        while done < len(procs):
            item = q.get()
            if item is None:
                done += 1
                continue
            op, label, valid, kind, detail, desc, path = item
            n += 1
            for key in (op, "all"):
                by_op.setdefault(key, Counter())[kind] += 1
            by_label.setdefault(f"{op} / {label if valid else label + ' (invalid)'}", Counter())[kind] += 1
            if kind in FAIL:
                failures.append({"op": op, "label": label, "kind": kind, "detail": detail, "case": desc, "saved": path})
            bar.update(1)
            bar.set_postfix(fail=len(failures), refresh=False)
    for p in procs:
        p.join()
    rec.update(cases=n, seconds=time.perf_counter() - t0, by_op={k: dict(v) for k, v in by_op.items()},
               by_label={k: dict(v) for k, v in by_label.items()}, failures=failures)
    write_results(args.out, rec)
    print(f"{n} cases, {len(failures)} failing; wrote {args.out}.md/.json")
    for f in failures[:10]:
        print(f"  {f['kind']} {f['op']} [{f['label']}]: {f['detail'][:200]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
