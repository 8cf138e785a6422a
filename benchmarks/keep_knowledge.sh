#!/usr/bin/env bash
# Issue 23: choose the fine-tuning protocol on the validation split (seeds 0-1), then run the chosen protocol on
# five seeds the project never used (100-104), every arm on this machine. Writes benchmarks/results/keep_select_*
# and keep_fresh.{json,md,png}.  Usage: LOCK=/path/to/lock bash benchmarks/keep_knowledge.sh (each training
# invocation takes the lock, so other work on a shared machine runs between them, never beside them).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-runs/keep_knowledge}
LOCK=${LOCK:-/tmp/repfusion-train.lock}
COMMON=(--distill-epochs 6 --fractions 0.1 --work "$WORK")
for protocol in plain lpft joint lpft-joint; do
  flock "$LOCK" python benchmarks/cifar_transfer.py "${COMMON[@]}" --seed-list 0 1 --arms ours ours-random \
    --protocol "$protocol" --name "keep_select_$protocol"
done
chosen=$(python - <<'PY'
import json, statistics
best = None
for protocol in ("plain", "lpft", "joint", "lpft-joint"):
    table = json.load(open(f"benchmarks/results/keep_select_{protocol}.json"))["finetune"]["0.1"]
    val = statistics.mean(table["ours"]["val_runs"])
    print(f"{protocol}: ours val top-1 {100 * val:.2f} %", file=__import__("sys").stderr)
    if best is None or val > best[0]:
        best = (val, protocol)
print(best[1])
PY
)
echo "chosen on validation: $chosen"
flock "$LOCK" python benchmarks/cifar_transfer.py "${COMMON[@]}" --seeds 5 --seed-offset 100 \
  --arms scratch scratch-equal ours ours-random --protocol "$chosen" --name keep_fresh
