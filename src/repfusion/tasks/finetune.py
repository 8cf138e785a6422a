"""`repfusion finetune`: one code path for the distilled init and the from-scratch baseline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn

from ..analysis.plots import plot_curves
from ..data import DataConfig, ImageDataModule, Normalize
from ..errors import RepFusionError
from ..io import load_checkpoint, load_tensors, replace_dir, staging_dir, write_json
from ..students import build_student, find_export, read_student_config
from ..training import OptimConfig, TrainerConfig, build_trainer, prepare_run, restore_finished
from .classification import Classification

HEAD_PREFIXES = ("fc.", "classifier.")
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"


@dataclass
class ModelSection:
    """arch/width: taken from the init folder when absent; without init, resnet18_cifar at width 1."""

    arch: str | None = None
    width: float | None = None


@dataclass
class FinetuneRun:
    """init: a distill run folder, its student/ folder, a .safetensors file or a .ckpt; null = from scratch.

    data.label_fraction / data.labels_per_class cut the training split to a stratified, seeded subset
    here (the label-scarce regime); the teacher and distillation stages ignore them and use every image.
    """

    init: str | None = None
    student: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(nesterov=True))
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    label_smoothing: float = 0.0


def student_folder(init: str) -> Path | None:
    """A distill run folder's exported student, or the export folder itself."""
    return find_export(init, ("student",))


def backbone_weights(init: str) -> dict[str, torch.Tensor]:
    """Backbone tensors from an export folder, a safetensors file, or a checkpoint (weights_only)."""
    folder = student_folder(init)
    path = Path(init)
    if folder is not None:
        return load_tensors(folder / WEIGHTS_FILE)
    if path.suffix == ".safetensors":
        return load_tensors(path)
    if path.suffix in (".ckpt", ".pt", ".pth"):
        state = load_checkpoint(path)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        weights = {k[len("student."):]: v for k, v in state.items() if k.startswith("student.")}
        return weights or {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not path.exists():
        raise RepFusionError(f"finetune init {init} does not exist; give a distill run folder or leave init empty.")
    raise RepFusionError(f"finetune init {init} is not a distill run folder, .safetensors or .ckpt file.")


def resolve_architecture(cfg: FinetuneRun) -> tuple[str, float]:
    """The init's architecture wins; asking for another one is an error, not a silent partial load."""
    folder = student_folder(cfg.init) if cfg.init else None
    if folder is None:
        return cfg.student.arch or "resnet18_cifar", cfg.student.width or 1.0
    saved = read_student_config(folder)
    arch, width = saved["arch"], float(saved["width"])
    if (cfg.student.arch not in (None, arch)) or (cfg.student.width not in (None, width)):
        raise RepFusionError(
            f"The distilled student in {folder} is {arch} at width {width} but the config asks for "
            f"{cfg.student.arch or arch} at width {cfg.student.width or width}; drop student.arch/width or "
            "distil that architecture first."
        )
    return arch, width


def load_backbone(model: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Load every backbone tensor strictly; only the classifier head may stay at its random init."""
    own = model.state_dict()
    unexpected = [k for k in weights if k not in own]
    mismatched = [k for k in weights if k in own and own[k].shape != weights[k].shape]
    missing = [k for k in own if k not in weights and not k.startswith(HEAD_PREFIXES)]
    if unexpected or mismatched or missing:
        example = (unexpected or mismatched or missing)[0]
        raise RepFusionError(
            f"The weights in {source} do not fit {type(model).__name__} {model.config.arch} at width "
            f"{model.config.width} ({len(unexpected)} unexpected, {len(mismatched)} mismatched, {len(missing)} "
            f"missing tensors, e.g. '{example}'); set student.arch/width to the distilled architecture."
        )
    model.load_state_dict({**own, **weights})


def build_classification(cfg: FinetuneRun, datamodule: ImageDataModule) -> Classification:
    channels, height, _ = datamodule.sample_shape()
    arch, width = resolve_architecture(cfg)
    model = build_student(arch, width, num_classes=datamodule.num_classes, in_channels=channels)
    if cfg.init:
        load_backbone(model, backbone_weights(cfg.init), cfg.init)
    return Classification(model, datamodule.num_classes, cfg.optim, height, Normalize(cfg.data.mean, cfg.data.std),
                          cfg.data.crop_padding, cfg.data.flip, cfg.label_smoothing)


def run_finetune(cfg: FinetuneRun, run_dir: Path, resume: bool = False,
                 on_start: Callable[[], None] | None = None) -> dict[str, float]:
    """Everything is built and checked (resume included) before `on_start` and the first write."""
    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    datamodule = ImageDataModule(cfg.data, labelled_only=True)
    module = build_classification(cfg, datamodule)
    trainer = build_trainer(cfg.trainer, run_dir, monitor="val/top1", mode="max")
    ckpt = prepare_run(run_dir, resume, module, on_start)
    if not restore_finished(module, ckpt, cfg.trainer.max_epochs, cfg.trainer.max_steps):  # killed in export
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
    results = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    results = {k: float(v) for k, v in results.items()}
    if trainer.is_global_zero:
        tmp = staging_dir(run_dir / "model")
        module.model.save_pretrained(tmp, safe_serialization=True)
        replace_dir(tmp, run_dir / "model")
        write_json(run_dir / "results.json", {"init": cfg.init or "scratch", "train_images": len(datamodule.train_set),
                                              **results})
        plot_curves(run_dir / "metrics.csv", run_dir / "curves.png", ["train/loss", "train/top1", "val/top1"],
                    title=f"fine-tuning from {cfg.init or 'scratch'}")
    return results
