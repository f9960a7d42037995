"""The CPU library under AddressSanitizer + UndefinedBehaviorSanitizer (docs/reliability.md section 3).

Builds the library with `cmake -DTQ_SANITIZE=address,undefined -DTQ_WITH_CUDA=OFF` into
build/sanitize (reused: a later run only rebuilds what changed), then runs the CPU op tests, the size
limits and the fuzz profile in a child pytest with the ASan runtime
preloaded (Python is not instrumented, so libasan must be the first library of the process) and
TQ_ORT_LIBRARY pointing at the sanitized build (and TQ_ORT_MEMORY_LIMIT_MB, since no address-space
limit fits ASan's shadow memory). Every report (a heap overflow, a use after free, a
signed overflow, a bad shift, ...) aborts the process that made it; ASan writes its reports to log
files (log_path), GCC's UBSan runtime next to ASan prints to stderr (the child's output, fuzz workers
included): the test passes only with zero log files, no report in the output and a passing child. A first child
runs a small instrumented library with a deliberate heap overflow and a signed overflow, so that the
setup is known to catch both kinds of report.

TQ_SANITIZE_EXAMPLES sets the fuzz case count (default 500, the profile's); TQ_SKIP_SANITIZE=1 skips the test.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "sanitize"
LIB = BUILD / "libtq_ort_ops.so"
TESTS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_cpu_ops*.py")) + [
    "tests/test_size_limits.py", "tests/fuzz/test_check.py", "tests/test_fuzz_ops.py"]
# the fuzz harness' self test sends itself SIGSEGV and asks for 1 TB on purpose: reports by design
DESELECT = ["--deselect", "tests/test_fuzz_ops.py::test_harness_detects_crash_hang_and_memory_limit"]
EXAMPLES = os.environ.get("TQ_SANITIZE_EXAMPLES", "500")
REPORT = re.compile(r"ERROR: AddressSanitizer|runtime error:|SUMMARY: (Address|UndefinedBehavior)Sanitizer|"
                    r"ERROR: LeakSanitizer")
# detect_leaks=0: numpy / onnxruntime (not instrumented) keep allocations alive at exit;
# allocator_may_return_null=1 + max_allocation_size_mb: a huge request (the fuzz harness' own
# MemoryError self test) returns null as it would under an address-space limit, which ASan's shadow
# memory rules out, instead of aborting or paging the machine to death.
ASAN_OPTIONS = ("detect_leaks=0:halt_on_error=1:abort_on_error=1:allocator_may_return_null=1:"
                "max_allocation_size_mb=8192:detect_odr_violation=0:verify_asan_link_order=0")
UBSAN_OPTIONS = "halt_on_error=1:abort_on_error=1:print_stacktrace=1"

pytestmark = pytest.mark.skipif(os.environ.get("TQ_SKIP_SANITIZE") == "1", reason="TQ_SKIP_SANITIZE=1")


def _cxx() -> str | None:
    for c in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if c and shutil.which(c):
            return shutil.which(c)
    return None


def _runtime(lib: Path, name: str, cxx: str) -> str | None:
    """The sanitizer runtime the library links (ldd), else the compiler's (-print-file-name)."""
    try:
        out = subprocess.run(["ldd", str(lib)], capture_output=True, text=True, timeout=30).stdout
        m = re.search(rf"{re.escape(name)}\.so[.\d]* => (\S+)", out)
        if m and Path(m.group(1)).is_file():
            return m.group(1)
    except (OSError, subprocess.TimeoutExpired):
        pass
    p = subprocess.run([cxx, f"-print-file-name={name}.so"], capture_output=True, text=True).stdout.strip()
    return p if p and Path(p).is_file() else None


def _preload(lib: Path, asan: str, cxx: str) -> str:
    """LD_PRELOAD: the ASan runtime first, then the C++ runtime the library links. Python does not
    link libstdc++, so without it ASan's __cxa_throw interceptor finds no real __cxa_throw at start
    and the first C++ exception (every op error) dies in "CHECK failed: ... real___cxa_throw"."""
    stdcxx = _runtime(lib, "libstdc++", cxx) or _runtime(lib, "libc++", cxx)
    return " ".join(p for p in (asan, stdcxx) if p)


def _sanitizer_env(log_dir: Path, preload: str) -> dict:
    env = dict(os.environ)
    env.update(LD_PRELOAD=preload, ASAN_OPTIONS=f"{ASAN_OPTIONS}:log_path={log_dir}/asan",
               UBSAN_OPTIONS=f"{UBSAN_OPTIONS}:log_path={log_dir}/ubsan", TQ_ORT_LIBRARY=str(LIB),
               TQ_FUZZ_EXAMPLES=EXAMPLES, OMP_NUM_THREADS="1",
               # no RLIMIT_AS fits ASan's shadow: the ops' memory limit (docs/reliability.md 2) by hand,
               # below max_allocation_size_mb, so that what they accept ASan's allocator serves
               TQ_ORT_MEMORY_LIMIT_MB="4096")
    env.pop("TQ_FUZZ_AS_MB", None)
    return env


