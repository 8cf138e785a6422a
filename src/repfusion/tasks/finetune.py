"""`repfusion finetune`: one code path for the distilled init and the from-scratch baseline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn

from ..analysis.plots import plot_curves
from ..data import DataConfig, ImageDataModule
from ..ema import final_raw_weights, keep_better
from ..data.augment import unit_pixels
from ..data.datasets import dataset_targets
from ..errors import RepFusionError
from ..io import replace_dir, staging_dir, write_json
from ..training import OptimConfig, TrainerConfig, build_trainer, prepare_run, restore_finished
from .landmarks import LandmarkSection
from .registry import TASKS, TaskSpec
from .segmentation import SegmentationSection
from .teacher_in_loop import TeacherInLoopSection


@dataclass
class ModelSection:
    """arch/width: taken from the init folder when absent; without init, the task's default at width 1."""

    arch: str | None = None
    width: float | None = None


@dataclass
class FinetuneRun:
    """init: a distill run folder, its student/ folder, a .safetensors file or a .ckpt; null = from scratch.

    task: classification | segmentation | landmarks (see `tasks.registry`); the backbone, optimiser,
    checkpoints, EMA and report are the same for every task.

    data.label_fraction / data.labels_per_class cut the training split to a stratified, seeded subset
    here (the label-scarce regime); the teacher and distillation stages ignore them and use every image.

    head_epochs (classification): LP-FT, the first head_epochs of trainer.max_epochs fit only the new head
    with the backbone frozen; with optim.backbone_lr_scale < 1 the backbone then trains at a lower rate.
    head_epochs >= trainer.max_epochs: a linear probe kept to the end, its BatchNorm statistics recomputed
    once on the labelled images and used in training and evaluation alike (no backbone weight changes).
    head_init probe: LP-FT as Kumar et al. fit it, the head set to the frozen backbone's logistic-regression
    probe on the labelled images before the first step.
    teacher_in_loop (classification, init a distill run): the init's distillation term stays in the loss for
    the whole fine-tuning, on the labelled batch and on a batch of every training image (`teacher_in_loop`).
    """

    task: str = "classification"
    init: str | None = None
    student: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(nesterov=True))
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    label_smoothing: float = 0.0
    head_epochs: int = 0
    head_init: str = "random"  # probe: the head starts as the frozen backbone's logistic-regression probe
    teacher_in_loop: TeacherInLoopSection = field(default_factory=TeacherInLoopSection)
    segmentation: SegmentationSection = field(default_factory=SegmentationSection)
    landmarks: LandmarkSection = field(default_factory=LandmarkSection)

    def __post_init__(self) -> None:
        if isinstance(self.head_epochs, bool) or not isinstance(self.head_epochs, int) or self.head_epochs < 0:
            raise RepFusionError(f"head_epochs must be a whole number >= 0 (0: no head-only phase), not "
                                 f"{self.head_epochs}.")
        if self.head_init not in ("random", "probe"):
            raise RepFusionError(f"head_init must be 'random' or 'probe', not '{self.head_init}'.")
        if self.task != "classification" and (self.head_epochs or self.teacher_in_loop.enabled
                                              or self.head_init != "random"):
            raise RepFusionError(f"head_epochs, head_init and teacher_in_loop apply to classification fine-tuning, "
                                 f"not {self.task}; leave them at their defaults for dense tasks.")


def check_targets(spec: TaskSpec, datamodule: ImageDataModule) -> None:
    """A task whose batches lack its target (masks, keypoints, labels) is refused before anything runs."""
    datamodule.setup()
    carried = dataset_targets(datamodule.train_set)
    source = datamodule.config.source
    if spec.needs is None and carried:
        raise RepFusionError(f"Data source '{source}' carries {' and '.join(carried)}, not class labels; set "
                             f"task to {'segmentation' if 'mask' in carried else 'landmarks'} or use a labelled "
                             "image source.")
    if spec.needs is not None and spec.needs not in carried:
        raise RepFusionError(f"Task {spec.name} needs '{spec.needs}' targets but data source '{source}' has "
                             f"{' and '.join(carried) or 'class labels only'}; use a source with "
                             f"{'part masks (faces, celebamask)' if spec.needs == 'mask' else 'landmarks (faces, wflw)'}.")


