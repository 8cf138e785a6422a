"""`repfusion pretrain`: one config for the whole pipeline, one data section carried through every stage.

Sections follow the training verbs' dialect (`--data.root`, `--teacher.source`, `--student.arch`); the
stage budgets default to the recipe the CIFAR benchmark measured (dense hint on a decoder layer at
clean t = 0, label-free, per-channel standardised target), with the layer and t chosen per dataset by
a short probe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..data import DataConfig
from ..errors import RepFusionError
from ..jsondata import JSONValue
from ..section import Section, finite_number, whole_number
from ..tasks.protocols import LPFT_LR, ProtocolSettings, check_protocols
from ..training import TrainerConfig

PIPELINE_PRESETS = ("tiny-16", "small-32", "medium-32")  # the DDPMs the pipeline trains itself when no teacher is given


def _check_count(value: object, key: str, budget_may_fill: bool) -> None:
    """A whole number >= 1 (null where the run's budget fills it in later, `pipeline.budget.apply_budget`)."""
    if value is None and budget_may_fill:
        return
    if not whole_number(value) or value < 1:
        raise RepFusionError(f"{key} must be a whole number >= 1 (or null for the budget's), not {value}.")


@dataclass
class TeacherChoice(Section):
    """source: any teacher the project loads (preset, save_pretrained folder, pipeline folder, ADM .pt file,
    hub id); null trains a DDPM on the folder first (`preset`, default by image size: tiny-16 up to 16 px,
    small-32 above), for `epochs` epochs (null: from the run's budget), without labels."""

    KEY: ClassVar[str] = "teacher"

    source: str | None = None
    preset: str | None = None
    epochs: int | None = None
    lr: float = 2e-4
    ema_decay: float = 0.999
    class_label: int | str = "auto"
    adm_flags: str | dict[str, JSONValue] = "imagenet-64"
    uncond_embedding: str | None = None

    def __post_init__(self) -> None:
        _check_count(self.epochs, f"{self.KEY}.epochs", budget_may_fill=True)
        if self.source is None and (self.preset or "small-32") not in PIPELINE_PRESETS:
            raise RepFusionError(f"{self.KEY}.preset {self.preset} is not one the pipeline trains here; use "
                                 f"{' or '.join(PIPELINE_PRESETS)}, or give a trained teacher with --teacher.source.")


@dataclass
class StudentChoice(Section):
    """arch: a built-in student (default resnet18_cifar up to 64 px, resnet18 above) or timm:/torchvision: name;
    width: the channel multiplier (null: from the run's budget, 1.0 on a GPU, 0.25 on a CPU).

    Whether `arch` can be built is checked by `pipeline.run.check_pretrain`: it imports the student's library.
    """

    KEY: ClassVar[str] = "student"

    arch: str | None = None
    width: float | None = None

    def __post_init__(self) -> None:
        width = self.width
        if width is not None and (isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0):
            raise RepFusionError(f"{self.KEY}.width must be positive (or null for the budget's), not {width}.")


@dataclass
class LayerChoice(Section):
    """Candidates for the teacher layer and t; with one of each there is nothing to choose and no probe runs.

    layers: null = the teacher's encoder end, middle and decoder start. modes: clean input (t only through the
    time embedding, probed at the first of `timesteps`) by default, since on the CIFAR subset the downstream
    search found clean t = 0 best (benchmarks/results/recipe_search.md); add noised to probe each t of
    `timesteps` too (its probe gap flatters noise: a random teacher's features degrade with it). With labels, the choice is the
    largest linear-probe gap between the trained and a random-weight teacher on the validation split (what
    the teacher knows beyond its architecture); without (or with fewer than 200 labelled images), the decoder's
    first block, where that gap was largest on CIFAR (`pipeline.choice`; teachers without a decoder: the largest
    share of feature variance explained by the image rather than by t).
    """

    KEY: ClassVar[str] = "choice"

    layers: list[str] | None = None
    timesteps: list[int] = field(default_factory=lambda: [0, 100, 300])
    modes: list[str] = field(default_factory=lambda: ["clean"])
    max_images: int = 1000

    def __post_init__(self) -> None:  # the layers and t against the teacher: `pipeline.choice.check_choice`
        _check_count(self.max_images, f"{self.KEY}.max_images", budget_may_fill=False)


@dataclass
class StageBudget(Section):
    """epochs null: from the run's budget; lr: SGD (momentum 0.9) learning rate; batch_size null: data.batch_size,
    and for fine-tuning at most a sixth of the labelled images (a power of two, at least 16), so a small label
    budget still takes steps."""

    KEY: ClassVar[str] = "stage"  # each stage's own section names itself (distill, finetune)

    epochs: int | None = None
    lr: float = 0.1
    batch_size: int | None = None

    def __post_init__(self) -> None:
        _check_count(self.epochs, f"{self.KEY}.epochs", budget_may_fill=True)
        if not finite_number(self.lr) or self.lr <= 0:  # found here, not once the earlier stages have trained
            raise RepFusionError(f"{self.KEY}.lr must be a positive learning rate (e.g. 0.1), not {self.lr}.")
        if self.batch_size is not None and (not whole_number(self.batch_size) or self.batch_size < 1):
            raise RepFusionError(f"{self.KEY}.batch_size must be a whole number >= 1 (or null for data.batch_size), "
                                 f"not {self.batch_size}.")


@dataclass
class DistillBudget(StageBudget):
    """projector: mlp (default: a 1x1 conv - BatchNorm - ReLU - 1x1 conv regressor dropped after distillation, so
    the backbone need not copy what is specific to the teacher) or linear (the paper's 1x1 adapter); loss: hint,
    cosine, cosine_smoothl1, l1; target_stats: loss.target_stats (pooled: the target standardised by the pooled
    feature's statistics, about unit scale on the loss grid). With dense statistics (each position's own) the
    frozen student on the embedded digits fell 6.6 (linear) and 14.8 (mlp) points below its random
    initialisation; with pooled ones it sits 1.7 and 1.0 above it (tests/test_digits_probe_regression.py)."""

    KEY: ClassVar[str] = "distill"

    loss: str = "hint"
    projector: str = "mlp"
    target_stats: str = "pooled"
    # > 0: the teacher's targets computed once per training image and stored augmentation (that many views) instead
    # of every step, where the chosen input is clean (a noised target changes every step); 1.85x faster epochs on the
    # CIFAR subset (benchmarks/results/distill_cache.md), at the price of `cache_views` fixed crops per image; 0: the
    # teacher every step; null: `budget.auto_cache_views` decides after the choice (2 views where they fit in memory)
    cache_views: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cache_views is not None and (not whole_number(self.cache_views) or self.cache_views < 0):
            raise RepFusionError(f"distill.cache_views must be a whole number >= 0 (0: no cache) or null (cached "
                                 f"where it fits in memory), not {self.cache_views}.")

    def views_for(self, mode: str) -> int:
        """The stored views a distillation of this input gets: none for a noised one (its target changes every
        step), none while the count is still null (before `pipeline.run.with_cache` decides it)."""
        return (self.cache_views or 0) if mode == "clean" else 0


@dataclass
class FinetuneBudget(StageBudget):
    """The fine-tuning protocol, the same for every arm (issue 23):

    head_init probe: the head starts as the frozen backbone's logistic-regression probe (LP-FT);
    head_epochs: head-only SGD epochs first (backbone frozen); backbone_lr_scale: the backbone's lr over the head's;
    teacher_in_loop: w of the distillation term kept in the loss (0: off), on the labelled batch and on a batch of
    every training image; each distilled arm keeps its own teacher (the random-teacher student its random one),
    scratch arms have none.
    """

    KEY: ClassVar[str] = "finetune"

    head_init: str = "random"
    head_epochs: int = 0
    backbone_lr_scale: float = 1.0
    teacher_in_loop: float = 0.0
    # several: every arm runs each (`tasks.protocols`: plain, lpft, lp, joint) and per seed and arm the one with the
    # best validation top-1 is reported; the fields above then stay at their defaults (a menu entry replaces them).
    # null: [plain, lpft] where both can run (a linear fc head, a validation split), else plain; a protocol given by
    # hand (the fields above) is plain's menu (`pipeline.run.with_menu`)
    protocols: list[str] | None = None
    lpft_lr: float = LPFT_LR  # lpft: the rate once everything trains (plain keeps finetune.lr)
    joint_weight: float = 1.0  # joint: w of the distillation term kept in the loss

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.protocols is not None:
            self.protocols = list(check_protocols(self.protocols, f"{self.KEY}.protocols"))
        try:
            ProtocolSettings(self.lpft_lr, self.joint_weight)
        except RepFusionError as err:
            raise RepFusionError(f"{self.KEY}.{err}") from None
        by_hand = self.by_hand
        if self.protocols not in (None, ["plain"]) and by_hand:
            raise RepFusionError(f"Give the fine-tuning protocol either as {self.KEY}.protocols or by "
                                 f"{self.KEY}.{by_hand[0]}, not both: {self.protocols} already names what each run "
                                 "does (lpft: a probe head, lp: the probe kept, joint: the teacher in the loop).")

    @property
    def by_hand(self) -> list[str]:
        """The protocol fields set away from plain by hand (head_init, head_epochs, teacher_in_loop)."""
        return [key for key, default in (("head_init", "random"), ("head_epochs", 0), ("teacher_in_loop", 0.0))
                if getattr(self, key) != default]

    @property
    def settings(self) -> ProtocolSettings:
        return ProtocolSettings(self.lpft_lr, self.joint_weight)


@dataclass
class PretrainRun:
    """Folder -> teacher (given or trained) -> layer/t choice -> distillation (trained and random-weight
    teacher, per seed) -> exported backbone -> with labels: frozen probes and fine-tuning of RepFusion,
    scratch, equal-compute scratch and the random-teacher student on a stratified label fraction -> report.

    trainer: hardware, precision, loggers, EMA and progress for every stage; each stage sets its own
    max_epochs (teacher.epochs, distill.epochs, finetune.epochs) and seed.

    budget: what fills the epoch counts and the width left null (`pipeline.budget`): gpu (teacher 40, distill 30,
    finetune 50 epochs, width 1.0), cpu (12, 6, 25, width 0.25), or auto (gpu where the trainer finds a CUDA
    GPU, else cpu). time: a wall-time target (30min, 1h30min) that scales those filled epoch counts so the
    up-front estimate fits it; values given by hand are never changed.

    seed_offset: the first seed (seeds are seed_offset, seed_offset + 1, ...), so a result is rerun on seeds it
    never used: each seed draws its own distillations, random teacher and labelled subset.
    """

    data: DataConfig = field(default_factory=lambda: DataConfig(source="folder", labels="auto"))
    teacher: TeacherChoice = field(default_factory=TeacherChoice)
    student: StudentChoice = field(default_factory=StudentChoice)
    choice: LayerChoice = field(default_factory=LayerChoice)
    distill: DistillBudget = field(default_factory=DistillBudget)
    finetune: FinetuneBudget = field(default_factory=FinetuneBudget)
    seeds: int = 3
    seed_offset: int = 0
    budget: str = "auto"
    time: str | None = None
    auto_flip: bool = True  # flips off when images are told from their mirrors (digits, text); see inspect.py
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(ema_decay=0.99, log_every_n_steps=5))
