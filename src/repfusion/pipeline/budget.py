"""Budgets that fit the machine: the epochs and width `pretrain` uses where the user gave none.

A GPU budget is the recipe the benchmarks measured (teacher 40 epochs, distillation 30, fine-tuning 50, full
width); on a laptop CPU that is hours for a few thousand images, so the CPU budget is what a 2-core machine
can finish on such a folder (teacher 12, distillation 6, fine-tuning 25, width 0.25: the budgets the issue's user
gave by hand, 18 min on 3,678 digits; with the step floors below a 5,000-image CIFAR folder at 10 % labels and 5
seeds takes about an hour, 59:30 on a 2-core EPYC). `budget: auto` picks by the accelerator the
trainer would use. On a small folder an epoch is a few steps (1,287 digits at batch 128: 10), so the budget's
distillation epochs are raised until each distillation takes `MIN_DISTILL_STEPS` steps (at most `MAX_EPOCH_RAISE`
times the budget's epochs): with 60 steps the distilled student's frozen probe on a digits folder sat 3 points under
its random initialisation, with 240 it sat 4.4 above (benchmarks/results/distill_steps_digits.md). The same holds
for fine-tuning on a small label budget (143 labelled digits at batch 16: 8 steps an epoch, the last partial batch
dropped): its epochs are raised until each fine-tuning takes `MIN_FINETUNE_STEPS` steps (at most
`MAX_FINETUNE_RAISE` times the budget's): at 100 epochs instead of 25 every arm's validation top-1 rose on the digits
folder (RepFusion 90.2 -> 94.7 %) and on the CIFAR folder at 10 % labels (44.3 -> 45.1 %), and stayed level at 1 %
(benchmarks/results/finetune_epochs_*.md). Where the teacher's targets will be cached, the time the cache saves is
given back as more distillation epochs (`raise_for_cache`, decided with the estimate, undone after the layer choice
if the chosen input is not cached), so the run takes about as long as with the teacher every step. A wall-time
target (`time: 30min`) instead scales every epoch count it did not get from the user so that the up-front estimate
(`estimate.py`) fits the target. Values given on the command line or in YAML are never changed: the budget fills
only what is left null.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from ..errors import RepFusionError
from ..students.external import is_external
from .config import PretrainRun

BUDGET_NAMES = ("auto", "cpu", "gpu")
SIZED = ("teacher.epochs", "distill.epochs", "finetune.epochs")  # what a time target scales
MIN_DISTILL_STEPS = 240  # steps each distillation takes at the least where the budget fills its epochs
MAX_EPOCH_RAISE = 10  # ... but never more than this many times the budget's distillation epochs
MIN_FINETUNE_STEPS = 900  # steps each fine-tuning takes at the least where the budget fills its epochs ...
MAX_FINETUNE_RAISE = 4  # ... but never more than this many times the budget's fine-tuning epochs (as measured)
AUTO_CACHE_VIEWS = 2  # stored views an image of the teacher's targets where distill.cache_views is null ...
CACHE_LIMIT_BYTES = 2 * 2**30  # ... and the images with their targets fit in this much memory
MAX_CACHE_RAISE = 4  # the cache's saved time buys at most this many times the budget's distillation epochs


@dataclass(frozen=True)
class Budget:
    teacher_epochs: int
    distill_epochs: int
    finetune_epochs: int
    width: float


BUDGETS = {"gpu": Budget(teacher_epochs=40, distill_epochs=30, finetune_epochs=50, width=1.0),
           "cpu": Budget(teacher_epochs=12, distill_epochs=6, finetune_epochs=25, width=0.25)}


@dataclass
class BudgetChoice:
    """What was filled in, and why; printed with the facts and kept in the report."""

    name: str
    reason: str
    filled: dict[str, float]
    target_s: float | None = None
    uncached_epochs: int | None = None  # distillation epochs before `raise_for_cache` raised them (None: not raised)

    def line(self) -> str:
        given = ", ".join(f"{k} {v:g}" for k, v in self.filled.items()) or "nothing (every budget was given)"
        target = f", sized to {self.target_s / 60:g} min" if self.target_s else ""
        return f"budget {self.name} ({self.reason}{target}): {given}"


def parse_duration(text: str) -> float:
    """'30min', '1h', '90s', '1h30min', '45' (minutes) -> seconds; one sentence for anything else."""
    units = {"h": 3600, "hr": 3600, "hour": 3600, "hours": 3600, "m": 60, "min": 60, "mins": 60, "minutes": 60,
             "s": 1, "sec": 1, "seconds": 1}
    cleaned = str(text).strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", cleaned):
        seconds = float(cleaned) * 60
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)([a-z]+)", cleaned)
        if not parts or "".join(n + u for n, u in parts) != cleaned or any(u not in units for _, u in parts):
            raise RepFusionError(f"time must be a duration such as 30min, 1h, 1h30min or 90s, not '{text}'.")
        seconds = sum(float(n) * units[u] for n, u in parts)
    if seconds < 60:
        raise RepFusionError(f"time {text} is under a minute; give at least 1min (the estimate alone takes seconds).")
    return seconds


def check_budget(cfg: PretrainRun) -> None:
    if cfg.budget not in BUDGET_NAMES:
        raise RepFusionError(f"budget must be one of {', '.join(BUDGET_NAMES)}, not '{cfg.budget}'.")
    if cfg.time is not None:
        parse_duration(cfg.time)


def accelerated(accelerator: str) -> bool:
    """Whether the trainer would run on a GPU: what `budget: auto` reads."""
    import torch

    return str(accelerator) in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def raised_epochs(budget_epochs: int, epoch_steps: int | None, min_steps: int, max_raise: int) -> int:
    """The budget's epochs, raised on a small folder (few steps an epoch) to `min_steps` steps, at most
    `max_raise` times; as they are where the steps an epoch are not known."""
    if not epoch_steps:
        return budget_epochs
    wanted = math.ceil(min_steps / epoch_steps)
    return max(budget_epochs, min(wanted, max_raise * budget_epochs))


def auto_cache_views(mode: str, images: int, image_bytes: int, target_bytes: int) -> tuple[int, str]:
    """Stored views of the teacher's targets for a null `distill.cache_views`, and the reason said with them.

    Cached targets are exact (the truncated teacher is a fixed function of a clean image) and 1.85x faster an
    epoch on the CIFAR subset (distill_cache.md); each image is then seen in 2 fixed views, which moved the frozen
    student's probe by -1.42 [-5.84, +3.00] points on CIFAR at equal epochs (cache_pairs.md, 5 seeds) and by +3.0
    on the digits folder (85.6 against 82.5 %, 3 seeds): inside the noise both ways. The cost is memory on the
    training device: every image (uint8) and `AUTO_CACHE_VIEWS` targets of it. Over `CACHE_LIMIT_BYTES` (a large
    folder, a deep layer) the teacher runs every step, and the user may still ask for a cache by hand."""
    if mode != "clean":
        return 0, "the teacher every step (the chosen input is noised: its targets change every step)"
    held = images * (image_bytes + AUTO_CACHE_VIEWS * target_bytes)
    size = f"{images} images x {AUTO_CACHE_VIEWS} views, {held / 2**20:,.0f} MB"
    if held > CACHE_LIMIT_BYTES:
        return 0, (f"the teacher every step: cached targets would take {size}, over the {CACHE_LIMIT_BYTES / 2**30:g} "
                   "GB the cache may hold (--distill.cache_views N caches them anyway)")
    return AUTO_CACHE_VIEWS, f"cached once, not every step ({size}; --distill.cache_views 0 turns it off)"


def raise_for_cache(cfg: PretrainRun, choice: BudgetChoice,
                    distil_s: Callable[[PretrainRun], float]) -> tuple[PretrainRun, BudgetChoice]:
    """Give the time the cached teacher targets save back to the student as distillation epochs (issue 23, item 3).

    Decided up front, with the estimate: where the budget filled `distill.epochs` and the estimate counts the targets
    as cached (`distill.cache_views` given or null, clean input only), the epochs become as many as fit in the
    estimated time of the same distillation with the teacher run every step, cache fill included (at most
    `MAX_CACHE_RAISE` times). Not with a time target (its epochs are sized with the cache already counted).
    `distil_s(cfg)` is the estimated distillation stage for a config. The budget keeps the epochs it had
    (`uncached_epochs`), which `undo_cache_raise` restores if the targets are not cached after the choice.
    The student probe rose with cached epochs on the CIFAR subset (38.0, 40.2, 43.7 % at 6, 12, 24: distill_cache.md);
    on the digits folder 34 epochs instead of 24 lifted RepFusion by 1.3 points and equal-compute scratch, whose
    steps grow with the distillation's, by 0.9 (estimate_check_raise.md, seeds 0-2)."""
    epochs = cfg.distill.epochs
    if choice.target_s or "distill.epochs" not in choice.filled or cfg.distill.cache_views == 0 or not epochs:
        return cfg, choice

    def with_(views: int | None, count: int) -> PretrainRun:
        return replace(cfg, distill=replace(cfg.distill, cache_views=views, epochs=count))

    views = cfg.distill.cache_views
    every_step, cached = distil_s(with_(0, epochs)), distil_s(cfg)
    every_step_epoch_s = distil_s(with_(0, epochs + 1)) - every_step
    epoch_s = distil_s(with_(views, epochs + 1)) - cached
    if epoch_s <= 0 or every_step <= cached + epoch_s:  # not cached (noised candidates), or the fill eats the saving
        return cfg, choice
    raised = min(MAX_CACHE_RAISE * epochs, epochs + math.floor((every_step - cached) / epoch_s))
    why = (f"distillation {raised} epochs, not {epochs}, where the teacher's targets are cached: an epoch then takes "
           f"{epoch_s:.0f} s instead of {every_step_epoch_s:.0f} s (all its runs), so the student gets the epochs the "
           f"teacher-every-step run would take ({every_step / 60:.1f} min)")
    return (replace(cfg, distill=replace(cfg.distill, epochs=raised)),
            replace(choice, filled={**choice.filled, "distill.epochs": raised}, reason=f"{choice.reason}; {why}",
                    uncached_epochs=epochs))


