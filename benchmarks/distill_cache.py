"""Longer distillation for the same time (issue 23, item 3): cached teacher targets, and the probe against epochs.

With a fixed t and clean input the truncated teacher's output for an image is fixed up to the augmentation, so
`cache_views` computes it once per image and stored view (`repfusion.distill.cache`). This measures, on the CIFAR
subset with the `ours` recipe of cifar_transfer.py (teacher decoder `up_blocks.0`, t = 0, dense hint):

1. seconds per distillation epoch with the teacher run every step and with the cache (its fill time apart);
2. the frozen student's validation linear probe after E cached epochs, for the trained and the random-weight teacher.

    python benchmarks/distill_cache.py --epochs 6 12 24   # writes benchmarks/results/distill_cache.{json,md,png}
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from cifar_transfer import SHARED, distil_and_probe, distill_config, held, portable, portable_command  # noqa: E402


class EpochClock:
    """Seconds of each training epoch, and from the start of training to the first epoch (where the cache is
    filled: `Distillation.on_train_start` runs after the callbacks' own), measured inside the Trainer so that a
    slow start or a busy neighbour in one run does not turn into a negative per-epoch time."""

    def __init__(self) -> None:
        self.epochs: list[float] = []
        self.fill = 0.0
        self._mark = 0.0

    def callback(self):
        import lightning.pytorch as pl

        clock = self

        class _Clock(pl.Callback):
            def on_train_start(self, trainer, module) -> None:
                clock._mark = time.perf_counter()

            def on_train_epoch_start(self, trainer, module) -> None:
                if not clock.epochs and clock.fill == 0.0:
                    clock.fill = time.perf_counter() - clock._mark
                clock._mark = time.perf_counter()

            def on_train_epoch_end(self, trainer, module) -> None:
                clock.epochs.append(time.perf_counter() - clock._mark)

        return _Clock()


@contextlib.contextmanager
def clocked(clock: EpochClock):
    """The distillation's Trainer with `clock` among its callbacks (for the duration of one run)."""
    import repfusion.distill.run as distill_run

    real = distill_run.build_trainer

    def build(*args, **kwargs):
        trainer = real(*args, **kwargs)
        trainer.callbacks.append(clock.callback())
        return trainer

    distill_run.build_trainer = build
    try:
        yield
    finally:
        distill_run.build_trainer = real


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "cifar10-subset")
    parser.add_argument("--teacher", default=str(SHARED / "teachers" / "cifar10-subset-ddpm-small"))
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--epochs", type=int, nargs="+", default=[6, 12, 24])
    parser.add_argument("--random-epochs", type=int, nargs="*", default=None,
                        help="Epoch counts that also run the random-teacher control (default: the first and last).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "distill_cache")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--lock", type=Path, default=None,
                        help="A lock file (as flock uses) each training takes, one at a time, on a shared machine.")
    args = parser.parse_args()
    if not args.data.exists() or not Path(args.teacher).exists():
        print(f"skipped: {args.data} or {args.teacher} is absent (this benchmark needs ../shared).")
        return
    from repfusion.analysis.plots import plt
    from repfusion.data import DataConfig, ImageDataModule
    from repfusion.distill.run import run_distillation
    from repfusion.io import save_figure, write_json, write_text

    root = str(args.data / "cifar-10-batches-py")
    data = DataConfig(source="cifar", root=root, batch_size=128, val_fraction=0.1, flip=True)
    splits = ImageDataModule(data)
    splits.setup()
    ns = argparse.Namespace(teacher=args.teacher, width=args.width, distill_epochs=1)

    speed: dict[int, dict[str, float]] = {}
    for views in (0, args.views):  # one 3-epoch run each, timed inside the Trainer (EpochClock)
        ns.distill_epochs = 3
        cfg = dataclasses.replace(distill_config("ours", ns, data, args.seed), cache_views=views)
        cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, limit_val_batches=0))
        run_dir = args.work / f"speed-views{views}"
        shutil.rmtree(run_dir, ignore_errors=True)  # the benchmark's own scratch folder: timed from nothing
        clock = EpochClock()
        with held(args.lock), clocked(clock):
            start = time.perf_counter()
            run_distillation(cfg, run_dir, resume=False)
            total = time.perf_counter() - start
        speed[views] = {"per_epoch_s": statistics.median(clock.epochs), "epochs_s": clock.epochs,
                        "fill_s": clock.fill, "total_s": total}
        print(f"views {views}: {speed[views]['per_epoch_s']:.1f} s an epoch (median of {clock.epochs}), "
              f"{clock.fill:.1f} s from train start to the first epoch (the cache fill)", flush=True)

    curve: dict[str, dict[int, float]] = {"ours": {}, "ours-random": {}}
    seconds: dict[str, dict[int, float]] = {"ours": {}, "ours-random": {}}
    random_epochs = args.random_epochs if args.random_epochs is not None else sorted({args.epochs[0], args.epochs[-1]})
    for epochs in args.epochs:
        for arm in ("ours", "ours-random"):
            if arm == "ours-random" and epochs not in random_epochs:
                continue
            ns.distill_epochs = epochs
            cfg = dataclasses.replace(distill_config(arm, ns, data, args.seed), cache_views=args.views)
            summary = distil_and_probe(cfg, args.work / arm / f"epochs{epochs}", splits, args.lock)
            curve[arm][epochs] = summary["val_probe"]["linear_probe"]
            seconds[arm][epochs] = summary["seconds"]
            print(f"{arm:>11} {epochs:>3} cached epochs: val probe {100 * curve[arm][epochs]:.2f} % "
                  f"({summary['seconds']:.0f} s)", flush=True)

    same_time = (args.epochs[0] * speed[0]["per_epoch_s"] - speed[args.views]["fill_s"]) / speed[args.views]["per_epoch_s"]
    command = portable_command()
    write_json(args.out / "distill_cache.json", {
        "command": command, "config": {k: portable(v) for k, v in vars(args).items()}, "seeds": [args.seed],
        "speed": {"no_cache": speed[0], "cache": speed[args.views], "views": args.views,
                  "speed_up_per_epoch": speed[0]["per_epoch_s"] / speed[args.views]["per_epoch_s"],
                  f"cached_epochs_in_the_time_of_{args.epochs[0]}": same_time},
        "probe": {arm: {str(k): v for k, v in c.items()} for arm, c in curve.items()},
        "seconds": {arm: {str(k): v for k, v in c.items()} for arm, c in seconds.items()}})
    lines = ["# Cached teacher targets: speed, and the student probe against distillation epochs", "",
             f"Command: `{command}`", "",
             f"CIFAR subset, `ours` recipe of cifar_transfer.py, student resnet18_cifar width {args.width}, seed "
             f"{args.seed}, one machine. Speed: one 3-epoch run of each (batch 128, no validation), each training "
             "epoch timed inside the Trainer (median of the three); the fill is the time from the start of training "
             f"to the first epoch, where the cache runs the teacher once on every training image x {args.views} "
             "views.", "",
             "| variant | seconds an epoch (median) | epochs (s) | cache fill (s) |", "|---|---|---|---|",
             f"| teacher every step | {speed[0]['per_epoch_s']:.1f} | "
             f"{', '.join(f'{e:.1f}' for e in speed[0]['epochs_s'])} | - |",
             f"| cached, {args.views} views | {speed[args.views]['per_epoch_s']:.1f} | "
             f"{', '.join(f'{e:.1f}' for e in speed[args.views]['epochs_s'])} | {speed[args.views]['fill_s']:.1f} |",
             "",
             f"Speed-up an epoch: {speed[0]['per_epoch_s'] / speed[args.views]['per_epoch_s']:.2f}x. In the time of "
             f"{args.epochs[0]} epochs with the teacher run every step ({args.epochs[0] * speed[0]['per_epoch_s']:.0f} s) "
             f"the cache gives {same_time:.1f} epochs, fill included.", "",
             "| cached epochs | ours val probe (%) | ours-random val probe (%) | ours seconds (with validation and probe) |", "|---|---|---|---|"]
    for epochs in args.epochs:
        rnd = curve["ours-random"].get(epochs)
        lines.append(f"| {epochs} | {100 * curve['ours'][epochs]:.2f} | {'-' if rnd is None else f'{100 * rnd:.2f}'} | "
                     f"{seconds['ours'][epochs]:.0f} |")
    write_text(args.out / "distill_cache.md", "\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for arm, c in curve.items():
        if c:
            ax.plot(list(c), [100 * v for v in c.values()], marker="o", label=arm)
    ax.set_xlabel("distillation epochs (cached targets)")
    ax.set_ylabel("frozen student, val linear probe (%)")
    ax.legend()
    save_figure(fig, args.out / "distill_cache.png")


if __name__ == "__main__":
    main()
