"""The TensorRT plugin library libtq_trt_plugins.so (custom_ops/trt/, docs/tensorrt.md), on the CPU.

- it loads with ctypes without TensorRT or a GPU and lists its three creators;
- the harness of tests/gpu/trt_harness.py drives every plugin method up to enqueue (create, types,
  shapes, formats, configure, workspace, serialize -> runtime create -> attach, bad fields/shapes);
- with TensorRT-RTX (tensorrt_rtx_bindings, the [tensorrt] extra): load_library registers the
  creators, the ONNX parser maps one-node turboquant models to the plugins, engines build on the CPU
  (without enqueue), and contract-breaking fields/shapes fail the parse or build with a message.

TensorRT runs in a subprocess (this file run as a script): the TensorRT-RTX 1.7.1 wheel's parser
dlopen()s "libtensorrt_rtx.so", which the wheel lacks, so the subprocess gets LD_LIBRARY_PATH with
that name linked to the wheel's libtensorrt_rtx.so.1 (docs/tensorrt.md); and an abort inside
TensorRT cannot take pytest down with it.
"""
from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CREATORS = ["TurboQuantEncode/1/", "TurboQuantDecode/1/", "TurboQuantAttention/1/"]


def _plugin_path() -> str:
    from tq_ort.library import trt_plugin_path

    try:
        return trt_plugin_path()
    except FileNotFoundError as e:
        pytest.skip(f"TensorRT plugin library not built ({str(e)[:160]})")


@pytest.fixture(scope="module")
def plugin_lib() -> str:
    return _plugin_path()