def undo_cache_raise(cfg: PretrainRun, choice: BudgetChoice,
                     views: int) -> tuple[PretrainRun, BudgetChoice, str | None]:
    """After the choice: epochs raised for a cache that the chosen input does not get (`views` 0: a noised input,
    targets too large) go back to the budget's (`uncached_epochs`), said in a sentence (None: nothing to undo)."""
    if choice.uncached_epochs is None or views > 0:
        return cfg, choice, None
    epochs = choice.uncached_epochs
    why = f"distillation {epochs} epochs after all: the teacher's targets are not cached for the chosen input"
    return (replace(cfg, distill=replace(cfg.distill, epochs=epochs)),
            replace(choice, filled={**choice.filled, "distill.epochs": epochs}, reason=f"{choice.reason}; {why}",
                    uncached_epochs=None), why)


def apply_budget(cfg: PretrainRun, on_gpu: bool, distill_epoch_steps: int | None = None,
                 finetune_epoch_steps: int | None = None) -> tuple[PretrainRun, BudgetChoice]:
    """`cfg` with every null epoch count and width taken from the budget; the values given are kept (`cfg` has
    passed `check_budget`, in `check_pretrain`; each null is one its section allows).

    `distill_epoch_steps` / `finetune_epoch_steps` (the steps of one distillation / fine-tuning epoch on this
    folder): those epochs are raised to at least `MIN_DISTILL_STEPS` / `MIN_FINETUNE_STEPS` steps (capped);
    without them the budget's epochs are used as they are."""
    name = cfg.budget if cfg.budget != "auto" else ("gpu" if on_gpu else "cpu")
    reason = "as asked" if cfg.budget != "auto" else ("auto: a CUDA GPU" if on_gpu else "auto: no GPU, a CPU")
    budget = BUDGETS[name]
    distill_epochs = raised_epochs(budget.distill_epochs, distill_epoch_steps, MIN_DISTILL_STEPS, MAX_EPOCH_RAISE)
    finetune_epochs = raised_epochs(budget.finetune_epochs, finetune_epoch_steps, MIN_FINETUNE_STEPS,
                                    MAX_FINETUNE_RAISE)
    for stage, given, epochs, default, steps, least in (
            ("distillation", cfg.distill.epochs, distill_epochs, budget.distill_epochs, distill_epoch_steps,
             MIN_DISTILL_STEPS),
            ("fine-tuning", cfg.finetune.epochs, finetune_epochs, budget.finetune_epochs, finetune_epoch_steps,
             MIN_FINETUNE_STEPS)):
        if given is None and steps and epochs > default:
            reason += (f"; {stage} {epochs} epochs, not {default}, so that it takes {epochs * steps} steps "
                       f"({steps} an epoch; at least {least} where the cap allows)")
    external = cfg.student.arch is not None and is_external(cfg.student.arch)  # no width multiplier to set
    filled: dict[str, float] = {}

    def pick(key: str, value, default):
        if value is None:
            filled[key] = default
            return default
        return value

    out = replace(cfg,
                  teacher=replace(cfg.teacher, epochs=pick("teacher.epochs", cfg.teacher.epochs, budget.teacher_epochs)),
                  distill=replace(cfg.distill, epochs=pick("distill.epochs", cfg.distill.epochs, distill_epochs)),
                  finetune=replace(cfg.finetune,
                                   epochs=pick("finetune.epochs", cfg.finetune.epochs, finetune_epochs)),
                  student=replace(cfg.student, width=pick("student.width", cfg.student.width,
                                                          1.0 if external else budget.width)))
    return out, BudgetChoice(name, reason, filled)


