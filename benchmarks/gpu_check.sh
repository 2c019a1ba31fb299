#!/usr/bin/env bash
# One prepared run of every GPU check, for a machine with an NVIDIA GPU and a CUDA build of PyTorch
# (e.g. the lent H200, whose python3 holds torch, onnx, onnxruntime, numpy, scikit-learn, pyyaml,
# pillow, tqdm, pytest and hypothesis: quantbench runs there from src/ without being installed).
#
#   bash benchmarks/gpu_check.sh            # about 8 minutes on an H200 (every compiled graph takes 4-16 s);
#                                           # writes $OUT/gpu_check.log when OUT is set: give it 600 s
#
# 1. the GPU engines' tests (parity with FP32, CUDA-event timing, torch.compile compiling before timing,
#    ORT's CUDA provider where installed), which skip on a CPU machine;
# 2. benchmarks/gpu.py: eager vs compiled PyTorch at FP32 / TF32 / FP16 / BF16 (and ORT CUDA) on two models;
# 3. the user's door: `quantbench engines` and `quantbench bench` on the GPU engines beside the CPU one.
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
  "$PY" -m quantbench engines
  "$PY" -m quantbench bench --model resnet20 --engines torch,torch-cuda,torch-cuda-compile \
    --variants fp32,tf32,fp16,bf16 --batch-sizes 1,64 --min-time-s 0.3 --no-store --no-progress
} 2>&1 | tee "$log"
