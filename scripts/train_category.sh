#!/usr/bin/env bash
# `make train CATEGORY=<category>`: the recipe of the shipped models (models/<category>.md), on CPU.
#   scripts/train_category.sh <category> [steps=1000] [out=out/<category>]
# 1. the synthetic train split: 48 videos x 20-30 frames, 320x240, seed 1 (~40 s);
# 2. synthetic-GT pre-training of the `small` config, 8 images a step (2 videos x 4 frames), AdamW 5e-4
#    OneCycle, seed 0; texture, rotation-cycle, cross-time cycle, symmetry and Laplacian losses off to fit a
#    2-core CPU (~11 min for 1,000 steps there); the checkpoint goes to <out>/pretrain/last.pt;
# 3. export: <out>/export/<category>.onnx, verified against torch, weights stored as float16.
# Copy the ONNX into models/ yourself after `make eval` says it is better than what ships.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CATEGORY=${1:?usage: $0 <bottle|bowl|camera|can|laptop|mug> [steps] [out]}
STEPS=${2:-1000}
OUT=${3:-out/$CATEGORY}
"$PY" -m cse_train generate --out data/train --category "$CATEGORY" --split train --videos 48 --frames 20 30 \
    --width 320 --height 240 --seed 1 --workers 2
"$PY" -m cse_train train --category "$CATEGORY" --data "data/train/$CATEGORY" --out-dir "$OUT/pretrain" \
    --model small --steps "$STEPS" --lr 5e-4 --videos-per-batch 2 --frames-per-video 4 --supervision synthetic-gt \
    --disable texture rotation_cycle cross_cycle symmetry laplacian --seed 0 --no-progress
"$PY" -m cse_train export --checkpoint "$OUT/pretrain/last.pt" --out-dir "$OUT/export" --fp16-weights --no-torchscript \
    --version "$CATEGORY-small-sgt-$STEPS-fp16-$(date +%F)" \
    --training-data "synthetic RGB-D videos (cse_train.data.synthetic, $CATEGORY, train split: 48 videos x 20-30 frames, 320x240), synthetic-GT pre-training, $STEPS steps x 8 images, small config"
echo "model: $OUT/export/$CATEGORY.onnx"
