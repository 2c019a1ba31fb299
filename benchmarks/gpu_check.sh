#!/usr/bin/env bash
# One prepared run of every GPU check, for a machine with an NVIDIA GPU and a CUDA build of PyTorch
# (e.g. the lent H200, whose python3 holds torch, onnx, onnxruntime, numpy, scikit-learn, pyyaml,
# pillow, tqdm, pytest and hypothesis: quantbench runs there from src/ without being installed).
#
#   bash benchmarks/gpu_check.sh            # about 3-5 minutes; writes $OUT/gpu_check.log when OUT is set
#
# 1. the GPU engines' tests (parity with FP32, CUDA-event timing, torch.compile compiling before timing,
#    ORT's CUDA provider where installed), which skip on a CPU machine;
# 2. benchmarks/gpu.py: eager vs compiled PyTorch at FP32 / TF32 / FP16 / BF16 (and ORT CUDA) on two models.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
log="${OUT:-/tmp}/gpu_check.log"
PY="${PYTHON:-python3}"   # PYTHON=.venv/bin/python here
{
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
  "$PY" -m pytest -q -p no:cacheprovider -o addopts="" tests/unit/test_engines_cuda.py \
    tests/contracts/test_engines.py -k "cuda" -rs
  "$PY" benchmarks/gpu.py --models resnet18,resnet50 --batch-sizes 1,32,128 --min-time 0.5
} 2>&1 | tee "$log"
