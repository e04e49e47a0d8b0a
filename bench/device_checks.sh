#!/usr/bin/env bash
# All checks that need the lent GPU machine, in one run (about 10 minutes): every test marked gpu, the GPU
# NMS benchmark (bench/nms_gpu.py), the model table's GPU columns (tools/benchmark.py models), then the CPU
# benchmarks on two pinned cores of that (otherwise idle) machine, so their ratios are not disturbed by
# other jobs.
# Usage on the device machine, from the repository root, with wheels for the packages its image lacks
# in .whl/ (pycocotools, shapely, defusedxml, faster-coco-eval): bash bench/device_checks.sh OUT_DIR
set -uo pipefail
out="${1:-/tmp/device_out}"
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
python3 -c "import triton; print('triton', triton.__version__)"
timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$out/gpu_tests.txt" | tail -25
timeout 120 python3 bench/nms_gpu.py --repeats 50 --markdown 2>&1 | tee "$out/nms_gpu.md"
timeout 150 python3 tools/benchmark.py models --names faster_rcnn_r50_fpn mask_rcnn_r50_fpn ssd300_vgg16 \
  ssdlite320_mobilenet_v3_large unet_resnet34 --device cuda --repeats 5 --csv "$out/model_table_gpu.csv" 2>&1 \
  | tee "$out/model_table_gpu.md"
pinned="env OMP_NUM_THREADS=2 taskset -c 0,1"
$pinned timeout 90 python3 bench/nms_cpu.py --repeats 9 --markdown 2>&1 | tee "$out/nms_cpu.md"
if [ -f bench/detector_speed.py ]; then
  $pinned timeout 150 python3 bench/detector_speed.py 2>&1 | tee "$out/detector_speed.txt" | tail -20
fi
