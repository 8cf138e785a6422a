#!/usr/bin/env bash
# A stronger CIFAR teacher on a CPU, a stage at a time (issue 23, item 4): each stage continues the last
# finished one (the first continues ../shared's cifar10-subset-ddpm-small, 2,500 steps) for STEPS more steps
# with `repfusion teacher` on the CIFAR-10 subset's training images outside the validation split (no labels),
# then probes it layer by layer against a random-weight teacher on the validation split
# (benchmarks/teacher_layers_cifar.py). A stage killed part-way resumes from its last checkpoint (every 100
# steps) the next time this runs; each invocation's steps and seconds are appended to the stage's timings.jsonl.
#   LOCK=/path/to/lock bash benchmarks/cifar_teacher_long.sh [STEPS]   # default 1500 steps a stage
# FIRST=medium-32 WORK=runs/cifar_teacher_medium starts stage 1 from a preset's random weights instead (a larger
# UNet, 6.5 M parameters, about 3.2 s a step here: a from-scratch teacher spread over sessions); MAX_S=SECONDS
# stops the training after that long (SIGKILL; the next invocation resumes the stage from its last checkpoint).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../shared/data/cifar10-subset
FIRST=${FIRST:-../shared/teachers/cifar10-subset-ddpm-small}
is_preset=$(python -c "import sys; from repfusion.teachers import TEACHER_PRESETS as P; print(int(sys.argv[1] in P))" "$FIRST")
[ -d "$DATA" ] && { [ "$is_preset" = 1 ] || [ -d "$FIRST" ]; } || { echo "skipped: $DATA or $FIRST is absent"; exit 0; }
STEPS=${1:-1500}
WORK=${WORK:-runs/cifar_teacher_long}
NAME=$(basename "$WORK")  # result files benchmarks/results/NAME_stageN*
LOCK=${LOCK:-$WORK.lock}
mkdir -p "$WORK" benchmarks/results
if [ "$is_preset" = 1 ]; then source_dir=$FIRST; else source_dir=$(realpath "$FIRST"); fi
stage=1
while [ -f "$WORK/stage$stage/teacher/config.json" ]; do
  source_dir=$(realpath "$WORK/stage$stage/teacher"); stage=$((stage + 1))
done
run="$WORK/stage$stage"
resume=""; [ -f "$run/checkpoints/last.ckpt" ] && resume="--resume"
step_of() { python -c "import torch,sys; print(torch.load(sys.argv[1], weights_only=True)['global_step'])" "$1"; }
before=0; [ -n "$resume" ] && before=$(step_of "$run/checkpoints/last.ckpt")
echo "stage $stage: $STEPS steps from $source_dir (${before} done)"
start=$(date +%s)
limit=""; [ -n "${MAX_S:-}" ] && limit="timeout -s KILL $MAX_S"
flock "$LOCK" $limit repfusion teacher --teacher "$source_dir" --data.source cifar --data.root "$DATA" --data.batch_size 64 \
  --trainer.max_steps "$STEPS" --trainer.max_epochs -1 --trainer.checkpoint_every_n_steps 100 \
  --trainer.progress false --run-dir "$run" $resume || status=$?
after=$(step_of "$run/checkpoints/last.ckpt" 2>/dev/null || echo "$before")
printf '{"from_step": %s, "to_step": %s, "wall_s": %s, "batch": 64}\n' "$before" "$after" "$(( $(date +%s) - start ))" \
  >> "$run/timings.jsonl"
[ -z "${status:-}" ] || exit "$status"
printf '{"stage": %s, "steps": %s, "source": "%s"}\n' "$stage" "$STEPS" "${source_dir#"$PWD/"}" > "$run/stage.json"
flock "$LOCK" python benchmarks/teacher_layers_cifar.py --teacher "$run/teacher" --points clean:0 \
  --name "${NAME}_stage$stage"
cp "$run/samples.png" "benchmarks/results/${NAME}_stage${stage}_samples.png"
cp "$run/timings.jsonl" "benchmarks/results/${NAME}_stage${stage}_timings.jsonl"
echo "done: stage $stage"