def exported_network(module: pl.LightningModule) -> nn.Module:
    """The task's whole network (backbone + head), saved as the run's model/ folder."""
    return module.network if hasattr(module, "network") else module.model


def draw_test_predictions(module: pl.LightningModule, datamodule: ImageDataModule, path: Path, count: int = 8) -> None:
    """Dense tasks draw their predictions on a few test images (what a person checks first)."""
    draw = getattr(module, "draw_predictions", None)
    if draw is None:
        return
    test_set = datamodule.test_set
    images = torch.stack([test_set[i][0] for i in range(min(count, len(test_set)))])  # type: ignore[index, arg-type]
    was_training = module.training
    module.eval()
    with torch.no_grad():
        draw(unit_pixels(images).to(module.device), path)
    module.train(was_training)


def validation_score(trainer: pl.Trainer, module: pl.LightningModule, datamodule: ImageDataModule,
                     monitor: str) -> float:
    """The monitored validation metric of the module as it stands, kept out of metrics.csv and the loggers."""
    loggers = trainer.loggers
    trainer.loggers = []
    try:
        return float(trainer.validate(module, datamodule=datamodule, verbose=False)[0][monitor])
    finally:
        trainer.loggers = loggers


def run_finetune(cfg: FinetuneRun, run_dir: Path, resume: bool = False,
                 on_start: Callable[[], None] | None = None, student: nn.Module | None = None,
                 callbacks: list[pl.Callback] | None = None) -> dict[str, float | str]:
    """Everything is built and checked (resume included) before `on_start` and the first write.

    student: your own network for classification, e.g. `ModuleStudent(module, feature_layer="layer4")`
    (fresh: `cfg.init` loads the distilled weights into it; an `fc` head is set for the data's classes).
    callbacks: Lightning callbacks added to the run's own (the pipeline's estimate times a short run with one).
    """
    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    spec = TASKS.get(cfg.task)
    if student is not None and cfg.task != "classification":
        raise RepFusionError(f"A student passed through the API fine-tunes for classification only, not {cfg.task}; "
                             "use a registered student.arch for dense tasks.")
    datamodule = ImageDataModule(cfg.data, labelled_only=True)
    check_targets(spec, datamodule)
    module = spec.build(cfg, datamodule) if student is None else spec.build(cfg, datamodule, student=student)
    trainer = build_trainer(cfg.trainer, run_dir, monitor=spec.monitor, mode=spec.mode, callbacks=callbacks)
    ckpt = prepare_run(run_dir, resume, module, on_start)
    restored = restore_finished(module, ckpt, cfg.trainer.max_epochs, cfg.trainer.max_steps)  # killed in export
    if not restored:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
    raw = final_raw_weights(trainer, ckpt if restored else None)
    can_validate = raw and trainer.limit_val_batches != 0
    kept = keep_better(module, raw, lambda: validation_score(trainer, module, datamodule, spec.monitor),
                       spec.mode) if can_validate else ("ema" if cfg.trainer.ema_decay is not None else "raw")
    results = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    results = {k: float(v) for k, v in results.items()}
    results["weights"] = kept  # which weights were tested and exported: the EMA average or the raw ones
    if trainer.limit_val_batches != 0:  # the kept weights' validation score: what a choice between runs may read
        results[spec.monitor] = validation_score(trainer, module, datamodule, spec.monitor)
    if trainer.is_global_zero:
        tmp = staging_dir(run_dir / "model")
        exported_network(module).save_pretrained(tmp, safe_serialization=True)
        from ..export_card import finish_finetune_export  # the model card and the torchvision-keyed weights

        finish_finetune_export(tmp, cfg, exported_network(module), datamodule.sample_shape()[1], results)
        replace_dir(tmp, run_dir / "model")
        plot_curves(run_dir / "metrics.csv", run_dir / "curves.png", list(spec.curves),
                    title=f"{cfg.task} fine-tuning from {cfg.init or 'scratch'}")
        draw_test_predictions(module, datamodule, run_dir / "predictions.png")
        # last: results.json marks the run finished (a resume skips it), so every plot is drawn before it
        write_json(run_dir / "results.json", {"task": cfg.task, "init": cfg.init or "scratch",
                                              "train_images": len(datamodule.train_set), **results})
    return results
