"""Load benchmark of `tq-ort serve` (not a test): tokens/s and p50/p99 request latency vs client
concurrency, compressed vs float cache, through Triton (HTTP, tritonclient), and the most concurrent
long sequences a fixed cache budget admits, compressed vs float.

    python benchmarks/bench_serve.py                      # tiny llama (tests/tiny_exports.py), CPU
    python benchmarks/bench_serve.py --tq DIR --float DIR # your rewritten folder and its float export

Writes benchmarks/results/serve-<device>.md and .json (machine, versions, command).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def start(folder: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-m", "tq_ort.cli", "serve", str(folder), "--port", "0", "--grpc-port", "0",
           "--metrics-port", "0", "--max-batch", str(args.max_batch), "--max-length", str(args.max_length),
           "--cache-budget", args.cache_budget, "--device", args.device, "--max-queue", "1024",
           "--triton-log", os.devnull]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if "ready:" in line:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, int(re.search(r"HTTP [\d.]+:(\d+)", line).group(1))
    raise RuntimeError(f"tq-ort serve {folder} did not start (exit {proc.wait()})")


def load(port: int, clients: int, per_client: int, new_tokens: int) -> dict:
    import tritonclient.http as th

    def one(i: int) -> list[tuple[float, int]]:
        c = th.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=600)
        out = []
        for k in range(per_client):
            ins = []
            prompt = f"request {i} {k} the cat sat on the mat".encode()
            for name, arr, dt in (("prompt", np.array([prompt], dtype=object), "BYTES"),
                                  ("max_new_tokens", np.array([new_tokens], dtype=np.int32), "INT32")):
                x = th.InferInput(name, [1], dt)
                x.set_data_from_numpy(arr)
                ins.append(x)
            t0 = time.perf_counter()
            r = c.infer("generate", ins)
            out.append((time.perf_counter() - t0, len(r.as_numpy("token_ids"))))
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        res = [x for r in ex.map(one, range(clients)) for x in r]
    wall = time.perf_counter() - t0
    lat = np.array([r[0] for r in res])
    toks = sum(r[1] for r in res)
    return {"clients": clients, "requests": len(res), "tokens": toks, "wall_s": wall, "tokens_per_s": toks / wall,
            "p50_s": float(np.percentile(lat, 50)), "p99_s": float(np.percentile(lat, 99))}


def capacity(folder: Path, budget: int, tokens: int) -> dict:
    """Sequences of `tokens` tokens the budget admits: from the metadata, then checked by the
    server's own admission (CacheAccount.try_reserve, as the scheduler calls it)."""
    from tq_ort.serve.budget import CacheAccount
    from tq_ort.session import DecoderSession

    acc = CacheAccount.from_report(DecoderSession(folder, max_length=tokens).memory_report(1), budget)
    computed = acc.max_sequences(tokens)
    admitted = 0
    while acc.try_reserve(acc.need(tokens)):
        admitted += 1
    assert admitted == computed, (admitted, computed)
    return {"budget_bytes": budget, "tokens": tokens, "bytes_per_token": acc.bytes_per_token,
            "fixed_bytes": acc.fixed_bytes, "fp16_bytes_per_token": acc.fp16_bytes_per_token,
            "sequences": computed, "admitted": admitted}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tq", help="rewritten model folder (default: the tiny llama, rewritten here)")
    p.add_argument("--float", dest="float_", help="float export folder (default: the tiny llama export)")
    p.add_argument("--concurrency", default="1,4,16,64")
    p.add_argument("--per-client", type=int, default=3, help="requests per client")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--cache-budget", default="256MiB")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--capacity-budget", default="64MiB", help="fixed budget of the long-sequence capacity table")
    p.add_argument("--capacity-tokens", type=int, default=4096)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = p.parse_args()
    from tq_ort.serve.budget import parse_size

    if a.tq and a.float_:
        folders = {"compressed": Path(a.tq), "float": Path(a.float_)}
    else:
        from tiny_exports import rewritten_folder, tiny_export

        tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
        folders = {"compressed": rewritten_folder(tmp, "llama"), "float": tiny_export("llama").parent}
    rows = []
    for kind, folder in folders.items():
        proc, port = start(folder, a)
        try:
            load(port, 2, 1, 4)  # warm-up
            for c in map(int, a.concurrency.split(",")):
                r = load(port, c, a.per_client, a.new_tokens)
                r["cache"] = kind
                rows.append(r)
                print(f"{kind:>10} clients={c:>3}: {r['tokens_per_s']:8.1f} tok/s  p50 {r['p50_s'] * 1e3:7.1f} ms  "
                      f"p99 {r['p99_s'] * 1e3:7.1f} ms  ({r['requests']} requests)", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=120)
    budget = parse_size(a.capacity_budget)
    cap = {k: capacity(f, budget, a.capacity_tokens) for k, f in folders.items()}
    info = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": platform.platform(),
            "processor": platform.processor(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "versions": {k: version(k) for k in ("onnxruntime", "nvidia-pytriton", "tritonclient", "numpy")},
            "models": {k: str(v) for k, v in folders.items()}, "settings": {k: v for k, v in vars(a).items()},
            "load": rows, "capacity": cap}
    md = [f"# tq-ort serve load benchmark ({a.device})", "",
          f"`{info['command']}`; {info['machine']}, {info['cpus']} CPUs (shared), Python {info['python']}, "
          + ", ".join(f"{k} {v}" for k, v in info["versions"].items()), "",
          f"Models: {', '.join(f'{k} = {v}' for k, v in info['models'].items())}. Server: --max-batch {a.max_batch} "
          f"--max-length {a.max_length} --cache-budget {a.cache_budget}; each client sends {a.per_client} requests "
          f"one after another (prompt ~10 tokens, {a.new_tokens} new tokens, greedy) over HTTP.", "",
          "| cache | clients | requests | tokens/s | p50 latency (ms) | p99 latency (ms) |", "|---|---|---|---|---|---|"]
    md += [f"| {r['cache']} | {r['clients']} | {r['requests']} | {r['tokens_per_s']:.1f} | {r['p50_s'] * 1e3:.1f} | "
           f"{r['p99_s'] * 1e3:.1f} |" for r in rows]
    md += ["", f"Sequences of {a.capacity_tokens} tokens that a {a.capacity_budget} cache budget admits at once "
           "(from the model metadata; checked by the server's admission, CacheAccount.try_reserve):", "",
           "| cache | bytes/token | float16 bytes/token | sequences admitted |", "|---|---|---|---|"]
    md += [f"| {k} | {c['bytes_per_token']} | {c['fp16_bytes_per_token']} | {c['admitted']} |" for k, c in cap.items()]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"serve-{a.device}.json").write_text(json.dumps(info, indent=1))
    (out / f"serve-{a.device}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
