"""The arms every demo runs, per seed, and how they are compared (../shared/docs/evidence.md).

Per seed s: a distillation from the trained teacher and one from a teacher of the same architecture with
random weights drawn from s (`teacher.init: random`), then four fine-tunes on the same labelled subset:
scratch, equal-compute scratch (as many optimiser steps as distillation + fine-tuning), RepFusion
(the trained teacher's student) and random-teacher (the random teacher's student). RepFusion -
random-teacher is what the diffusion model's knowledge adds; RepFusion - scratch also counts what
distilling any fixed network gives; RepFusion - scratch-equal what extra training alone does not explain.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .analysis.controls import distill_steps, equal_compute_epochs, labelled_images, paired_entry
from .tasks.finetune import FinetuneRun, run_finetune

ARMS = ("scratch", "scratch-equal", "repfusion", "random-teacher")
TEACHERS = {"repfusion": "pretrained", "random-teacher": "random"}  # distilled arm -> teacher.init
CONTROLS = ("random-teacher", "scratch", "scratch-equal")


def seed_range(cfg: Any) -> range:
    """The seeds a plan or experiment runs: `seeds` of them from `first_seed` (0 unless the caller sets it)."""
    first = getattr(cfg, "first_seed", 0)
    return range(first, first + cfg.seeds)


def distill_dir(out: Path, arm: str, seed: int) -> Path:
    return out / f"distill-{arm}-seed{seed}"


def init_of(out: Path, arm: str, seed: int) -> Path | None:
    return distill_dir(out, arm, seed) if arm in TEACHERS else None


def run_once(done: Path, run: Callable[[bool], Any], run_dir: Path, cfg: Any) -> Any:
    """Skip a stage whose output exists; continue an interrupted one from its checkpoint (--resume)."""
    if done.exists():
        return None
    resume = cfg.resume and (run_dir / "checkpoints" / "last.ckpt").exists()
    return run(resume)


def distill_arms(cfg: Any, out: Path, make_run: Callable[[str, int], Any],
                 teachers: dict[str, str] = TEACHERS) -> None:
    """Per seed, the distillation from each of `teachers` (arm -> teacher.init: by default the trained teacher
    and the random-weight one); `make_run(init, seed)` gives the run's config, so each demo keeps its own recipe."""
    from .distill.run import run_distillation

    for seed in seed_range(cfg):
        for arm, init in teachers.items():
            run_dir = distill_dir(out, arm, seed)
            run_once(run_dir / "student" / "config.json",
                     lambda r: run_distillation(make_run(init, seed), run_dir, r), run_dir, cfg)


def equal_compute(run: FinetuneRun, distilled: Path) -> FinetuneRun:
    """The scratch run stretched to the steps of that seed's distillation plus its fine-tuning."""
    from dataclasses import replace

    epochs = equal_compute_epochs(distill_steps(distilled), labelled_images(run.data), run.data.batch_size,
                                  run.trainer.max_epochs)
    return replace(run, init=None, trainer=replace(run.trainer, max_epochs=epochs))


@dataclass(frozen=True)
class Menu:
    """The fine-tuning protocols (`tasks.protocols`) every arm runs on every seed, and how one is kept.

    One protocol: each arm's run is `finetune-ARM-seedS/`, as it always was. Several: each arm and seed runs each
    (`finetune-ARM-seedS-PROTOCOL/`; a scratch arm's teacher in the loop is its plain run, not run twice) and
    the one with the best validation score (`val_score`, read off the run) is the one reported; the test split
    never chooses, and every arm has the same menu."""

    names: tuple[str, ...] = ("plain",)
    apply: Callable[[FinetuneRun, str], FinetuneRun] = lambda run, name: run
    val_score: Callable[[Path], float] | None = None
    higher_is_better: bool = True

    def run_dir(self, out: Path, arm: str, seed: int, protocol: str) -> Path:
        base = out / f"finetune-{arm}-seed{seed}"
        return base if len(self.names) == 1 else base.with_name(f"{base.name}-{protocol}")


@dataclass
class ArmScores:
    """Each arm's test score per seed (of the protocol kept), the protocol kept per seed, and with several
    protocols every protocol's validation and test scores per seed (an observation beside the choice)."""

    scores: dict[str, list[float]]
    protocols: dict[str, list[str]]
    by_protocol: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)


