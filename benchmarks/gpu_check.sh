#!/usr/bin/env bash
# The GPU check in one call (device machine: PyTorch + transformers + accelerate, no network).
# Carry .whl (trl, datasets, dill, multiprocess, xxhash, vaderSentiment wheels; see the device
# README) and run from the repo root:  bash benchmarks/gpu_check.sh "$OUT"
set -uo pipefail
out=${1:-/tmp/gpu-check}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_bf16.py 2>&1 | tee "$out/gpu_tests.txt"
python3 benchmarks/step.py --device cuda --out "$out/step_cuda.json" 2>&1 | grep -v -i warn | tee "$out/step_cuda.txt"
# fp32 weights under bf16 autocast (accelerate mixed_precision bf16): the fused path must stay on
python3 benchmarks/step.py --device cuda --shapes llama3.2-1b --autocast --variants trl,plain,sam_auto,sam_chunked \
  --out "$out/step_cuda_autocast.json" 2>&1 | grep -v -i warn | tee "$out/step_cuda_autocast.txt"
# FSDP2 on one GPU (the module tree still sharded into units and gathered): fused vs full logits, bf16
# weights and fp32 weights under bf16 autocast
python3 -m torch.distributed.run --standalone --nproc_per_node 1 benchmarks/fsdp_memory.py --device cuda \
  --dtype bf16 --out "$out/fsdp_bf16.json" 2>&1 | grep -v -i warn | tee "$out/fsdp_bf16.txt"
python3 -m torch.distributed.run --standalone --nproc_per_node 1 benchmarks/fsdp_memory.py --device cuda \
  --autocast --out "$out/fsdp_autocast.json" 2>&1 | grep -v -i warn | tee "$out/fsdp_autocast.txt"
