#!/usr/bin/env bash
# The GPU measurements in benchmarks/results/*-gpu*, as run on a lent GPU machine that has PyTorch but
# no package index: onnxruntime-gpu, the GeoTIFF stack, onnxsim and Polygraphy arrive as wheel
# chunks (../shared/tools/gpu-wheels) unpacked into /tmp/site; this checkout is imported as clay.*
# without installing. Usage there: bash benchmarks/gpu-session.sh OUTDIR [SIZE]
set -uo pipefail
out=${1:?output folder}; size=${2:-small}
export PYTHONUNBUFFERED=1
mkdir -p "$out"; exec > >(tee "$out/gpu-session.log") 2>&1
if [ ! -d /tmp/site ]; then
  cat /tmp/acc/part.* > /tmp/pack.tar.xz && python3 -c "import tarfile; tarfile.open('/tmp/pack.tar.xz').extractall('/tmp')" || exit 1
fi
mkdir -p /tmp/pkg/clay && for d in runtime training export benchmarks; do ln -sfn "$PWD/$d" "/tmp/pkg/clay/$d"; done
export PYTHONPATH=/tmp/pkg:/tmp/site
step() { echo "=== $(date +%T) $*"; }
step machine
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; lscpu | grep -E "^Model name|^Thread|^Core|^Socket"
python3 -c "import onnxruntime as o, torch; print('onnxruntime', o.__version__, o.get_available_providers(), 'torch', torch.__version__)"

step "export $size (random weights): clay.onnx, clay.fp16.onnx, clay.cuda.onnx"
python3 -m clay.export.cli --random-weights --size "$size" --fp16 --no-check --out "/tmp/$size" 2>&1 | tail -8

step "reads, engine alone (new artifact and clay.fp16.onnx), end to end"
python3 -m clay.benchmarks.throughput --engine "/tmp/$size/clay.cuda.onnx" --engine "/tmp/$size/clay.fp16.onnx" \
  --backend onnx-cuda --generate 8192x4096 --copies 4 \
  --threads 1 --threads 4 --threads 8 --threads 16 --batch 1 --batch 16 --readers 2 --readers 8 --readers 16 \
  --out "$out" 2>&1 | grep -v Warning

step "clay-bench: compiled PyTorch fp16 vs the ONNX Runtime CUDA artifact"
python3 -m clay.benchmarks.cli --size "$size" --batch 1 --batch 16 --repeats 3 \
  --backends compiled-fp16-sdpa,onnx-cuda-fp16 --engines "/tmp/$size" --out "$out" 2>&1 | grep -v Warning | tail -30

step "GPU tests of the ONNX Runtime CUDA path"
python3 -m pytest -q -p no:cacheprovider tests/test_gpu_onnx.py 2>&1 | tail -5
step done