def test_loads_with_ctypes_without_tensorrt(plugin_lib):
    code = ("import ctypes, sys; c = ctypes.CDLL(sys.argv[1]); c.tqTrtPluginCreators.restype = ctypes.c_char_p; "
            "n = ctypes.c_int32(0); c.getCreators.restype = ctypes.c_void_p; "
            "p = c.getCreators(ctypes.byref(n)); assert p; c.setLoggerFinder; "
            "print(n.value, c.tqTrtPluginCreators().decode(), sorted(m for m in sys.modules if 'tensorrt' in m))")
    r = subprocess.run([sys.executable, "-c", code, plugin_lib], capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"})
    assert r.returncode == 0, r.stderr
    n, names, mods = r.stdout.split(" ", 2)
    assert int(n) == 3
    assert names.split(",") == CREATORS
    assert mods.strip() == "[]"


def test_links_no_tensorrt_and_no_shared_cudart(plugin_lib):
    readelf = shutil.which("readelf")
    if not readelf:
        pytest.skip("readelf not installed")
    out = subprocess.run([readelf, "-d", plugin_lib], capture_output=True, text=True, check=True).stdout
    needed = [line.split("[")[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]
    assert needed, out
    bad = [n for n in needed if any(s in n for s in ("nvinfer", "tensorrt", "cudart", "libcuda"))]
    assert not bad, f"plugin library depends on {bad}"


def test_harness_cpu_all_methods_up_to_enqueue(plugin_lib, lib_path, capsys, monkeypatch):
    """tests/gpu/trt_harness.py --cpu: every case's types/shapes/formats/workspace/serialization and
    the bad-input checks, against the ORT CPU op's outputs (shapes, dtypes)."""
    if not (shutil.which("g++") and (Path("/usr/local/cuda/include/cuda_runtime_api.h").is_file()
                                     or os.environ.get("CUDA_HOME"))):
        pytest.skip("g++ or the CUDA headers missing: the harness cannot be built")
    # this session's libraries, not copies bundled in build/trt-harness/ for a GPU machine
    monkeypatch.setenv("TQ_TRT_PLUGINS", plugin_lib)
    monkeypatch.setenv("TQ_ORT_LIBRARY", lib_path)
    spec = importlib.util.spec_from_file_location("trt_harness", ROOT / "tests" / "gpu" / "trt_harness.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    try:
        mod.load_harness()
    except (subprocess.CalledProcessError, OSError) as e:
        pytest.skip(f"harness could not be built: {e}")
    rc = mod.main(["--cpu"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "FAIL" not in out and " passed" in out


# ------------------------------------------------------------------------------ TensorRT-RTX
def _rtx_env(tmp: Path) -> dict | None:
    try:
        import tensorrt_rtx_libs  # noqa: F401
    except ImportError:
        return None
    libdir = Path(sys.modules["tensorrt_rtx_libs"].__file__).parent
    real = libdir / "libtensorrt_rtx.so.1"
    env = dict(os.environ)
    if real.is_file() and not (libdir / "libtensorrt_rtx.so").exists():
        link = tmp / "libtensorrt_rtx.so"
        if not link.exists():
            link.symlink_to(real)
        env["LD_LIBRARY_PATH"] = str(tmp) + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    return env


@pytest.fixture(scope="module")
def rtx(plugin_lib, tmp_path_factory):
    if importlib.util.find_spec("tensorrt_rtx_bindings") is None:
        pytest.skip("tensorrt_rtx_bindings not installed (pip install .[tensorrt])")
    env = _rtx_env(tmp_path_factory.mktemp("rtxlink"))

    def run(case: str) -> dict:
        r = subprocess.run([sys.executable, __file__, case, plugin_lib], capture_output=True, text=True, env=env,
                           timeout=600, cwd=ROOT)
        assert r.returncode == 0, f"worker {case} exited {r.returncode} (abort?):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        res = json.loads(r.stdout.strip().splitlines()[-1])
        res["stderr"] = r.stderr
        return res

    return run


def test_rtx_registry(rtx):
    r = rtx("registry")
    assert r["loaded"]
    assert sorted(r["creators"]) == sorted(CREATORS)
    assert r["fields"]["TurboQuantEncode"] == ["bits", "use_qjl", "rows_dtype"]
    assert "tensorrt_plugin_shape_input_indices" in r["fields"]["TurboQuantAttention"]


def test_rtx_create_and_bad_fields(rtx):
    r = rtx("create")
    assert r["good"] == [True, True, True]
    assert r["bad"] == [False, False, False]
    for needle in ("field 'bits' is required", "field 'output_dtype'=3",
                   "fields num_heads=6, kv_num_heads=4: expected positive, num_heads a multiple of kv_num_heads"):
        assert needle in r["stderr"], r["stderr"][-2000:]


@pytest.mark.parametrize("case", ["encode", "decode", "attention", "attention_int8_rows", "attention_shape_input",
                                  "attention_rotary_empty_qjl", "attention_keys_only_ring", "attention_shared_buffer"])
def test_rtx_onnx_engine_builds_on_cpu(rtx, case):
    r = rtx("build:" + case)
    assert r["parsed"], r
    assert r["outputs"] == r["expected"], r
    assert r["engine_bytes"] > 0, r["stderr"][-3000:]
    assert r["enqueues"] == 0, "the CPU engine build called enqueue"


@pytest.mark.parametrize("case,needle", [
    ("bad:past_key_width", "past_key: got shape [?, 2, ?, 10], expected int32 [B, 2, P, 9]"),
    ("bad:x_not_d", "x: got shape [?, 60], expected [..., 64] (d from rotation)"),
    ("bad:codebook_vs_bits", "codebook: got shape [16], expected [8] (2^bits with the field bits=3)"),
    ("bad:uint8_rows_output", "UInt8"),
    ("bad:middle_input_omitted", "input) != nullptr"),
])
def test_rtx_contract_breaking_network_fails_cleanly(rtx, case, needle):
    r = rtx(case)
    assert not (r["parsed"] and r["engine_bytes"]), r
    assert needle in r["stderr"] + " ".join(r["messages"]), (r["messages"], r["stderr"][-2000:])


# ------------------------------------------------------------------- the worker (a subprocess)
def _worker(case: str, lib: str) -> dict:
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import onnx
    import tensorrt_rtx_bindings as trt

    import conftest
    from conftest import Ops

    conftest.NP2ONNX.setdefault(np.dtype(np.int8), onnx.TensorProto.INT8)

    from tq_ort import codec

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.msgs = []

        def log(self, sev, msg):
            if sev <= trt.ILogger.WARNING:
                self.msgs.append(msg)

    logger = Logger()
    builder = trt.Builder(logger)
    reg = builder.get_plugin_registry()
    handle = reg.load_library(lib)
    res: dict = {"loaded": handle is not None, "messages": logger.msgs, "parsed": False, "engine_bytes": 0}
    c = ctypes.CDLL(lib)
    c.tqTrtPluginEnqueueCount.restype = ctypes.c_int64
    if case == "registry":
        mine = [cr for cr in reg.all_creators if cr.name.startswith("TurboQuant")]
        res["creators"] = [f"{cr.name}/{cr.plugin_version}/{cr.plugin_namespace}" for cr in mine]
        res["fields"] = {cr.name: [f.name for f in cr.field_names] for cr in mine}
        return res
    if case == "create":
        def make(name, fields):
            cr = reg.get_creator(name, "1", "")
            fc = trt.PluginFieldCollection([trt.PluginField(k, np.array([v], np.int32), trt.PluginFieldType.INT32)
                                            for k, v in fields.items()])
            return cr.create_plugin(name + "_t", fc, trt.TensorRTPhase.BUILD) is not None
        res["good"] = [make("TurboQuantEncode", {"bits": 4}), make("TurboQuantDecode", {"output_dtype": 10}),
                       make("TurboQuantAttention", {"num_heads": 8, "kv_num_heads": 2})]
        res["bad"] = [make("TurboQuantEncode", {"use_qjl": 0}), make("TurboQuantDecode", {"output_dtype": 3}),
                      make("TurboQuantAttention", {"num_heads": 6, "kv_num_heads": 4})]
        return res

    kind = case.split(":", 1)[1]
    d = 64
    rot = codec.rotation(d, 0)
    prof: dict = {}
    if kind in ("encode", "x_not_d", "codebook_vs_bits", "uint8_rows_output"):
        bits = 3 if kind == "codebook_vs_bits" else 4
        cb = codec.codebook(d, 4)
        xd = 60 if kind == "x_not_d" else d
        rows_t = np.uint8 if kind == "uint8_rows_output" else np.int32
        attrs = dict(bits=bits) if kind == "uint8_rows_output" else dict(bits=bits, rows_dtype=6)
        model = Ops.model("TurboQuantEncode", {"x": (np.float16, ["n", xd]), "rotation": (np.float32, [d]),
                                               "codebook": (np.float32, [16])},
                          {"rows": (rows_t, None)}, attrs, {"rotation": rot, "codebook": cb})
        prof = {"x": ((1, xd), (8, xd), (64, xd))}
        expected = [["rows", [-1, 9 if rows_t == np.int32 else 36], str(trt.int32 if rows_t == np.int32 else trt.uint8)]]
    elif kind == "decode":
        cb = codec.codebook(d, 4)
        model = Ops.model("TurboQuantDecode", {"rows": (np.int32, ["a", "b", 9]), "rotation": (np.float32, [d]),
                                               "codebook": (np.float32, [16])},
                          {"x_hat": (np.float16, None)}, dict(output_dtype=10, rows_dtype=6),
                          {"rotation": rot, "codebook": cb})
        prof = {"rows": ((1, 1, 9), (2, 8, 9), (4, 64, 9))}
        expected = [["x_hat", [-1, -1, d], str(trt.float16)]]
    else:
        Hq, Hkv, kb = 4, 2, 4
        vb = 0 if kind == "attention_keys_only_ring" else 4
        # rows as int32 words (rows_dtype=6, last dim row_bytes/4) or int8 bytes (rows_dtype=3)
        W, wcode, wt = (np.int8, 3, trt.int8) if kind == "attention_int8_rows" else (np.int32, 6, trt.int32)
        Rk = codec.layout(d, kb, False, None).row_bytes // (1 if W == np.int8 else 4)
        kcb = codec.codebook(d, kb)
        inits = {"rotation": rot, "key_codebook": kcb}
        T = np.float16
        ins = {"query": (T, ["B", "S", Hq * d]), "key": (T, ["B", "S", Hkv * d]), "value": (T, ["B", "S", Hkv * d]),
               "past_key": (W, ["B", Hkv, "P", Rk + (1 if kind == "past_key_width" else 0)]),
               "past_value": (W, ["B", Hkv, "P", Rk]) if vb else (T, ["B", Hkv, "P", d]),
               "seqlens_k": (np.int32, ["B"]), "total_sequence_length": (np.int32, []),
               "rotation": (np.float32, [d]), "key_codebook": (np.float32, [16])}
        attrs = dict(num_heads=Hq, kv_num_heads=Hkv, key_bits=kb, value_bits=vb, rows_dtype=wcode)
        # keys-only: value_codebook is a middle input left out: an empty tensor (TensorRT rejects "")
        ins["value_codebook"] = (np.float32, [16 if vb else 0])
        inits["value_codebook"] = codec.codebook(d, vb) if vb else np.zeros([0], np.float32)
        pv_last = Rk if vb else d
        pv_t = str(wt) if vb else str(trt.float16)
        expected = [["output", [-1, -1, Hq * d], str(trt.float16)], ["present_key", [-1, Hkv, -1, Rk], str(wt)],
                    ["present_value", [-1, Hkv, -1, pv_last], pv_t]]
        outs = {"output": (T, None), "present_key": (W, None), "present_value": (W if vb else T, None)}
        if kind == "attention_shared_buffer":
            attrs["shared_buffer"] = 1
            for e in expected[1:]:
                e[1][2] = -1
        if kind == "attention_shape_input":
            ins["total_sequence_length"] = (np.int32, [1])
            attrs["tensorrt_plugin_shape_input_indices"] = [6]
        if kind == "middle_input_omitted":  # qjl_matrix "" between value_codebook and cos_cache
            ins.update({"qjl_matrix": None, "cos_cache": (T, [256, d // 2]), "sin_cache": (T, [256, d // 2])})
            attrs["do_rotary"] = 1
        if kind == "attention_rotary_empty_qjl":  # the way to leave out a middle input: an empty tensor
            ins.update({"qjl_matrix": (np.float32, [0]), "cos_cache": (T, [256, d // 2]), "sin_cache": (T, [256, d // 2])})
            inits["qjl_matrix"] = np.zeros([0], np.float32)
            attrs["do_rotary"] = 1
        if kind == "attention_keys_only_ring":
            ins.update({"qjl_matrix": (np.float32, [0]), "cos_cache": (T, [0]), "sin_cache": (T, [0]),
                        "past_key_recent": (T, ["B", Hkv, 4, d])})
            inits.update({"qjl_matrix": np.zeros([0], np.float32), "cos_cache": np.zeros([0], T),
                          "sin_cache": np.zeros([0], T)})
            attrs["recent_window"] = 4
            outs["present_key_recent"] = (T, None)
            expected.append(["present_key_recent", [-1, Hkv, 4, d], str(trt.float16)])
        model = Ops.model("TurboQuantAttention", ins, outs, attrs, inits)
        prof = {n: ((1, 1, w), (2, 1, w), (2, 16, w)) for n, w in (("query", Hq * d), ("key", Hkv * d), ("value", Hkv * d))}
        prof["past_key"] = ((1, Hkv, 0, Rk), (2, Hkv, 100, Rk), (2, Hkv, 256, Rk))
        prof["past_value"] = ((1, Hkv, 0, pv_last), (2, Hkv, 100, pv_last), (2, Hkv, 256, pv_last))
        prof["seqlens_k"] = ((1,), (2,), (2,))
        if "past_key_recent" in ins:
            prof["past_key_recent"] = ((1, Hkv, 4, d), (2, Hkv, 4, d), (2, Hkv, 4, d))
    net = builder.create_network(0)
    parser = trt.OnnxParser(net, logger)
    res["parsed"] = bool(parser.parse(model.SerializeToString()))
    res["messages"] += [parser.get_error(i).desc() for i in range(parser.num_errors)]
    if not res["parsed"]:
        return res
    res["outputs"] = [[net.get_output(i).name, list(net.get_output(i).shape), str(net.get_output(i).dtype)]
                      for i in range(net.num_outputs)]
    res["expected"] = expected
    cfg = builder.create_builder_config()
    p = builder.create_optimization_profile()
    names = [net.get_input(i).name for i in range(net.num_inputs)]
    for n, (lo, opt, hi) in prof.items():
        p.set_shape(n, lo, opt, hi)
    if "total_sequence_length" in names and net.get_input(names.index("total_sequence_length")).is_shape_tensor:
        p.set_shape_input("total_sequence_length", [1], [101], [272])
    cfg.add_optimization_profile(p)
    if kind == "attention_shared_buffer":  # getAliasedInput is only asked with this preview feature
        cfg.set_preview_feature(trt.PreviewFeature.ALIASED_PLUGIN_IO_10_03, True)
    eng = builder.build_serialized_network(net, cfg)
    res["engine_bytes"] = 0 if eng is None else int(eng.nbytes)
    res["enqueues"] = int(c.tqTrtPluginEnqueueCount())
    return res


if __name__ == "__main__":
    out = _worker(sys.argv[1], sys.argv[2])
    print(json.dumps(out, default=str))
