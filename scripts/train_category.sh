#!/usr/bin/env bash
# `make train CATEGORY=<category>`: the recipe of the shipped models (models/<category>.md), on CPU.
#   scripts/train_category.sh <category> [steps=1000] [out=out/<category>]
# 1. the synthetic train split: 48 videos x 20-30 frames, 320x240, seed 1 (~40 s; kept when already there);
#    VIDEOS=N generates N videos into data/train_<N>v instead (the first 48 are the same videos, the rest new shapes);
#    SHAPES=wide draws the shapes from the real-world ranges (`generate --shapes wide`) into <data dir>_wide;
# 2. synthetic-GT pre-training of the `small` config, 8 images a step (2 videos x 4 frames), AdamW OneCycle;
#    texture, rotation-cycle, cross-time cycle, symmetry and Laplacian losses off to fit a 2-core CPU
#    (~11 min for 1,000 steps there); checkpoints every 250 steps, the last in <out>/pretrain/last.pt;
# 3. export: <out>/export/<category>.onnx, verified against torch, weights stored as float16.
# Environment:
#   INIT=models/<category>.onnx  continue from an exported model's weights (cse_train.adapt.model_from_onnx)
#                                instead of from scratch: how the longer-trained cards were made
#   LR (5e-4, or 2.5e-4 with INIT), SEED (0, or 1 with INIT), VERSION (the export's version string)
#   RESUME=1                     continue an interrupted run from <out>/pretrain/last.pt (same STEPS)
#   THREADS (1)                  torch intra-op threads (`train --threads`): 1 degrades gently when another
#                                job shares the cores (2 fell to ~0.7 images/s beside a busy process, 1 kept ~8);
#                                0 = one per core, faster on an otherwise idle machine
# Copy the ONNX into models/ yourself after `make eval` says it is better than what ships.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CATEGORY=${1:?usage: $0 <bottle|bowl|camera|can|laptop|mug> [steps] [out]}
STEPS=${2:-1000}
OUT=${3:-out/$CATEGORY}
INIT=${INIT:-}
if [ -n "$INIT" ]; then LR=${LR:-2.5e-4}; SEED=${SEED:-1}; else LR=${LR:-5e-4}; SEED=${SEED:-0}; fi
VERSION=${VERSION:-$CATEGORY-small-sgt-$STEPS-fp16-$(date +%F)}
VIDEOS=${VIDEOS:-48}
SHAPES=${SHAPES:-band}
if [ "$VIDEOS" = 48 ]; then DATA=data/train; else DATA=data/train_${VIDEOS}v; fi
if [ "$SHAPES" != band ]; then DATA=${DATA}_$SHAPES; fi
if [ ! -f "$DATA/${CATEGORY}_list_all.txt" ]; then
    "$PY" -m cse_train generate --out "$DATA" --category "$CATEGORY" --split train --videos "$VIDEOS" --frames 20 30 \
        --width 320 --height 240 --seed 1 --workers 2 --shapes "$SHAPES"
fi
START=()
if [ "${RESUME:-0}" = 1 ] && [ -f "$OUT/pretrain/last.pt" ]; then
    START=(--resume "$OUT/pretrain/last.pt")
elif [ -n "$INIT" ]; then
    mkdir -p "$OUT"
    "$PY" -c "import sys; from cse_train.adapt import model_from_onnx; from cse_train.model import save_checkpoint; \
save_checkpoint(sys.argv[2], model_from_onnx(sys.argv[1]))" "$INIT" "$OUT/init.pt"
    START=(--init-checkpoint "$OUT/init.pt")
fi
"$PY" -m cse_train train --category "$CATEGORY" --data "$DATA/$CATEGORY" --out-dir "$OUT/pretrain" \
    --model small --steps "$STEPS" --lr "$LR" --videos-per-batch 2 --frames-per-video 4 --supervision synthetic-gt \
    --disable texture rotation_cycle cross_cycle symmetry laplacian --seed "$SEED" --no-progress \
    --checkpoint-every 250 --threads "${THREADS:-1}" "${START[@]}"
"$PY" -m cse_train export --checkpoint "$OUT/pretrain/last.pt" --out-dir "$OUT/export" --fp16-weights --no-torchscript \
    --version "$VERSION" \
    --training-data "synthetic RGB-D videos (cse_train.data.synthetic, $CATEGORY, train split: $VIDEOS videos x 20-30 frames, 320x240, $SHAPES shapes), synthetic-GT pre-training, $STEPS steps x 8 images${INIT:+ continued from $INIT}, small config"
echo "model: $OUT/export/$CATEGORY.onnx"