def finetune_arms(cfg: Any, out: Path, make_run: Callable[[Path | None, int], FinetuneRun],
                  score: Callable[[Path], float], show: Callable[[float], str], menu: Menu = Menu()) -> ArmScores:
    """Every arm on every seed under every protocol of `menu`, each a finished run reused on --resume; one score
    per arm and seed, the protocol kept chosen on validation when there are several."""
    from .tasks.protocols import chosen, effective

    found = ArmScores({arm: [] for arm in ARMS}, {arm: [] for arm in ARMS})
    for seed in seed_range(cfg):
        for arm in ARMS:
            init = init_of(out, arm, seed)
            runs: dict[str, tuple[Path, FinetuneRun]] = {}
            for name in dict.fromkeys(effective(n, init is not None) for n in menu.names):
                run = make_run(init, seed)
                if arm == "scratch-equal":  # stretched first, so a protocol sized by the epochs (lp) sees them all
                    run = equal_compute(run, distill_dir(out, "repfusion", seed))
                run = menu.apply(run, name)
                run_dir = menu.run_dir(out, arm, seed, name)
                run_once(run_dir / "results.json", lambda r: run_finetune(run, run_dir, r), run_dir, cfg)
                runs[name] = run_dir, run
            test = {name: score(run_dir) for name, (run_dir, _) in runs.items()}
            kept = next(iter(runs))
            if len(menu.names) > 1:
                assert menu.val_score is not None, "several protocols need a validation score to choose by"
                val = {name: menu.val_score(run_dir) for name, (run_dir, _) in runs.items()}
                kept = chosen(val, menu.higher_is_better)
                for name in runs:
                    seen = found.by_protocol.setdefault(arm, {}).setdefault(name, {"val": [], "test": []})
                    seen["val"].append(val[name])
                    seen["test"].append(test[name])
            run = runs[kept][1]
            found.scores[arm].append(test[kept])
            found.protocols[arm].append(kept)
            said = f", protocol {kept} (validation)" if len(menu.names) > 1 else ""
            print(f"   seed {seed} {arm:>14}: {show(found.scores[arm][-1])} ({run.trainer.max_epochs} epochs{said})",
                  flush=True)
    return found


def compare_arms(arms: dict[str, list[float]], metric: str, higher_is_better: bool = True,
                 fraction: float | None = None) -> tuple[dict[str, dict[str, Any]], list[dict]]:
    """Per-arm mean, std and runs, and RepFusion against each control, seed-paired (points, 95 % interval).

    For a lower-is-better metric the differences are control - RepFusion, so a positive value is a gain.
    """
    summary = {arm: {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "runs": v}
               for arm, v in arms.items()}
    pairs = []
    for control in CONTROLS:
        a, b = ("repfusion", control) if higher_is_better else (control, "repfusion")
        pairs.append(paired_entry(a, b, arms[a], arms[b], metric, fraction))
    return summary, pairs


def results_table(summary: dict, pairs: list[dict], scale: float = 100.0, unit: str = "%",
                  heading: str = "test top-1 (mean ± std)") -> str:
    """Every arm (mean ± std and its runs, shown as value x `scale` `unit`) and the paired rows, as the reports
    and the printed result show them."""
    lines = [f"| arm | {heading} | runs |", "|---|---|---|"]
    for arm, s in summary.items():
        runs = ", ".join(f"{scale * r:.2f}" for r in s["runs"])
        lines.append(f"| {arm} | {scale * s['mean']:.2f} ± {scale * s['std']:.2f} {unit} | {runs} |")
    return "\n".join(lines + pairs_lines(pairs))


def pairs_lines(pairs: list[dict]) -> list[str]:
    from .analysis.controls import format_entry

    return [f"| {p['a']} - {p['b']} (paired, {p['n']} seeds, {p['metric']}) | {format_entry(p)} points, 95 % CI | |"
            for p in pairs]


def verdict(pairs: list[dict]) -> str:
    """One plain sentence on what the gain comes from, read off the intervals."""
    by_control = {p["b"] if p["a"] == "repfusion" else p["a"]: p for p in pairs}
    vs_random, vs_scratch = by_control["random-teacher"], by_control["scratch"]
    better = [control for control, p in by_control.items() if p["high"] < 0]
    if better:
        return (f"{' and '.join(better)} beat{'s' if len(better) == 1 else ''} RepFusion with the 95 % interval "
                "below zero: at this scale the distillation does not pay for the training it costs.")
    if vs_random["low"] > 0:
        return ("The trained teacher beats the random-weight teacher with the 95 % interval above zero: the "
                "diffusion model's knowledge transferred.")
    if vs_scratch["low"] > 0:
        return ("RepFusion beats scratch, but not the random-weight teacher (its interval includes zero or lies "
                "below it): here the gain comes from distilling a fixed convolutional network's features, not "
                "from what the diffusion model learned.")
    return "No arm's difference from RepFusion clears zero with 95 % confidence at this scale."


def cost_section(result: dict) -> str:
    timings = "\n".join(f"| {k} | {v:.1f} |" for k, v in result["timings_s"].items())
    return (f"## Cost\n\n| stage | seconds |\n|---|---|\n{timings}\n\nWall time {result['wall_s']:.0f} s, peak resident "
            f"memory {result['peak_rss_mb']:.0f} MB.\n")
