#!/bin/sh
# The 7-CNN dynamic-range study on YOUR devices (Raspberry Pi, Jetson, a cloud CPU) - one command here:
#
#   sh examples/dynamic_range_bundles.sh bundles        # seven bundles: FP32, dynamic range, static INT8
#
# Each bundle (bundles/MODEL/ and bundles/MODEL.zip) holds the model as ONNX (fp32, ONNX Runtime's dynamic,
# int8 with quantbench's scales) and, where litert-torch is installed here, as .tflite (fp32, LiteRT
# dynamic range - the study's method - and int8), sample inputs with their expected outputs, and
# run_bundle.py, which needs only numpy + onnxruntime (and ai-edge-litert or tflite-runtime for .tflite).
# Weights are random and int8 is calibrated on seeded random images: timing only, as in the study's speed
# table. Then, on each device (copy the .zip files over, unzip):
#
#   for b in */; do (cd "$b" && python3 run_bundle.py --device raspberry-pi-4b --out "../${b%/}.json"); done
#
# and back here:  for f in *.json; do quantbench import "$f"; done     # reports beside this machine's
set -e
out=${1:-bundles}
mkdir -p "$out"
while read -r model extra; do
  # shellcheck disable=SC2086  # $extra holds flags
  quantbench bundle --model "$model" $extra --variants fp32,dynamic,int8 --calib random --batch-sizes 1,8 \
      --out "$out/$model" --no-progress
done <<'MODELS'
resnet18
resnet50
resnet101
vgg16
mobilenet_v2
phinet --input-shape 3x224x224 --num-classes 1000
resnet20
MODELS
