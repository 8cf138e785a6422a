"""One experiment runner for every task: the arms of `arms` distilled per seed, fine-tuned and compared.

`repfusion pretrain` (classification on a folder of images, `pipeline.run`) and the dense demos
(segmentation and landmarks on the generated faces, `dense_demo`) are this runner over a task of the task
registry (`tasks.TASKS`); the classification demo is `pretrain` on the embedded digits. What each caller keeps is
what differs: how a distillation's and a fine-tune's config is built for an arm and a seed (its recipe, data and
budget), the stages around the arms (teacher, layer choice, export, probes), its progress lines and its report.
What the runner owns is what must not differ, or the comparisons would not mean the same: which arms run, how a
finished run is reused on --resume, which test metric is read off each fine-tune and how the arms are paired.
"""

from __future__ import annotations

import json
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .arms import TEACHERS, Menu, compare_arms, distill_arms, finetune_arms, results_table, verdict
from .errors import RepFusionError
from .tasks.registry import TASKS

if TYPE_CHECKING:
    from .distill.run import DistillRun
    from .tasks.finetune import FinetuneRun

# runs one named stage of the caller's and returns what it returned (the caller's progress lines and seconds)
Stage = Callable[[str, Callable[[], Any]], Any]


@dataclass(frozen=True)
class TaskMetric:
    """What the arms are compared on: a key of each fine-tune's results.json (the test split's value of the
    task's monitored metric) and how it reads. `paired`: the paired entries' `metric`, as results.json and the
    reports have always named it; `heading`: the results table's metric column."""

    key: str
    name: str
    paired: str
    higher_is_better: bool
    heading: str
    scale: float = 100.0
    unit: str = "%"

    def shown(self, value: float) -> str:
        return f"test {self.name} {self.scale * value:.2f} {self.unit}"

    def read(self, run_dir: Path) -> float:
        """The metric of a finished fine-tune, from its results.json."""
        return float(json.loads((run_dir / "results.json").read_text())[self.key])

    @property
    def val_key(self) -> str:
        """The validation split's value of the same metric (what a choice between runs may read)."""
        return "val/" + self.key.removeprefix("test/")

    def read_val(self, run_dir: Path) -> float:
        """The kept weights' validation score of a finished fine-tune, from its results.json."""
        results = json.loads((run_dir / "results.json").read_text())
        if self.val_key not in results:
            raise RepFusionError(f"{run_dir} has no validation score ({self.val_key}) to choose a protocol by; "
                                 "give the fine-tunes a validation split (data.val_fraction > 0).")
        return float(results[self.val_key])


# one per task of `tasks.TASKS`, its key the test split's value of the task's monitor (tests/test_experiment.py)
METRICS = {
    "classification": TaskMetric("test/top1", "top-1", "test_top1", True, "test top-1 (mean ± std)"),
    "segmentation": TaskMetric("test/miou", "mIoU", "miou", True, "test mIoU (higher is better; mean ± std)"),
    "landmarks": TaskMetric("test/nme", "NME", "nme", False, "test NME (lower is better; mean ± std)"),
}


def task_metric(task: str) -> TaskMetric:
    """The metric a task's arms are compared on; an unknown task is the registry's one sentence."""
    return METRICS[TASKS.get(task).name]


@dataclass(frozen=True)
class Experiment:
    """One comparison of the arms on one task, in `out` (`distill-ARM-seedS/`, `finetune-ARM-seedS/`).

    distill: (teacher.init, seed) -> that distillation's config; finetune: (the distilled folder to start from,
    None for the scratch arms; seed) -> that fine-tune's config. compare: False for a label-free run: one
    distillation, from the trained teacher, and nothing fine-tuned or compared. fraction: the label fraction
    the paired entries record (None: not recorded). `seeds` and `resume` are what `arms` reads. protocols:
    the fine-tuning protocols every arm runs (`tasks.protocols`), several chosen between per seed and arm on the
    validation split; `apply(run, name)` gives a fine-tune's config under one (the caller's protocol settings).
    first_seed: the first of the `seeds` seeds (`arms.seed_range`)."""

    task: str
    out: Path
    seeds: int
    resume: bool
    distill: Callable[[str, int], DistillRun]
    finetune: Callable[[Path | None, int], FinetuneRun]
    compare: bool = True
    fraction: float | None = None
    protocols: tuple[str, ...] = ("plain",)
    apply: Callable[[FinetuneRun, str], FinetuneRun] = lambda run, name: run
    first_seed: int = 0

    def __post_init__(self) -> None:
        task_metric(self.task)  # an unknown task stops here, before anything runs

    @property
    def distilled(self) -> Plan:
        """What the distillations run (`arms.distill_arms`): every seed, or without labels, where nothing compares
        the controls, the first seed alone."""
        return Plan(self.seeds if self.compare else 1, self.resume, self.first_seed)

    @property
    def menu(self) -> Menu:
        metric = self.metric
        return Menu(self.protocols, self.apply, metric.read_val, metric.higher_is_better)

    @property
    def metric(self) -> TaskMetric:
        return task_metric(self.task)


@dataclass(frozen=True)
class Comparison:
    """Every arm's runs, their summary (mean, std, runs) and the seed-paired differences with one verdict;
    the fine-tuning protocol kept per arm and seed, and with several protocols each one's validation and test
    scores per arm and seed (`arms.ArmScores`)."""

    metric: TaskMetric
    arms: dict[str, list[float]]
    summary: dict[str, dict[str, Any]]
    pairs: list[dict]
    verdict: str
    protocols: dict[str, list[str]] = field(default_factory=dict)
    by_protocol: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)

    def table(self, more_pairs: list[dict] | None = None) -> str:
        """The arms and the paired rows (and `more_pairs`, a caller's own paired entries) as Markdown."""
        return results_table(self.summary, self.pairs + (more_pairs or []), self.metric.scale, self.metric.unit,
                             self.metric.heading)


def run_arms(exp: Experiment, stage: Stage, distill_stage: str, finetune_stage: str,
             between: Callable[[], None] | None = None) -> Comparison | None:
    """Distil every arm per seed (stage `distill_stage`), then the caller's `between` (stages on the distilled
    backbones: export, probes), fine-tune every arm on every seed (`finetune_stage`) and compare them on the
    task's metric. Label-free (`exp.compare` False): the one distillation, `between`, and None."""
    teachers = TEACHERS if exp.compare else {"repfusion": TEACHERS["repfusion"]}
    stage(distill_stage, lambda: distill_arms(exp.distilled, exp.out, exp.distill, teachers))
    if between is not None:
        between()
    if not exp.compare:
        return None
    metric = exp.metric
    found = stage(finetune_stage, lambda: finetune_arms(exp, exp.out, exp.finetune, metric.read, metric.shown,
                                                        exp.menu))
    summary, pairs = compare_arms(found.scores, metric.paired, metric.higher_is_better, exp.fraction)
    return Comparison(metric, found.scores, summary, pairs, verdict(pairs), found.protocols, found.by_protocol)


@dataclass(frozen=True)
class Plan:
    """What `arms` reads off a config: the seeds and whether finished runs are reused."""

    seeds: int
    resume: bool
    first_seed: int = 0


def peak_rss_mb() -> float:
    """This process's peak resident memory, for a report's cost section (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


__all__ = ["METRICS", "Comparison", "Experiment", "TaskMetric", "peak_rss_mb", "run_arms", "task_metric"]
