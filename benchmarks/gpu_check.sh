#!/usr/bin/env bash
# Everything GPU-specific in one command (issue 12), under 5 minutes on one H100; results under OUT_DIR.
#
#     bash benchmarks/gpu_check.sh WHEELS_DIR OUT_DIR
#
# WHEELS_DIR: a folder of wheels for what the GPU machine may lack (diffusers, kornia, kornia_rs, jsonargparse,
# docstring_parser, typeshed_client, importlib_metadata, lazy-importer; PyTorch and Lightning must be there).
# Only packages that do not import are installed, with pip --no-index into OUT_DIR/site; the package runs from
# src/ on PYTHONPATH (nothing is installed into the machine's environment).
#
# Steps (each has its own time limit, so one that hangs cannot eat the others' time):
#   1. environment: GPU, torch, versions                          -> OUT_DIR/env.txt
#   2. fast paths on the GPU: first-step features/loss, bf16 + channels-last (+ compile) vs fp32
#                                                                  -> OUT_DIR/fast_paths.json
#   3. side-by-side step: reference eager fp32 vs repfusion default vs fast (bf16 + channels-last)
#                                                                  -> OUT_DIR/distill_speed.{json,md}
#   4. real loops (teacher, distill, finetune) against the bare step, profiler breakdown, peak memory
#                                                                  -> OUT_DIR/loop_speed.{json,md}
#   5. 2-epoch distill + finetune smoke run through the command line -> OUT_DIR/smoke/
#   6. projection of the paper's CIFAR-10 protocol (200 + 200 epochs on 50,000 images) from timed whole
#      epochs on data tiled to 50,000 images                      -> OUT_DIR/projection.{json,md}
#   7. the fast step with torch.compile of the student (last: it may take minutes)
#                                                                  -> OUT_DIR/distill_speed_compile.{json,md}
# A summary of what passed is printed at the end and written to OUT_DIR/summary.txt.
# DRY_RUN=1 runs every step on the CPU at toy sizes (to check the script where there is no GPU).
set -u -o pipefail

if [ $# -ne 2 ]; then
    echo "usage: bash benchmarks/gpu_check.sh WHEELS_DIR OUT_DIR" >&2
    exit 2
fi
WHEELS=$(cd "$1" && pwd) || { echo "error: wheel folder $1 does not exist" >&2; exit 2; }
mkdir -p "$2" && OUT=$(cd "$2" && pwd) || { echo "error: cannot create $2" >&2; exit 2; }
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python}
DRY=${DRY_RUN:-0}
SCALE=1  # time limits are for an H100; a dry run on a busy CPU gets SCALE times more
[ "$DRY" = 1 ] && SCALE=${DRY_SCALE:-6}
SITE="$OUT/site"
export PYTHONPATH="$ROOT/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
START=$(date +%s)

note() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$SUMMARY"; }

step() {  # step NAME LIMIT_S command...: run with a time limit, log to OUT/NAME.log, record pass/fail
    local name=$1 limit=$(( $2 * SCALE ))
    shift 2
    local t0=$(date +%s)
    timeout --signal=INT --kill-after=20 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    if [ $rc -eq 0 ]; then note "PASS $name ($(( $(date +%s) - t0 ))s)"; else note "FAIL $name (exit $rc, see $name.log)"; fi
    return 0
}

# 1. what is missing, from the wheel folder only
missing=()
for pair in diffusers:diffusers kornia:kornia kornia_rs:kornia-rs jsonargparse:jsonargparse \
            docstring_parser:docstring-parser typeshed_client:typeshed-client importlib_metadata:importlib-metadata \
            lazy_importer:lazy-importer huggingface_hub:huggingface-hub safetensors:safetensors; do
    module=${pair%%:*}
    package=${pair#*:}
    "$PY" -c "import $module" 2>/dev/null || missing+=("$package")
done
# one at a time and without dependencies: pip --target would otherwise reinstall torch & co. from the folder
for package in ${missing[@]+"${missing[@]}"}; do
    "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" --target "$SITE" --no-deps "$package" \
        >> "$OUT/pip.log" 2>&1 && note "installed $package from $WHEELS" || note "FAIL pip install $package (pip.log)"
done
"$PY" - > "$OUT/env.txt" 2>&1 <<'EOF'
import platform, torch, lightning, diffusers, kornia
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "lightning", lightning.__version__, "diffusers", diffusers.__version__, "kornia", kornia.__version__)
print("gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None,
      "bf16", torch.cuda.is_available() and torch.cuda.is_bf16_supported())
import repfusion, repfusion.cli
print("repfusion from", repfusion.__file__)
EOF
if [ $? -ne 0 ]; then note "FAIL environment (see env.txt)"; cat "$OUT/env.txt"; exit 1; fi
note "environment: $(head -2 "$OUT/env.txt" | tr '\n' ' ')"

if [ "$DRY" = 1 ]; then
    DEV=cpu; TEACHER=small-32; UNET=tiny-16; WIDTH=0.125; BATCH=8; BATCHES=2; BARE=2; EPOCHS=3; STEPS=2
    PROJ_IMAGES=256; PROJ_TEST=64; SMOKE_IMAGES=64
else
    DEV=cuda; TEACHER=ddpm-cifar10-32; UNET=ddpm-cifar10-32-half; WIDTH=1.0; BATCH=128; BATCHES=60; BARE=30
    EPOCHS=3; STEPS=20; PROJ_IMAGES=50000; PROJ_TEST=10000; SMOKE_IMAGES=2048
fi