def _reports(log_dir: Path, output: str) -> list[str]:
    found = [f"{p.name}: {p.read_text(errors='replace')[:3000]}" for p in sorted(log_dir.glob("*san*"))]
    found += [ln for ln in output.splitlines() if REPORT.search(ln)]
    return found


@pytest.fixture(scope="module")
def sanitized_lib() -> tuple[str, str]:
    """(the sanitized library, its LD_PRELOAD), built once (incrementally) per run."""
    cmake, cxx = shutil.which("cmake"), _cxx()
    if not cmake or not cxx:
        pytest.skip("needs cmake and a C++ compiler")
    if not Path(subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
                ).is_file():
        pytest.skip(f"{cxx} has no ASan runtime (libasan.so)")
    BUILD.mkdir(parents=True, exist_ok=True)
    args = [cmake, "-S", str(ROOT), "-B", str(BUILD), "-DTQ_SANITIZE=address,undefined", "-DTQ_WITH_CUDA=OFF"]
    if not (BUILD / "CMakeCache.txt").exists():  # a first configure picks the generator and compiler
        args += (["-G", "Ninja"] if shutil.which("ninja") else []) + [f"-DCMAKE_CXX_COMPILER={cxx}"]
    # the ORT headers come from the same per-user cache (or TQ_ORT_INCLUDE_DIR) as the normal build
    cfg = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert cfg.returncode == 0, cfg.stdout[-3000:] + cfg.stderr[-3000:]
    b = subprocess.run([cmake, "--build", str(BUILD), "-j2"], capture_output=True, text=True, timeout=1200)
    assert b.returncode == 0, b.stdout[-4000:] + b.stderr[-4000:]
    assert LIB.is_file(), LIB
    asan = _runtime(LIB, "libasan", cxx)
    if not asan:
        pytest.skip("the ASan runtime the library links was not found")
    return str(LIB), _preload(LIB, asan, cxx)


CANARY = r"""
#include <cstdlib>
#include <cstring>
extern "C" int heap_overflow(int n) {
  char* p = (char*)malloc(n);
  memset(p, 1, n + 1);
  int r = p[n];
  free(p);
  return r;
}
extern "C" int signed_overflow(int a) { return a + 2147483647; }
"""


@pytest.mark.parametrize("what,pattern", [("heap_overflow(8)", "heap-buffer-overflow"),
                                          ("signed_overflow(5)", "signed integer overflow")])
def test_sanitizers_catch_reports(sanitized_lib, tmp_path, what, pattern):
    """The preload, options, log files and output scan really catch an ASan and a UBSan report in a library
    loaded into Python (else "zero reports" below would prove nothing)."""
    _, preload = sanitized_lib
    src, so = tmp_path / "canary.cc", tmp_path / "libcanary.so"
    src.write_text(CANARY)
    cc = subprocess.run([_cxx(), "-shared", "-fPIC", "-O1", "-fsanitize=address,undefined",
                         "-fno-sanitize-recover=undefined", str(src), "-o", str(so)], capture_output=True, text=True)
    assert cc.returncode == 0, cc.stderr
    logs = tmp_path / "logs"
    logs.mkdir()
    code = f"import ctypes; print(ctypes.CDLL({str(so)!r}).{what})"
    r = subprocess.run([sys.executable, "-c", code], env=_sanitizer_env(logs, preload), capture_output=True,
                       text=True, timeout=120)
    reports = _reports(logs, r.stdout + r.stderr)
    assert r.returncode != 0 and any(pattern in x for x in reports), (r.returncode, reports, r.stderr[-2000:])


def test_cpu_ops_under_asan_ubsan(sanitized_lib, tmp_path):
    """The CPU op tests, the size limits and the fuzz profile: all pass, zero sanitizer reports."""
    _, preload = sanitized_lib
    logs = tmp_path / "logs"
    logs.mkdir()
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-s", *TESTS, *DESELECT],
                       cwd=ROOT, env=_sanitizer_env(logs, preload), capture_output=True, text=True, timeout=1800)
    out = r.stdout + r.stderr
    reports = _reports(logs, out)
    assert not reports, "\n".join(reports)[:8000]
    assert r.returncode == 0, out[-6000:]
    summary = re.findall(r"^\d+ passed.*$", r.stdout, re.M)
    assert summary, out[-2000:]
    print(f"sanitized run: {time.perf_counter() - t0:.0f} s; {summary[-1]}")
