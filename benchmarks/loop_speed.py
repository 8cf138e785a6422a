"""Steady-state throughput of the real training loops (`repfusion teacher`, `distill`, `finetune`, run through
the same functions the verbs call) beside the bare step of the same configuration, with Lightning's
per-hook breakdown.

- real loop: `train_teacher` / `run_distillation` / `run_finetune` on a CIFAR-format folder, the whole Trainer
  (data loader, on-device augmentation, EMA, NaN guard, logging, progress bar, checkpoints). Timed by a
  Lightning profiler passed as `trainer.extra.profiler` (a key the config accepts): images/s is the training
  part of every epoch after the first (from the epoch's start to its last training batch; validation and
  the epoch-end checkpoint are reported apart, as `epoch_s`).
- bare step: the same LightningModule, built by the same builder, driven by hand on one batch already on
  the device: training_step, zero_grad, backward, optimizer.step (no loader, augmentation, hooks or logs).

The two are paired in time, because a shared machine's speed drifts within minutes: before every timed
epoch the bare step runs `--bare-steps` times in the same process, and each epoch's ratio is its loop
images/s over the bare images/s measured just before it; medians over epochs and rounds.

    python benchmarks/loop_speed.py --device cpu      # writes benchmarks/results/loop_speed.{json,md}
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import pickle
import platform
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.profilers import Profiler

ROOT = Path(__file__).resolve().parents[1]
SUBSET = ROOT.parent / "shared" / "data" / "cifar10-subset" / "cifar-10-batches-py"
VERBS = ("teacher", "distill", "finetune")
# The 8.95 M-parameter UNet of issue 12: google/ddpm-cifar10-32's architecture at half width.
HALF_WIDTH_UNET = "ddpm-cifar10-32-half"


class LoopTimer(Profiler):
    """A profiler that keeps every action's duration per epoch and the training part of each epoch.

    The training part runs from the epoch's start to the first validation action (or the epoch loop's end);
    on CUDA both ends synchronise, so queued kernels are counted where they belong.
    """

    def __init__(self, device: str, bare: Callable[[], float] | None = None, bare_steps: int = 0) -> None:
        super().__init__()
        self.cuda = device == "cuda"
        self.bare, self.bare_steps = bare, bare_steps
        self.bare_s: dict[int, list[float]] = {}  # bare step times measured just before each epoch
        self.epoch = -1
        self.open: dict[str, float] = {}
        self.durations: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.train_s: dict[int, float] = {}
        self.epoch_start: dict[int, float] = {}
        self.batches: dict[int, int] = defaultdict(int)
        self._train_open = False

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _close_train(self) -> None:
        if self._train_open:
            self.train_s[self.epoch] = self._now() - self.epoch_start[self.epoch]
            self._train_open = False

    def start(self, action_name: str) -> None:
        if action_name == "run_training_epoch":
            self.epoch += 1
            if self.bare is not None and self.epoch >= 1:  # paired with this epoch, outside its timing
                rng = torch.get_rng_state()  # the run's own random stream stays as it was
                self.bare_s[self.epoch] = [self.bare() for _ in range(self.bare_steps)]
                torch.set_rng_state(rng)
            self.epoch_start[self.epoch] = self._now()
            self._train_open = True
        elif self._train_open and "validation" in action_name:
            self._close_train()
        self.open[action_name] = time.perf_counter()

    def stop(self, action_name: str) -> None:
        begun = self.open.pop(action_name, None)
        if begun is None:
            return
        if action_name == "run_training_epoch":
            self._close_train()
        if action_name == "run_training_batch":
            self.batches[self.epoch] += 1
        if self.epoch >= 0:
            self.durations[self.epoch][action_name].append(time.perf_counter() - begun)

    def summary(self) -> str:
        return ""

    def describe(self) -> None:  # no summary printed at teardown
        pass


def write_cifar_folder(source: Path | None, out: Path, train_images: int, test_images: int, seed: int = 0) -> Path:
    """A CIFAR-10 python-format folder with `train_images` images tiled from `source` (random pixels without it)."""
    rng = np.random.default_rng(seed)
    if source is not None and source.is_dir():
        data, labels = [], []
        for i in range(1, 6):
            with open(source / f"data_batch_{i}", "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            data.append(np.asarray(batch[b"data"], dtype=np.uint8))
            labels += list(batch[b"labels"])
        pool, pool_labels = np.concatenate(data), np.asarray(labels)
    else:
        pool = rng.integers(0, 256, size=(1000, 3072), dtype=np.uint8)
        pool_labels = rng.integers(0, 10, size=1000)
    out.mkdir(parents=True, exist_ok=True)
    per = -(-train_images // 5)
    for i in range(5):
        idx = np.arange(i * per, min(train_images, (i + 1) * per)) % len(pool)
        payload = {b"data": pool[idx], b"labels": [int(v) for v in pool_labels[idx]], b"batch_label": b"tiled"}
        (out / f"data_batch_{i + 1}").write_bytes(pickle.dumps(payload, protocol=2))
    idx = np.arange(test_images) % len(pool)
    (out / "test_batch").write_bytes(pickle.dumps({b"data": pool[idx], b"labels": [int(v) for v in pool_labels[idx]]},
                                                  protocol=2))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (out / "batches.meta").write_bytes(pickle.dumps({b"label_names": [n.encode() for n in names]}, protocol=2))
    return out


def half_width_unet(folder: Path) -> str:
    """Save the 8.95 M UNet (random weights) as a folder `repfusion teacher` can train from."""
    from diffusers import UNet2DModel

    from repfusion.teachers import default_scheduler
    from repfusion.teachers.presets import TEACHER_PRESETS

    config = dict(TEACHER_PRESETS["ddpm-cifar10-32"], block_out_channels=(64, 128, 128, 128))
    if not (folder / "config.json").is_file():
        UNet2DModel(**config).save_pretrained(folder)
        default_scheduler().save_pretrained(folder)
    return str(folder)


def configs(verb: str, args: argparse.Namespace, data_root: Path, work: Path):
    """The run config of a verb, as the command line would build it from flags."""
    from repfusion.data import DataConfig
    from repfusion.training import OptimConfig, TrainerConfig

    data = DataConfig(source="cifar", root=str(data_root), batch_size=args.batch, num_workers=args.workers)
    options = {k: v for k, v in (("precision", args.precision), ("channels_last", args.channels_last),
                                 ("compile", args.compile)) if v is not None}
    trainer = TrainerConfig(max_epochs=args.epochs, accelerator=args.device, devices=1, seed=0,
                            limit_train_batches=args.batches if args.batches > 0 else None,
                            limit_val_batches=args.val_batches if args.val_batches >= 0 else None,
                            progress=not args.no_progress, **options)
    if verb == "teacher":
        from repfusion.teachers.train import TeacherRun

        unet = half_width_unet(work / "unet") if args.unet == HALF_WIDTH_UNET else args.unet
        return TeacherRun(teacher=unet, data=dataclasses.replace(data, crop_padding=0),
                          optim=OptimConfig(name="adamw", lr=2e-4, weight_decay=0.0, schedule="constant"),
                          trainer=trainer, samples=0)
    if verb == "distill":
        from repfusion.distill.run import DistillRun, StudentSection, TeacherSection

        return DistillRun(teacher=TeacherSection(source=args.teacher), student=StudentSection(args.student, args.width),
                          data=data, trainer=dataclasses.replace(trainer, ema_decay=0.999))
    from repfusion.tasks.finetune import FinetuneRun, ModelSection

    return FinetuneRun(student=ModelSection(args.student, args.width), data=data, trainer=trainer)


def real_loop(verb: str, cfg, run_dir: Path, device: str, bare: Callable[[], float] | None = None,
              bare_steps: int = 0) -> LoopTimer:
    """One run through the verb's own function, timed by a LoopTimer passed as trainer.extra.profiler."""
    timer = LoopTimer(device, bare, bare_steps)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, extra={**cfg.trainer.extra,
                                                                                   "profiler": timer}))
    if verb == "teacher":
        from repfusion.teachers.train import train_teacher

        train_teacher(cfg, run_dir)
    elif verb == "distill":
        from repfusion.distill.run import run_distillation

        run_distillation(cfg, run_dir)
    else:
        from repfusion.tasks.finetune import run_finetune

        run_finetune(cfg, run_dir)
    timer.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return timer


