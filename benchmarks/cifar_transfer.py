"""Does the diffusion teacher's knowledge transfer on real images, with scarce and with full labels?

Data: ../shared/data/cifar10-subset (real CIFAR-10 images); 10 % of the training images are held out as
the validation split (model choices), the test split is only reported. Teacher: the DDPM in
../shared/teachers (trained on the training images, no labels), or --teacher. Every distillation
reads every non-validation training image; fine-tuning sees a stratified `label_fraction` of them
(drawn per seed, the same subset for every arm of that seed). Arms (../shared/docs/evidence.md):

- scratch: the student from random weights.
- scratch-equal: scratch fine-tuned for as many optimiser steps as distillation + fine-tuning.
- paper: the paper's method as published: hint on the raw teacher feature, 1000-way policy, plain
  REINFORCE, label reward (it reads every training label during distillation, which favours it at
  10 % labels), clean input. Truncated: its 1000-way policy cannot move in a few hundred steps
  (policy_baseline.md), so this is the paper's recipe at this budget, not its converged behaviour.
- t0: the paper's "without the policy": hint on the raw feature at fixed t = 0, no labels.
- v1: the previous default (hint on the per-t standardised mid-block feature, 20-bin policy, InfoNCE
  reward, noised input), which a random teacher matched (issue 17).
- ours: the teacher layer chosen by the probe of teacher_layers_cifar.md (decoder `up_blocks.0`,
  trained - random +21 points on the validation split), clean input at t = 0, per-channel standardised
  dense hint on the student's grid (the 16x16 teacher map area-pooled to layer4's 4x4), no labels.
  Chosen among the candidates below by the frozen student's validation probe against its random-teacher
  twin (recipe_search.md, one seed each).
- ours-pooled, ours-policy: candidates on the same layer (pooled hint at t = 0; pooled hint on noised
  input with the 20-bin policy and the InfoNCE reward).
- ours-fused: ours-pooled with a target fused from the pooled features of three layers (FUSED_LAYERS).
- NAME-random: arm NAME distilled from a teacher of the same architecture with seeded random weights
  (`teacher.init: random`, its own per seed): the control that answers "did the knowledge transfer".

Fine-tuning protocols (`--protocol`, applied identically to every arm; issue 23):

- plain: every weight trains from the first step (the previous protocol).
- lpft: LP-FT, the head starts as the frozen backbone's logistic-regression probe on the labelled images
  (plus `--head-epochs` head-only SGD epochs if asked), then everything trains at `--lpft-lr` (Kumar et al.
  fine-tune the fitted model at a smaller rate than plain fine-tuning; at plain's 0.1 the fitted head's
  gradients undid the distillation and LP-FT scored below the probe it started from).
- joint: the teacher in the loop, L = CE + w (D_labelled + D_unlabelled), with each distilled arm's own teacher
  (the random-teacher student keeps its random teacher); scratch arms have no teacher and train plainly.
- lpft-joint: both.
- lp: the linear probe kept: the head starts as the probe and only the head trains (the backbone frozen for
  every epoch, BatchNorm statistics included), so nothing distillation put in is lost; the bound on what
  fine-tuning can keep.

Several protocols (`--protocol plain lpft lp`): every arm runs each, and per seed and arm the protocol with
the highest validation top-1 is the one reported (the same menu for every arm; the test split never
chooses); the per-protocol means are reported beside it.

Each seed runs its own distillations. Finished runs are kept, so an interrupted benchmark continues. Seeds:
`--seeds N --seed-offset M` runs seeds M .. M+N-1 (or `--seed-list 10 11 12`); the JSON records them.

    python benchmarks/cifar_transfer.py   # writes benchmarks/results/cifar_transfer.{json,md,png}
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import math
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DISTILLED = ("paper", "t0", "v1", "ours", "ours-pooled", "ours-policy", "ours-fused")
FUSED_LAYERS = ["down_blocks.2", "mid_block", "up_blocks.0"]  # the three largest trained - random probe gaps
ARMS = ("scratch", "scratch-equal", *DISTILLED, *(f"{a}-random" for a in DISTILLED))
PROBE_LAYER = "up_blocks.0"
PROTOCOLS = ("plain", "lpft", "joint", "lpft-joint", "lp")
FINETUNE_LR = 0.1  # every protocol's SGD rate, LP-FT's unless --lpft-lr sets its own


def with_protocol(args: argparse.Namespace, run, protocol: str):
    """`run` (plain) under one protocol of this benchmark: the library's (`repfusion.tasks.protocols`: lpft at
    --lpft-lr, lp, joint at --in-loop-weight), lpft-joint both, plus this benchmark's --head-epochs for lpft and
    --in-loop-views for joint. A scratch arm has no teacher: the library makes its joint plain."""
    from repfusion.tasks.protocols import ProtocolSettings, apply

    settings = ProtocolSettings(lpft_lr=args.lpft_lr,  # the weight is read (and checked by the parser) for joint only
                                joint_weight=args.in_loop_weight if protocol.endswith("joint") else 1.0)
    for part in protocol.split("-"):
        run = apply(run, part, settings)
    if protocol.startswith("lpft"):
        run = dataclasses.replace(run, head_epochs=args.head_epochs)
    if run.teacher_in_loop.enabled:
        run = dataclasses.replace(run, teacher_in_loop=dataclasses.replace(run.teacher_in_loop,
                                                                           views=args.in_loop_views))
    return run


def seed_list(args: argparse.Namespace) -> list[int]:
    return list(args.seed_list) if args.seed_list else list(range(args.seed_offset, args.seed_offset + args.seeds))


def distill_config(arm: str, args: argparse.Namespace, data, seed: int):
    from repfusion.analysis.controls import RANDOM_SUFFIX
    from repfusion.distill.run import DistillRun, LossSection, StudentSection, TeacherSection
    from repfusion.distill.timesteps import TimestepConfig
    from repfusion.training import OptimConfig

    recipe = arm.removesuffix(RANDOM_SUFFIX)
    init = "random" if arm.endswith(RANDOM_SUFFIX) else "pretrained"
    half = max(1.0, args.distill_epochs / 2)
    policy = dict(entropy_weight=0.1, entropy_decay_epochs=half, policy_bins=20, advantage="normalized",
                  policy_warmup_epochs=1.0)
    reward = "none"
    if recipe == "paper":
        teacher, loss, reward = TeacherSection(source=args.teacher), LossSection("hint", target_norm="none"), "label"
        timesteps = TimestepConfig("reinforced", entropy_weight=0.1, entropy_decay_epochs=half, policy_bins=1000,
                                   advantage="raw", policy_warmup_epochs=0.0, entropy_floor=0.0,
                                   head_uniform_t=False)
    elif recipe == "t0":
        teacher, loss = TeacherSection(source=args.teacher), LossSection("hint", target_norm="none")
        timesteps = TimestepConfig("fixed", t=0)
    elif recipe == "v1":
        teacher = TeacherSection(source=args.teacher, noise_mode="noised")
        loss, reward = LossSection("hint", target_norm="per_t"), "infonce"
        timesteps = TimestepConfig("reinforced", **policy)
    elif recipe == "ours-policy":
        teacher = TeacherSection(source=args.teacher, layer=PROBE_LAYER, noise_mode="noised")
        loss, reward = LossSection("hint", target_norm="per_t"), "infonce"
        timesteps = TimestepConfig("reinforced", **policy)
    else:  # ours, ours-pooled, ours-fused: the probe's layer(s) at clean t = 0, per-channel standardised target
        teacher = TeacherSection(source=args.teacher, layer=FUSED_LAYERS if recipe == "ours-fused" else PROBE_LAYER)
        options = {"mode": "dense", "grid": "coarser"} if recipe == "ours" else {}
        loss = LossSection("hint", target_norm="per_t", target_bins=1, options=options)
        timesteps = TimestepConfig("fixed", t=0)
    teacher = dataclasses.replace(teacher, init=init)
    cacheable = timesteps.strategy == "fixed" and teacher.noise_mode == "clean"  # the target is fixed per view
    return DistillRun(teacher=teacher, student=StudentSection("resnet18_cifar", args.width), loss=loss,
                      timesteps=timesteps, reward=reward, data=data, optim=OptimConfig(lr=0.1),
                      trainer=trainer(args.distill_epochs, seed),
                      cache_views=getattr(args, "cache_views", 0) if cacheable else 0)


@contextlib.contextmanager
def held(lock: Path | None):
    """Each training holds the machine's training lock on its own (`--lock`), so other work can run between them
    and nothing runs beside a timed one; a lock held for a whole benchmark would starve the rest for hours."""
    if lock is None:
        yield
        return
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def distil_and_probe(cfg, run_dir: Path, splits, lock: Path | None) -> dict:
    """Distil `cfg` into `run_dir` (a killed run resumes) and probe the frozen student on `splits`; summary.json
    keeps the seconds (the distillation with its validation passes, and the probe's fit), the last epoch's t
    distribution and the probe, so a rerun reads the finished run back instead of training it again."""
    from repfusion.analysis.student_probe import probe_student
    from repfusion.distill.run import run_distillation
    from repfusion.io import write_json

    done = run_dir / "summary.json"
    if not done.exists():
        with held(lock):
            start = time.time()
            run_distillation(cfg, run_dir, resume=(run_dir / "checkpoints" / "last.ckpt").exists())
            t_hist = json.loads((run_dir / "timesteps.json").read_text())["history"]
            probe = probe_student(run_dir, splits.train_set, splits.val_set)
        write_json(done, {"seconds": time.time() - start, "final_t_distribution": t_hist[-1], "val_probe": probe})
    return json.loads(done.read_text())


def trainer(epochs: int, seed: int):
    from repfusion.training import TrainerConfig

    return TrainerConfig(max_epochs=epochs, seed=seed, ema_decay=0.99, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "cifar10-subset")
    parser.add_argument("--teacher", default=str(SHARED / "teachers" / "cifar10-subset-ddpm-small"))
    parser.add_argument("--seeds", type=int, default=3, help="How many seeds (from --seed-offset).")
    parser.add_argument("--seed-offset", type=int, default=0, help="The first seed; fresh seeds for a rerun.")
    parser.add_argument("--seed-list", type=int, nargs="+", default=None, help="Explicit seeds (overrides both).")
    parser.add_argument("--protocol", choices=PROTOCOLS, nargs="+", default=["plain"],
                        help="Fine-tuning protocol(s) of every arm; several: chosen per seed and arm on validation.")
    parser.add_argument("--head-epochs", type=int, default=0,
                        help="lpft protocols: head-only SGD epochs after the probe head (0: the probe head only).")
    parser.add_argument("--lpft-lr", type=float, default=FINETUNE_LR,
                        help=f"lpft protocols: the learning rate once everything trains (the other protocols keep {FINETUNE_LR:g}).")
    parser.add_argument("--in-loop-weight", type=float, default=1.0, help="w of the joint protocols.")
    parser.add_argument("--in-loop-views", type=int, default=2, help="Stored views per image (joint protocols).")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--distill-epochs", type=int, default=6)
    parser.add_argument("--fractions", type=float, nargs="*", default=[0.1, 1.0],
                        help="Label fractions to fine-tune at; none: distil and probe only.")
    parser.add_argument("--finetune-epochs", type=int, default=8, help="At 100 %% labels; scaled up for fewer labels.")
    parser.add_argument("--arms", nargs="+", default=["scratch", "scratch-equal", "ours", "ours-random"],
                        choices=ARMS)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "cifar_transfer")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--name", default="cifar_transfer", help="Stem of the result files.")
    parser.add_argument("--train-limit", type=int, default=None, help="Smoke runs only.")
    parser.add_argument("--cache-views", type=int, default=0,
                        help="Cached teacher targets, this many stored views per image (fixed-t clean recipes).")
    parser.add_argument("--lock", type=Path, default=None, help="A lock file each training takes on its own.")
    args = parser.parse_args()
    if not (math.isfinite(args.lpft_lr) and args.lpft_lr > 0):  # found before any distillation, not at the first LP-FT run an hour later
        parser.error(f"--lpft-lr must be a positive learning rate (e.g. 0.03), not {args.lpft_lr}.")
    if any(p.endswith("joint") for p in args.protocol) and not (math.isfinite(args.in_loop_weight)
                                                                 and args.in_loop_weight > 0):
        parser.error(f"--in-loop-weight must be positive for a joint protocol (e.g. 1.0), not {args.in_loop_weight}.")
    if not args.data.exists() or not Path(args.teacher).exists():
        print(f"skipped: {args.data} or {args.teacher} is absent (this benchmark needs ../shared).")
        return

    import torch
    from repfusion.analysis.controls import steps_per_epoch
    from repfusion.analysis.student_probe import probe_student
    from repfusion.data import DataConfig, ImageDataModule
    from repfusion.io import write_json

    root = str(args.data / "cifar-10-batches-py") if (args.data / "cifar-10-batches-py").is_dir() else str(args.data)
    data = DataConfig(source="cifar", root=root, batch_size=args.batch, val_fraction=0.1, flip=True,
                      train_limit=args.train_limit)
    splits = ImageDataModule(data)
    splits.setup()
    distill_steps = args.distill_epochs * steps_per_epoch(len(splits.train_set), args.batch)
    results: dict = {"distill": {}, "finetune": {}}
    seeds = seed_list(args)
    args.seeds = len(seeds)
    for seed in seeds:
        for arm in args.arms:  # distillations first: every fraction reuses them (scratch: the random init)
            work = "scratch" if arm.startswith("scratch") else arm
            run_dir = args.work / work / f"seed{seed}" / "distill"
            done = run_dir / "summary.json"
            if not done.exists() and work == "scratch":
                torch.manual_seed(seed)
                probe = probe_student("random:resnet18_cifar", splits.train_set, splits.val_set, width=args.width)
                write_json(done, {"seconds": 0.0, "final_t_distribution": None, "val_probe": probe})
            summary = distil_and_probe(distill_config(arm, args, data, seed), run_dir, splits, args.lock)
            results["distill"].setdefault(arm, []).append(summary)
            below = sum(summary["final_t_distribution"][:6]) if summary["final_t_distribution"] else float("nan")
            print(f"distill {arm:>12} seed {seed}: val linear probe {100 * summary['val_probe']['linear_probe']:.2f} %,"
                  f" k-NN {100 * summary['val_probe']['knn']:.2f} %, t < 300: {below:.0%}", flush=True)
        for fraction in args.fractions:
            epochs = round(args.finetune_epochs / fraction ** 0.5)  # fewer images per epoch: more epochs
            labelled = dataclasses.replace(data, label_fraction=fraction, split_seed=seed,
                                           batch_size=args.batch if fraction >= 0.5 else 64)
            for arm in args.arms:
                runs = {protocol: finetune_arm(args, arm, seed, fraction, protocol, labelled, epochs, distill_steps)
                        for protocol in args.protocol}
                chosen = max(runs, key=lambda p: (runs[p]["val_top1"], -args.protocol.index(p)))
                summary = {**runs[chosen], "protocol": chosen,
                           "by_protocol": {p: {"top1": r["top1"], "val_top1": r["val_top1"]} for p, r in runs.items()}}
                results["finetune"].setdefault(f"{fraction:g}", {}).setdefault(arm, []).append(summary)
                print(f"finetune {arm:>13} {100 * fraction:g} % labels seed {seed}: test top-1 "
                      f"{100 * summary['top1']:.2f} % ({summary['epochs']} epochs, protocol {chosen})", flush=True)
    report(results, args, portable_command())


def finetune_arm(args: argparse.Namespace, arm: str, seed: int, fraction: float, protocol: str,
                 labelled: object, epochs: int, distill_steps: int) -> dict:
    """One arm's fine-tune under one protocol (kept: a finished run is read back), its summary."""
    from repfusion.analysis.controls import equal_compute_epochs, labelled_images, steps_per_epoch
    from repfusion.io import write_json
    from repfusion.tasks.finetune import FinetuneRun, ModelSection, run_finetune
    from repfusion.training import OptimConfig

    if arm.startswith("scratch"):  # no teacher to keep in the loop: joint is plain, lpft-joint lpft for them
        protocol = {"joint": "plain", "lpft-joint": "lpft"}.get(protocol, protocol)
    suffix = "" if protocol == "plain" else f"-{protocol}"
    lr = args.lpft_lr if protocol.startswith("lpft") else FINETUNE_LR
    suffix += "" if lr == FINETUNE_LR else f"-lr{lr:g}"  # runs at another rate never read back as these
    run_dir = args.work / arm / f"seed{seed}" / f"finetune-{fraction:g}{suffix}"
    done = run_dir / "summary.json"
    arm_epochs = epochs
    if arm == "scratch-equal":  # joint: each step also passes a batch of every image through the student
        extra = (epochs * steps_per_epoch(labelled_images(labelled), labelled.batch_size)
                 if protocol.endswith("joint") else 0)
        arm_epochs = equal_compute_epochs(distill_steps + extra, labelled_images(labelled),
                                          labelled.batch_size, epochs)
    if not done.exists():
        start = time.time()
        init = None if arm.startswith("scratch") else str(args.work / arm / f"seed{seed}" / "distill")
        ft = with_protocol(args, FinetuneRun(init=init, student=ModelSection("resnet18_cifar", args.width),
                                             data=labelled, optim=OptimConfig(lr=FINETUNE_LR, nesterov=True),
                                             trainer=trainer(arm_epochs, seed)), protocol)
        assert ft.optim.lr == lr, (ft.optim.lr, lr)  # the rate its folder is named by
        with held(args.lock):
            metrics = run_finetune(ft, run_dir, resume=(run_dir / "checkpoints" / "last.ckpt").exists())
        write_json(done, {"top1": metrics["test/top1"], "val_top1": metrics.get("val/top1"),
                          "seconds": time.time() - start, "epochs": arm_epochs, "seed": seed,
                          "protocol": protocol, "lr": lr})
    summary = json.loads(done.read_text())
    print(f"  {arm:>13} {100 * fraction:g} % seed {seed} {protocol}: val top-1 {100 * summary['val_top1']:.2f} %",
          flush=True)
    return summary


def paired_list(results: dict) -> list[dict]:
    """Every distilled arm against scratch, equal-compute scratch and its random-teacher twin (test top-1),
    and its frozen validation probe against the random teacher's and the random initialisation's."""
    from repfusion.analysis.controls import RANDOM_SUFFIX, paired_entry

    pairs = []
    probes = {arm: [r["val_probe"]["linear_probe"] for r in runs] for arm, runs in results["distill"].items()}
    for arm in probes:
        if arm.startswith("scratch") or arm.endswith(RANDOM_SUFFIX):
            continue
        for control in (arm + RANDOM_SUFFIX, "scratch"):
            if control in probes and len(probes[control]) == len(probes[arm]):
                pairs.append(paired_entry(arm, control, probes[arm], probes[control], "val_probe"))
    for fraction, arms in results["finetune"].items():
        top1 = {arm: [r["top1"] for r in runs] for arm, runs in arms.items()}
        protocols = protocols_run(arms)
        for arm in top1:
            if arm.startswith("scratch") or arm.endswith(RANDOM_SUFFIX):
                continue
            for control in (arm + RANDOM_SUFFIX, "scratch", "scratch-equal"):
                if control in top1 and len(top1[control]) == len(top1[arm]):
                    pairs.append(paired_entry(arm, control, top1[arm], top1[control], "test_top1", float(fraction)))
                    for protocol in protocols if len(protocols) > 1 else ():
                        pairs.append(paired_entry(arm, control, at_protocol(arms[arm], protocol),
                                                  at_protocol(arms[control], protocol), f"test_top1 {protocol}",
                                                  float(fraction)))
    return pairs


def protocols_run(arms: dict) -> list[str]:
    """The protocols every run of these arms tried (one, unless several were chosen between)."""
    first = next(iter(arms.values()))[0]
    return list(first.get("by_protocol", {first.get("protocol", "plain"): None}))


def at_protocol(runs: list[dict], protocol: str, key: str = "top1") -> list[float]:
    """Each seed's `key` had every arm run `protocol` (an observation beside the validation's choice)."""
    return [r["by_protocol"][protocol][key] if "by_protocol" in r else r[key] for r in runs]


def portable(value: object) -> str:
    """A setting as text, with paths relative to the repository so result files name no machine's folders."""
    text = str(value)
    if isinstance(value, Path) or Path(text).is_absolute():
        return os.path.relpath(text, ROOT)
    return text


def portable_command() -> str:
    """This run's command line with its absolute paths relative to the repository (`portable`)."""
    return shlex.join(["python", *(portable(arg) for arg in sys.argv)])


def report(results: dict, args: argparse.Namespace, command: str) -> None:
    from repfusion.analysis.controls import format_entry
    from repfusion.analysis.plots import plot_arms
    from repfusion.io import write_json, write_text

    seeds = seed_list(args)
    table = {fraction: {arm: {"runs": [r["top1"] for r in runs], "val_runs": [r.get("val_top1") for r in runs],
                              "mean": statistics.mean(r["top1"] for r in runs),
                              "std": statistics.stdev([r["top1"] for r in runs]) if len(runs) > 1 else 0.0,
                              "epochs": runs[0]["epochs"], "seconds": statistics.mean(r["seconds"] for r in runs),
                              "protocols": [r.get("protocol") for r in runs],
                              "by_protocol": {p: {"test_mean": statistics.mean(at_protocol(runs, p)),
                                                  "val_mean": statistics.mean(at_protocol(runs, p, "val_top1"))}
                                              for p in protocols_run(arms)}}
                        for arm, runs in arms.items()} for fraction, arms in results["finetune"].items()}
    distill = {arm: {"val_linear_probe": [r["val_probe"]["linear_probe"] for r in runs],
                     "val_knn": [r["val_probe"]["knn"] for r in runs],
                     "final_t_distribution": [r["final_t_distribution"] for r in runs],
                     "mass_below_300": [sum(r["final_t_distribution"][:6]) if r["final_t_distribution"] else None
                                        for r in runs],
                     "seconds": statistics.mean(r["seconds"] for r in runs)} for arm, runs in results["distill"].items()}
    pairs = [{**e, "seeds": seeds} for e in paired_list(results)]
    write_json(args.out / f"{args.name}.json", {"command": command,
                                                "config": {k: portable(v) for k, v in vars(args).items()},
                                                "seeds": seeds, "protocol": args.protocol,
                                                "finetune": table, "distill": distill, "paired": pairs})
    pct = lambda x: f"{100 * x:.2f}"  # noqa: E731
    lines = ["# CIFAR-10 subset: does the teacher's knowledge transfer?", "", f"Command: `{command}`", "",
             f"Student resnet18_cifar width {args.width}; distillation {args.distill_epochs} epochs on every "
             f"non-validation training image"
             f"{f' with cached teacher targets ({args.cache_views} stored views an image)' if args.cache_views else ''}; {len(seeds)} seeds ({', '.join(map(str, seeds))}), each with its own "
             f"distillations (and its own "
             "random teacher) and its own labelled subset (shared by the arms of that seed); 10 % of the training "
             "images held out for validation; test split only reported. All arms ran on one machine in this run. "
             f"Fine-tuning protocol: {', '.join(args.protocol)}"
             f"{' (per seed and arm, the one with the highest validation top-1)' if len(args.protocol) > 1 else ''}.",
             ""]
    if table:
        lines += ["| labels | arm | epochs | test top-1 mean ± std (%) | runs | val top-1 runs | protocol |",
                  "|---|---|---|---|---|---|---|"]
        for fraction, arms in table.items():
            for arm, r in arms.items():
                val = ", ".join(pct(x) if x is not None else "-" for x in r["val_runs"])
                lines.append(f"| {100 * float(fraction):g} % | {arm} | {r['epochs']} | {pct(r['mean'])} ± "
                             f"{pct(r['std'])} | {', '.join(pct(x) for x in r['runs'])} | {val} | "
                             f"{', '.join(map(str, r['protocols']))} |")
        lines.append("")
        if len(args.protocol) > 1:
            lines += ["Each protocol on its own (mean over seeds; validation chooses, test only reported):", "",
                      "| labels | arm | " + " | ".join(f"{p} val / test (%)" for p in args.protocol) + " |",
                      "|---|---|" + "---|" * len(args.protocol)]
            for fraction, arms in table.items():
                for arm, r in arms.items():
                    cells = [f"{pct(r['by_protocol'][p]['val_mean'])} / {pct(r['by_protocol'][p]['test_mean'])}"
                             for p in args.protocol]
                    lines.append(f"| {100 * float(fraction):g} % | {arm} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += ["Frozen backbones before fine-tuning (scratch: the random initialisation; linear probe and 20-NN on "
              "pooled features, fitted on the training images, scored on the validation split), and where each "
              "policy ended (share of sampled t < 300 in the last distillation epoch):", "",
              "| arm | val linear probe (%) | val k-NN (%) | t < 300 | seconds |", "|---|---|---|---|---|"]
    for arm, d in distill.items():
        lines.append(f"| {arm} | {', '.join(pct(x) for x in d['val_linear_probe'])} | "
                     f"{', '.join(pct(x) for x in d['val_knn'])} | "
                     f"{', '.join(f'{x:.0%}' if x is not None else '-' for x in d['mass_below_300'])} | "
                     f"{d['seconds']:.0f} |")
    lines += ["", "Paired differences a - b (points, mean over seeds with its 95 % t interval; `X-random` is X "
              "distilled from the random-weight teacher, so X - X-random is what the teacher's knowledge adds):", "",
              "| labels | metric | a | b | a - b [95 % CI] | seeds |", "|---|---|---|---|---|---|"]
    for e in pairs:
        labels = "-" if e["fraction"] is None else f"{100 * e['fraction']:g} %"
        lines.append(f"| {labels} | {e['metric']} | {e['a']} | {e['b']} | {format_entry(e)} | {e['n']} |")
    write_text(args.out / f"{args.name}.md", "\n".join(lines) + "\n")
    plot_arms({arm: [100 * x for x in d["val_linear_probe"]] for arm, d in distill.items()},
              args.out / f"{args.name}_probe.png", "CIFAR-10 subset, frozen backbones", "val linear probe (%)")
    for fraction, arms in table.items():
        plot_arms({arm: [100 * x for x in r["runs"]] for arm, r in arms.items()},
                  args.out / f"{args.name}_{100 * float(fraction):g}pct.png",
                  f"CIFAR-10 subset, {100 * float(fraction):g} % labels")


if __name__ == "__main__":
    main()
