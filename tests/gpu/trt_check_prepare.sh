#!/usr/bin/env bash
# CPU machine: the artifacts of tests/gpu/trt_check.py under DIR (default build/c2-gpu).
# Needs the dev venv ([export,test,tensorrt]) and the TensorRT plugin library (TQ_TRT_PLUGINS or installed).
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR="${1:-build/c2-gpu}"
rm -rf "$DIR" && mkdir -p "$DIR"
python - "$DIR" <<'PY'
import shutil, sys
from pathlib import Path
sys.path.insert(0, "tests")
from tiny_exports import rewritten_folder, tiny_export
d = Path(sys.argv[1])
src = tiny_export("llama")
shutil.copytree(src.parent, d / "orig")
rewritten_folder(d / "tmp", "llama").rename(d / "tq")
shutil.rmtree(d / "tmp")
(d / "tq" / "model.onnx.original.json").unlink()  # the GPU machine's paths differ: trt_check.py passes --original
from tq_ort.trt.runtime import plugin_library_path
shutil.copy2(plugin_library_path(), d / "libtq_trt_plugins.so")
PY
tq-ort trt-build "$DIR/tq" -o "$DIR/tq.plan" --max-context 64 --quiet
tq-ort trt-build "$DIR/tq" -o "$DIR/tq-concat.plan" --max-context 64 --concat --quiet
ls -la "$DIR"