def build_module(verb: str, cfg):
    from repfusion.data import ImageDataModule

    if verb == "teacher":
        from repfusion.teachers.ddpm_training import DDPMTraining, ddpm_augment
        from repfusion.teachers.loading import load_unet_and_scheduler

        datamodule = ImageDataModule(cfg.data)
        _, size, _ = datamodule.sample_shape()
        unet, scheduler = load_unet_and_scheduler(cfg.teacher, image_size=size)
        return DDPMTraining(unet, scheduler, cfg.optim, ddpm_augment(size)), datamodule
    if verb == "distill":
        from repfusion.distill.run import build_distillation

        datamodule = ImageDataModule(cfg.data)
        return build_distillation(cfg, datamodule), datamodule
    from repfusion.tasks.registry import TASKS

    datamodule = ImageDataModule(cfg.data, labelled_only=True)
    return TASKS.get(cfg.task).build(cfg, datamodule), datamodule


def bare_step(verb: str, cfg, warmup: int, device: str) -> Callable[[], float]:
    """A timed bare step (returns seconds): the verb's module and optimiser, with the same fast paths, on one
    batch already on the device; `warmup` steps are run first."""
    from repfusion.training import build_optimizer

    torch.manual_seed(0)
    module, datamodule = build_module(verb, cfg)
    module.to(device).train()
    try:
        from repfusion.fastpath import apply_fast_paths, autocast_context, resolve_fast_paths
    except ImportError:  # a tree from before the fast paths (to measure what they changed)
        fast, apply_fast_paths, autocast_context = None, lambda *_: None, lambda *_: contextlib.nullcontext()
    else:
        fast = resolve_fast_paths(cfg.trainer, torch.device(device))
    apply_fast_paths(module, fast)
    optimizer = build_optimizer(module.trainable_parameters(), cfg.optim)
    channels, height, width = datamodule.sample_shape()
    images = torch.rand(cfg.data.batch_size, channels, height, width, device=device)
    labels = torch.randint(0, datamodule.num_classes, (cfg.data.batch_size,), device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step() -> None:
        with autocast_context(fast, torch.device(device)):
            loss = module.training_step((images, labels), 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    sync()

    def timed() -> float:
        sync()
        start = time.perf_counter()
        step()
        sync()
        return time.perf_counter() - start

    return timed


def loop_numbers(timer: LoopTimer, batch: int) -> dict:
    """Steady state: epochs after the first. Per-step milliseconds of every profiled action."""
    epochs = [e for e in sorted(timer.train_s) if e >= 1 and timer.batches[e]]
    steps = sum(timer.batches[e] for e in epochs)
    train_s = sum(timer.train_s[e] for e in epochs)
    # a whole epoch: from its start to the next one's (validation, epoch-end hooks and checkpoint included)
    epoch_s = [timer.epoch_start[e + 1] - timer.epoch_start[e] for e in epochs if e + 1 in timer.epoch_start]
    actions: dict[str, float] = defaultdict(float)
    for e in epochs:
        for name, values in timer.durations[e].items():
            actions[name] += sum(values)
    # the step proper inside the loop (training_step, backward, optimizer.step: Lightning's optimizer_step hook)
    in_step = sum(sum(v) for e in epochs for name, v in timer.durations[e].items()
                  if name.startswith("[LightningModule]") and name.endswith(".optimizer_step"))
    bare = {e: statistics.median(timer.bare_s[e]) for e in epochs if timer.bare_s.get(e)}
    ratios = [timer.batches[e] * batch / timer.train_s[e] / (batch / bare[e]) for e in epochs if e in bare]
    return {"steps": steps, "train_s": train_s, "images_per_s": steps * batch / train_s if train_s else 0.0,
            "bare_step_s": [t for e in epochs for t in timer.bare_s.get(e, [])], "ratios": ratios,
            "step_share": in_step / train_s if train_s else 0.0,
            "step_s": train_s / steps if steps else 0.0, "epoch_s": epoch_s,
            "peak_gpu_mb": getattr(timer, "peak_gpu_mb", None),
            "ms_per_step": {k: 1000 * v / max(1, steps) for k, v in actions.items()}}


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--verbs", nargs="+", default=list(VERBS), choices=VERBS)
    parser.add_argument("--teacher", default=None, help="distill teacher (default small-32 on cpu, ddpm-cifar10-32 "
                        "on cuda)")
    parser.add_argument("--unet", default=None, help=f"UNet the teacher verb trains (default small-32 on cpu, "
                        f"{HALF_WIDTH_UNET}: the 8.95 M UNet, on cuda)")
    parser.add_argument("--student", default="resnet18_cifar")
    parser.add_argument("--width", type=float, default=None, help="student width (default 0.25 on cpu, 1 on cuda)")
    parser.add_argument("--batch", type=int, default=None, help="default 64 on cpu, 128 on cuda")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per real run; the first is not timed")
    parser.add_argument("--batches", type=int, default=None, help="training batches per epoch (default 8 on cpu, "
                        "100 on cuda)")
    parser.add_argument("--val-batches", type=int, default=1, help="validation batches per epoch (-1: all)")
    parser.add_argument("--test-images", type=int, default=1017, help="images in the tiled test split")
    parser.add_argument("--project-epochs", type=int, default=0, help="project the paper's protocol: this many "
                        "distill and finetune epochs at the timed whole-epoch cost (use with --batches 0)")
    parser.add_argument("--bare-steps", type=int, default=None, help="timed bare steps before each timed epoch "
                        "(default 4 / 30)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="data.num_workers")
    parser.add_argument("--precision", default=None, help="trainer.precision (default: its default)")
    parser.add_argument("--channels-last", default=None, help="trainer.channels_last (default: its default)")
    parser.add_argument("--compile", default=None, help="trainer.compile (default: its default)")
    parser.add_argument("--data", type=Path, default=SUBSET if SUBSET.is_dir() else None,
                        help="CIFAR python folder to tile from (default: the shared subset; random pixels without)")
    parser.add_argument("--train-images", type=int, default=5085, help="images in the tiled training split")
    parser.add_argument("--no-progress", action="store_true", help="trainer.progress false (the CLI shows it)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--name", default="loop_speed", help="result file stem")
    args = parser.parse_args()
    gpu = args.device == "cuda"
    args.teacher = args.teacher or ("ddpm-cifar10-32" if gpu else "small-32")
    args.unet = args.unet or (HALF_WIDTH_UNET if gpu else "small-32")
    args.width = args.width or (1.0 if gpu else 0.25)
    args.batch = args.batch or (128 if gpu else 64)
    args.batches = args.batches or (100 if gpu else 8)
    args.bare_steps = args.bare_steps or (30 if gpu else 4)
    for flag in ("channels_last", "compile"):
        value = getattr(args, flag)
        if value is not None and value.lower() in ("true", "false"):
            setattr(args, flag, value.lower() == "true")
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)

    work = Path(tempfile.mkdtemp(prefix="loop_speed_"))
    data_root = write_cifar_folder(args.data, work / "cifar-10-batches-py", args.train_images, args.test_images)
    cfgs = {verb: configs(verb, args, data_root, work) for verb in args.verbs}
    bare: dict[str, list[float]] = {v: [] for v in args.verbs}
    loops: dict[str, list[dict]] = {v: [] for v in args.verbs}
    for round_ in range(args.rounds):
        for verb in args.verbs:
            step = bare_step(verb, cfgs[verb], args.warmup, args.device)
            run_dir = work / f"{verb}-{round_}"
            numbers = loop_numbers(real_loop(verb, cfgs[verb], run_dir, args.device, step, args.bare_steps),
                                   args.batch)
            bare[verb] += numbers["bare_step_s"]
            loops[verb].append(numbers)
            print(f"round {round_} {verb:>8}: bare {args.batch / statistics.median(numbers['bare_step_s']):8.1f} "
                  f"img/s, loop {numbers['images_per_s']:8.1f} img/s, paired ratios "
                  f"{[round(r, 3) for r in numbers['ratios']]}", flush=True)

    summary = {}
    for verb in args.verbs:
        bare_rate = args.batch / statistics.median(bare[verb])
        loop_rate = statistics.median([r["images_per_s"] for r in loops[verb]])
        ratios = [x for r in loops[verb] for x in r["ratios"]]
        names = set().union(*(r["ms_per_step"] for r in loops[verb]))
        breakdown = {n: statistics.median([r["ms_per_step"].get(n, 0.0) for r in loops[verb]]) for n in names}
        summary[verb] = {"bare_images_per_s": bare_rate, "loop_images_per_s": loop_rate,
                         "ratio": statistics.median(ratios), "ratios": ratios,
                         "step_share": statistics.median([r["step_share"] for r in loops[verb]]),
                         "bare_step_ms": 1000 * statistics.median(bare[verb]),
                         "loop_step_ms": 1000 * statistics.median([r["step_s"] for r in loops[verb]]),
                         "epoch_s": statistics.median([s for r in loops[verb] for s in r["epoch_s"]] or [0.0]),
                         "peak_gpu_mb": max((r["peak_gpu_mb"] or 0.0) for r in loops[verb]) or None,
                         "breakdown_ms_per_step": dict(sorted(breakdown.items(), key=lambda kv: -kv[1]))}
    from repfusion.fastpath import resolve_fast_paths

    fast = resolve_fast_paths(cfgs[args.verbs[0]].trainer, torch.device(args.device))
    command = shlex.join(["python", "benchmarks/loop_speed.py", *sys.argv[1:]])
    env = {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "machine": platform.machine(), "cpu_count": os.cpu_count(),
           "gpu": torch.cuda.get_device_name() if gpu else None, "fast_paths": fast}
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("out", "data")}
    settings["data"] = "shared cifar10-subset, tiled" if args.data is not None else "random pixels"
    args.out.mkdir(parents=True, exist_ok=True)
    from repfusion.io import write_json, write_text

    projection = None
    if args.project_epochs and {"distill", "finetune"} <= set(summary):
        minutes = {v: args.project_epochs * summary[v]["epoch_s"] / 60 for v in ("distill", "finetune")}
        projection = {"epochs_each": args.project_epochs, "train_images": args.train_images,
                      "test_images": args.test_images, "minutes": minutes, "total_minutes": sum(minutes.values())}
        print(f"projection: {args.project_epochs} + {args.project_epochs} epochs on {args.train_images} images: "
              f"{projection['total_minutes']:.1f} min", flush=True)
    write_json(args.out / f"{args.name}.json", {"command": command, "env": env, "settings": settings,
                                                "summary": summary, "projection": projection, "bare_step_s": bare,
                                                "loops": loops})
    write_text(args.out / f"{args.name}.md", markdown(command, env, args, summary, projection))
    for verb, s in summary.items():
        print(f"{verb}: loop {s['loop_images_per_s']:.1f} img/s = {100 * s['ratio']:.1f} % of the bare step "
              f"({s['bare_images_per_s']:.1f} img/s); {100 * s['step_share']:.1f} % of the loop's time in the step")


def markdown(command: str, env: dict, args: argparse.Namespace, summary: dict, projection: dict | None) -> str:
    rows = "\n".join(f"| `repfusion {v}` | {s['bare_images_per_s']:.1f} | {s['loop_images_per_s']:.1f} | "
                     f"**{100 * s['ratio']:.1f} %** | **{100 * s['step_share']:.1f} %** | {s['bare_step_ms']:.1f} | "
                     f"{s['loop_step_ms']:.1f} | {s['epoch_s']:.2f} |" for v, s in summary.items())
    parts = []
    for verb, s in summary.items():
        top = list(s["breakdown_ms_per_step"].items())[:14]
        lines = "\n".join(f"| `{name}` | {ms:.2f} |" for name, ms in top)
        parts.append(f"### `repfusion {verb}`: Lightning profiler, ms per training step (nested actions "
                     f"include their children)\n\n| action | ms / step |\n|---|---|\n{lines}\n")
    breakdown = "\n".join(parts)
    peaks = ", ".join(f"{v} {s['peak_gpu_mb']:.0f} MB" for v, s in summary.items() if s.get("peak_gpu_mb"))
    extra = f"Peak GPU memory per run: {peaks}.\n\n" if peaks else ""
    if projection:
        m = projection["minutes"]
        extra += (f"Projection of the paper's protocol ({projection['epochs_each']} distillation + "
                  f"{projection['epochs_each']} fine-tuning epochs on {projection['train_images']:,} images, "
                  f"validation on {projection['test_images']:,} every epoch) from the timed whole epochs: "
                  f"distill {m['distill']:.1f} min + finetune {m['finetune']:.1f} min = "
                  f"**{projection['total_minutes']:.1f} min**.\n\n")
    gpu = f" ({env['gpu']})" if env["gpu"] else ""
    return f"""# Real training loops against the bare step

Command: `{command}`

{env['device']}{gpu}, torch {env['torch']}, {env['threads']} threads; fast paths resolved to {env['fast_paths']}.
teacher verb: UNet `{args.unet}`; distill: teacher `{args.teacher}`, student `{args.student}` width {args.width},
hint + reinforced policy (the verb's defaults); finetune: the same student. Batch {args.batch},
{args.batches} batches per epoch, {args.epochs} epochs per run (the first not timed), {args.rounds}
rounds; data: {'the shared CIFAR-10 subset' if args.data is not None else 'random pixels'} in CIFAR format,
`data.num_workers` {args.workers}.

`loop / bare` is the median of per-epoch ratios, each epoch against the {args.bare_steps} bare steps run just
before it in the same process (a shared machine's speed drifts within minutes). The loop's images/s is the
training part of each timed epoch (loader, transfer, augmentation, step, hooks, logging); `epoch s` is a whole
epoch, start to next start: validation ({'all' if args.val_batches < 0 else args.val_batches} batches),
epoch-end hooks and the checkpoint included (median). `loop time in the step` is the share of the loop's
training time spent in the step proper (Lightning's `optimizer_step` hook: training_step, backward,
optimizer.step), from the profiler: the rest is the loop's own per-step cost (loader, augmentation, hooks,
logging). On a CPU it does not depend on how fast the machine is at the moment; on a GPU, where kernels run
asynchronously, read the paired ratio instead.

| verb | bare step img/s | real loop img/s | loop / bare | loop time in the step | bare ms/step | loop ms/step | epoch s |
|---|---|---|---|---|---|---|---|
{rows}

{extra}{breakdown}"""


if __name__ == "__main__":
    main()
