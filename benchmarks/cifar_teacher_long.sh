#!/usr/bin/env bash
# A stronger CIFAR teacher on a CPU, a stage at a time (issue 23, item 4): each stage continues the last
# finished one (the first continues ../shared's cifar10-subset-ddpm-small, 2,500 steps) for STEPS more steps
# with `repfusion teacher` on the CIFAR-10 subset's training images outside the validation split (no labels),
# then probes it layer by layer against a random-weight teacher on the validation split
# (benchmarks/teacher_layers_cifar.py). A stage killed part-way resumes from its last checkpoint (every 100
# steps) the next time this runs; each invocation's steps and seconds are appended to the stage's timings.jsonl.
#   LOCK=/path/to/lock bash benchmarks/cifar_teacher_long.sh [STEPS]   # default 1500 steps a stage
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../shared/data/cifar10-subset
FIRST=../shared/teachers/cifar10-subset-ddpm-small
[ -d "$DATA" ] && [ -d "$FIRST" ] || { echo "skipped: $DATA or $FIRST is absent"; exit 0; }
STEPS=${1:-1500}
WORK=runs/cifar_teacher_long
LOCK=${LOCK:-$WORK.lock}
mkdir -p "$WORK" benchmarks/results
source_dir=$(realpath "$FIRST")
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
flock "$LOCK" repfusion teacher --teacher "$source_dir" --data.source cifar --data.root "$DATA" --data.batch_size 64 \
  --trainer.max_steps "$STEPS" --trainer.max_epochs -1 --trainer.checkpoint_every_n_steps 100 \
  --trainer.progress false --run-dir "$run" $resume || status=$?
after=$(step_of "$run/checkpoints/last.ckpt" 2>/dev/null || echo "$before")
printf '{"from_step": %s, "to_step": %s, "wall_s": %s, "batch": 64}\n' "$before" "$after" "$(( $(date +%s) - start ))" \
  >> "$run/timings.jsonl"
[ -z "${status:-}" ] || exit "$status"
printf '{"stage": %s, "steps": %s, "source": "%s"}\n' "$stage" "$STEPS" "${source_dir#"$PWD/"}" > "$run/stage.json"
flock "$LOCK" python benchmarks/teacher_layers_cifar.py --teacher "$run/teacher" --points clean:0 \
  --name "cifar_teacher_long_stage$stage"
cp "$run/samples.png" "benchmarks/results/cifar_teacher_long_stage${stage}_samples.png"
cp "$run/timings.jsonl" "benchmarks/results/cifar_teacher_long_stage${stage}_timings.jsonl"
echo "done: stage $stage"