def fit_to_time(cfg: PretrainRun, choice: BudgetChoice, stage_seconds: dict[str, float],
                per_epoch: dict[str, float], target_s: float) -> tuple[PretrainRun, BudgetChoice]:
    """Scale the epoch counts the budget filled so the estimated total meets `target_s`.

    `stage_seconds` is the estimate at the budget's epochs and `per_epoch` each sized key's seconds per epoch
    (all its runs together); what does not scale with epochs (the choice, probes) is kept fixed. Never below one
    epoch; a target that even one epoch each cannot meet is said, not silently exceeded."""
    sized = [key for key in SIZED if key in choice.filled]
    variable = sum(per_epoch[key] * choice.filled[key] for key in sized)
    fixed = sum(stage_seconds.values()) - variable
    if not sized or variable <= 0:
        return cfg, replace(choice, target_s=target_s)
    scale = max(0.0, (target_s - fixed) / variable)
    epochs = {key: max(1, math.floor(choice.filled[key] * scale)) for key in sized}
    least = fixed + sum(per_epoch[key] for key in sized)
    if least > target_s:
        raise RepFusionError(f"time {target_s / 60:g} min is too short for this data on this machine: even one epoch "
                             f"of each stage is estimated at {least / 60:.1f} min; give a longer --time, fewer "
                             "--seeds, or smaller epoch counts by hand.")
    out = cfg
    for key, value in epochs.items():
        section, _ = key.split(".")
        out = replace(out, **{section: replace(getattr(out, section), epochs=value)})
    return out, replace(choice, filled={**choice.filled, **epochs}, target_s=target_s)


def budget_record(choice: BudgetChoice) -> dict:
    return asdict(choice)