# 2. the fast paths give the plain path's first step on this GPU (the CPU tests check this on a CPU)
step fast_paths 240 "$PY" - "$OUT/fast_paths.json" "$DEV" "$TEACHER" "$WIDTH" "$BATCH" <<'EOF'
import json, sys, time, torch
from repfusion.data import DataConfig
from repfusion.distill.run import DistillRun, StudentSection, TeacherSection, build_distillation
from repfusion.fastpath import FastPaths, apply_fast_paths, autocast_context
out, device, teacher, width, batch = sys.argv[1], torch.device(sys.argv[2]), sys.argv[3], float(sys.argv[4]), int(sys.argv[5])

class Shape:
    config = DataConfig()
    num_classes = 10
    train_set = None  # class-labelled images (no dense targets)
    def sample_shape(self):
        return (3, 32, 32)

torch.manual_seed(0)
images, labels = torch.rand(batch, 3, 32, 32, device=device), torch.randint(0, 10, (batch,), device=device)
results = {}
for name, fast in {"fp32": FastPaths("32-true", False, False), "bf16+channels_last": FastPaths("bf16-mixed", True, False),
                   "fp32+compile": FastPaths("32-true", False, True)}.items():
    torch.manual_seed(0)
    module = build_distillation(DistillRun(teacher=TeacherSection(source=teacher),
                                           student=StudentSection("resnet18_cifar", width)), Shape())
    module.to(device).train()
    apply_fast_paths(module, fast)
    t0 = time.perf_counter()
    with autocast_context(fast, device):
        torch.manual_seed(1)
        feature = module.teacher_features(images, torch.full((batch,), 10, device=device)).float()
        student = module.student_features(module.normalize(images)).float()
        torch.manual_seed(1)
        loss = float(module.training_step((images, labels), 0))
    results[name] = {"feature": feature, "student": student, "loss": loss, "first_call_s": time.perf_counter() - t0}
ref = results["fp32"]
rel = lambda a, b: float((a - b).norm() / b.norm())
report = {name: {"teacher_rel": rel(r["feature"], ref["feature"]), "student_rel": rel(r["student"], ref["student"]),
                 "loss": r["loss"], "loss_rel": abs(r["loss"] - ref["loss"]) / abs(ref["loss"]),
                 "first_call_s": r["first_call_s"]} for name, r in results.items()}
json.dump(report, open(out, "w"), indent=1)
print(json.dumps(report, indent=1))
ok = report["bf16+channels_last"]["loss_rel"] < 5e-2 and report["fp32+compile"]["loss_rel"] < 1e-3
sys.exit(0 if ok else 1)
EOF

# 3. side-by-side step: reference eager fp32, repfusion default, repfusion bf16 + channels-last
step distill_speed 200 "$PY" benchmarks/distill_speed.py --device "$DEV" --teacher "$TEACHER" --width "$WIDTH" \
    --batch "$BATCH" --steps "$STEPS" --warmup 3 --rounds 2 --out "$OUT"

# 4. real loops against the bare step, with the profiler breakdown and peak GPU memory
step loop_speed 240 "$PY" benchmarks/loop_speed.py --device "$DEV" --teacher "$TEACHER" --unet "$UNET" \
    --width "$WIDTH" --batch "$BATCH" --batches "$BATCHES" --bare-steps "$BARE" --epochs "$EPOCHS" --rounds 2 \
    --no-progress --out "$OUT"

# 5. 2-epoch distill + finetune through the command line, on a small tiled CIFAR folder
SMOKE="$OUT/smoke"
rm -rf "$SMOKE"
mkdir -p "$SMOKE"
"$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; import loop_speed as l; \
l.write_cifar_folder(l.SUBSET if l.SUBSET.is_dir() else None, Path('$SMOKE/cifar-10-batches-py'), $SMOKE_IMAGES, 512)"
step smoke_distill 120 "$PY" -m repfusion.cli distill --run-dir "$SMOKE/distill" --teacher.source "$TEACHER" \
    --student.width "$WIDTH" --data.source cifar --data.root "$SMOKE/cifar-10-batches-py" --data.batch_size "$BATCH" \
    --trainer.max_epochs 2 --trainer.progress false
step smoke_finetune 120 "$PY" -m repfusion.cli finetune --run-dir "$SMOKE/finetune" --init "$SMOKE/distill" \
    --data.source cifar --data.root "$SMOKE/cifar-10-batches-py" --data.batch_size "$BATCH" \
    --trainer.max_epochs 2 --trainer.progress false

# 6. projection of 200 + 200 epochs on 50,000 images from timed whole epochs (validation on 10,000 included)
step projection 240 "$PY" benchmarks/loop_speed.py --device "$DEV" --verbs distill finetune --teacher "$TEACHER" \
    --width "$WIDTH" --batch "$BATCH" --batches 0 --val-batches -1 --epochs 3 --rounds 1 --bare-steps "$BARE" \
    --train-images "$PROJ_IMAGES" --test-images "$PROJ_TEST" --project-epochs 200 --no-progress --out "$OUT" \
    --name projection

# 7. compile, last (minutes of start-up): the fast step with torch.compile of the student
step distill_speed_compile 200 "$PY" benchmarks/distill_speed.py --device "$DEV" --teacher "$TEACHER" \
    --width "$WIDTH" --batch "$BATCH" --steps "$STEPS" --warmup 3 --rounds 1 --arms repfusion-fast --compile \
    --out "$OUT" --name distill_speed_compile

note "done in $(( $(date +%s) - START ))s; results in $OUT"
for f in distill_speed loop_speed projection distill_speed_compile; do
    [ -f "$OUT/$f.md" ] && grep -E "^\| |Speed-up|Projection|Peak" "$OUT/$f.md" | head -12 | tee -a "$SUMMARY"
done
exit 0
