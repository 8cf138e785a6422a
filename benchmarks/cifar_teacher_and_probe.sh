#!/usr/bin/env bash
# Train a teacher with `repfusion teacher` on the 5,085 CIFAR-10 subset training images (no labels) within a
# small CPU budget, then probe it and the off-the-shelf teacher of ../shared/teachers the same way.
#   bash benchmarks/cifar_teacher_and_probe.sh [EPOCHS]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../shared/data/cifar10-subset
SHARED_TEACHER=../shared/teachers/cifar10-subset-ddpm-small
[ -d "$DATA" ] || { echo "skipped: $DATA is absent"; exit 0; }
EPOCHS=${1:-3}
OUT=benchmarks/results/cifar_probe
WORK=runs/cifar_teacher
mkdir -p "$OUT"
start=$(date +%s)
if [ ! -d "$WORK/teacher" ]; then
  resume=""; [ -f "$WORK/checkpoints/last.ckpt" ] && resume="--resume"
  repfusion teacher --teacher small-32 --data.source cifar --data.root "$DATA" --data.batch_size 64 \
    --trainer.max_epochs "$EPOCHS" --trainer.ema_decay 0.995 --trainer.progress false --run-dir "$WORK" $resume
fi
teacher_s=$(( $(date +%s) - start ))
cp "$WORK/samples.png" "$OUT/own_teacher_samples.png"
steps=$(python -c "import torch; print(torch.load('$WORK/checkpoints/last.ckpt', weights_only=True)['global_step'])")
printf '{"epochs": %s, "steps": %s, "wall_s": %s, "batch": 64}\n' "$EPOCHS" "$steps" "$teacher_s" > "$OUT/own_teacher_training.json"
T="0 50 100 200 400 700"
repfusion probe --teacher "$WORK/teacher" --data cifar --root "$DATA" --timesteps $T --out "$OUT/own_teacher"
[ -d "$SHARED_TEACHER" ] && repfusion probe --teacher "$SHARED_TEACHER" --data cifar --root "$DATA" --timesteps $T \
  --out "$OUT/shared_teacher"
echo "done"
