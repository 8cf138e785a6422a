"""The teacher in the loop: fine-tuning that keeps optimising the distillation term beside the task loss.

Full fine-tuning on a few labels distorts what distillation put into the backbone (Kumar et al., ICLR 2022);
the reference implementation's classifiers and DreamTeacher's mixed distillation instead optimise the
task loss and the feature loss together. Here every fine-tuning step is

    L = CE(f(x_l), y_l) + w * D(adapt(f_S(x_l)), f_T(x_l, t)) + w * D(adapt(f_S(x_u)), f_T(x_u, t))

with (x_l, y_l) the labelled batch and x_u a batch drawn from every training image, labelled or not. The
teacher, its layer, t, the adapter (and projector) and the frozen target statistics are those of the init's
own distillation (`student/distillation.json` and `student/distillation_head.safetensors`), so a student
distilled from a random-weight teacher is fine-tuned with that same random teacher in its loop: the control
gets exactly the same protocol. The x_u targets come from `distill.cache.CachedTargets` (the teacher runs
once per image and stored view, at fit start).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from ..data.augment import Augment, Normalize
from ..distill.cache import CachedTargets, StoredViews
from ..distill.losses import build_loss
from ..distill.run import HEAD_FILE, LossSection
from ..distill.module import teacher_target
from ..distill.parts import TeacherTap
from ..distill.target_norm import build_target_norm
from ..errors import RepFusionError
from ..features import FeatureTap, layer_output
from ..io import load_checkpoint, load_tensors
from ..section import Section
from ..run_folder import distill_export


@dataclass
class TeacherInLoopSection(Section):
    """weight: w above (0: off, plain fine-tuning). batch_size: images of x_u per step (null: data.batch_size).
    views: stored augmentations cached per training image (1: as is, 2: + its mirror image, more: + seeded
    crops). t: the teacher's timestep (null: the init's fixed t, which the distillation used)."""

    KEY: ClassVar[str] = "teacher_in_loop"

    weight: float = 0.0
    batch_size: int | None = None
    views: int = 2
    t: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or self.weight < 0:
            raise RepFusionError(f"{self.KEY}.weight must be a number >= 0 (0 turns it off), not {self.weight}.")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                                            or self.batch_size < 1):
            raise RepFusionError(f"{self.KEY}.batch_size must be a positive whole number or null, not "
                                 f"{self.batch_size}.")
        if isinstance(self.views, bool) or not isinstance(self.views, int) or self.views < 1:
            raise RepFusionError(f"{self.KEY}.views must be a whole number >= 1, not {self.views}.")
        if self.t is not None and (isinstance(self.t, bool) or not isinstance(self.t, int) or self.t < 0):
            raise RepFusionError(f"{self.KEY}.t must be a whole number >= 0 or null, not {self.t}.")

    @property
    def enabled(self) -> bool:
        return float(self.weight) > 0


class InLoopDistillation(nn.Module):
    """The init's distillation term, rebuilt: frozen teacher, trainable adapter, frozen target statistics."""

    def __init__(self, teacher: TeacherTap, loss: nn.Module, student_layer: str, t: int) -> None:
        super().__init__()
        # the distillation's own teacher tap (f_T standardised as it saw it); registered as teacher, loss,
        # target_norm, the names a fine-tuning checkpoint holds
        self.teacher, self.loss, self.target_norm = teacher.teacher, loss, teacher.target_norm
        self.teacher.requires_grad_(False)
        if self.target_norm is not None:
            self.target_norm.requires_grad_(False)
        self.teacher_layers, self.student_layer = tuple(teacher.layers), student_layer
        self.t, self.noise_mode = int(t), teacher.noise_mode

    def train(self, mode: bool = True) -> InLoopDistillation:
        """Only the adapter trains: the teacher and the target statistics stay frozen (eval) throughout."""
        super().train(mode)
        self.teacher.eval()
        if self.target_norm is not None:
            self.target_norm.eval()
        return self

    @torch.no_grad()
    def target(self, images01: torch.Tensor) -> torch.Tensor:
        """f_T(x, t) as the distillation saw it: the teacher's layer(s) at t, standardised by its statistics."""
        t = torch.full((len(images01),), self.t, dtype=torch.long, device=images01.device)
        feature = teacher_target(self.teacher, images01, t, self.teacher_layers, self.noise_mode)
        return feature if self.target_norm is None else self.target_norm(feature, t)

    def forward(self, student_feature: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(student_feature, target)


def _head_state(folder: Path) -> dict[str, torch.Tensor]:
    """The adapter and target statistics the distillation ended with: the export's head file, else its checkpoint."""
    if (folder / HEAD_FILE).is_file():
        return load_tensors(folder / HEAD_FILE)
    ckpt = folder.parent / "checkpoints" / "last.ckpt"
    if ckpt.is_file():
        state = load_checkpoint(ckpt).get("state_dict", {})
        return {k: v for k, v in state.items() if k.startswith(("distill_loss.", "target_norm."))}
    raise RepFusionError(f"{folder} has no {HEAD_FILE} and its run no checkpoints/last.ckpt, so the teacher cannot "
                         "be put in the loop; distil again with this version, or set teacher_in_loop.weight to 0.")


def build_in_loop(init: str | None, student: nn.Module, student_layer: str, section: TeacherInLoopSection,
                  sample_shape: tuple[int, int, int]) -> InLoopDistillation:
    """The init run's own distillation term, checked against the fine-tuned network's feature shape."""
    from ..teachers import load_teacher

    folder = distill_export(init) if init else None
    if folder is None or not (folder / "distillation.json").is_file():
        raise RepFusionError(f"teacher_in_loop needs init to be a distill run (it reuses that run's teacher, layer and "
                             f"adapter), but init is {init or 'empty (scratch)'}; set init or teacher_in_loop.weight 0.")
    record = json.loads((folder / "distillation.json").read_text())
    teacher_cfg, loss_cfg, steps_cfg = record["teacher"], record["loss"], record["timesteps"]
    t = section.t
    if t is None:
        if steps_cfg.get("strategy") != "fixed":
            raise RepFusionError(f"The init was distilled with timesteps.strategy {steps_cfg.get('strategy')}, not a "
                                 "fixed t; set teacher_in_loop.t to the timestep the teacher should be read at.")
        t = int(steps_cfg.get("t", 0))
    init_seed = teacher_cfg.get("init_seed")
    if teacher_cfg.get("init") == "random" and init_seed is None:
        init_seed = record.get("seed")
    if teacher_cfg.get("init") == "random" and init_seed is None:
        raise RepFusionError(f"{folder / 'distillation.json'} names a random teacher without its seed; distil again "
                             "with this version so the same random teacher can be rebuilt.")
    teacher = load_teacher(teacher_cfg["source"], class_label=teacher_cfg.get("class_label", "auto"),
                                           class_map=teacher_cfg.get("class_map"),
                                           adm_flags=teacher_cfg.get("adm_flags", "imagenet-64"),
                                           uncond_embedding=teacher_cfg.get("uncond_embedding"),
                                           init=teacher_cfg.get("init", "pretrained"), init_seed=init_seed)
    if t >= teacher.num_timesteps:
        raise RepFusionError(f"teacher_in_loop.t {t} is outside the teacher's [0, {teacher.num_timesteps}).")
    layers = [teacher_cfg["layer"]] if isinstance(teacher_cfg["layer"], str) else list(teacher_cfg["layer"])
    channels, height, width = sample_shape
    shapes = [teacher.feature_shape(layer, height) for layer in layers]
    teacher_shape = shapes[0] if len(shapes) == 1 else (sum(s[0] for s in shapes),)
    was_training = student.training
    with torch.no_grad():
        student_shape = tuple(layer_output(student.eval(), student_layer, torch.zeros(2, channels, height, width)).shape[1:])
    student.train(was_training)
    options = dict(loss_cfg.get("options") or {})
    loss = build_loss(loss_cfg["name"], student_shape, teacher_shape, **options)
    target_norm = build_target_norm(loss_cfg.get("target_norm", "none"), teacher_shape[0], teacher.num_timesteps,
                                    int(loss_cfg.get("target_bins", 20)),
                                    pooled=LossSection(**loss_cfg).pooled_stats())
    state = _head_state(folder)
    for prefix, part in (("distill_loss.", loss), ("target_norm.", target_norm)):
        if part is None:
            continue
        own = part.state_dict()
        saved = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if own and (set(saved) != set(own) or any(saved[k].shape != own[k].shape for k in own)):
            raise RepFusionError(f"The distillation head saved with {folder} does not fit its distillation.json "
                                 f"({prefix.rstrip('.')}); distil again, or set teacher_in_loop.weight to 0.")
        part.load_state_dict(saved)
    tap = TeacherTap(teacher, layers, teacher_cfg.get("noise_mode", "clean"), target_norm)
    return InLoopDistillation(tap, loss, student_layer, t)


class TeacherInLoop(nn.Module):
    """What a fine-tuning stage adds for the teacher in the loop: the term, the cache and the x_u draw.

    `loss(model, student_input_labelled, images01_labelled, step)` returns w * (D_l + D_u); the x_u batch
    is drawn from a generator seeded by (seed, step), so a resumed run draws the same batches. `augment` is
    the fine-tuning stage's own: x_u's stored views get the crop and flip the labelled batches get.
    """

    def __init__(self, term: InLoopDistillation, section: TeacherInLoopSection, images: torch.Tensor,
                 batch_size: int, augment: Augment, seed: int, normalize: Normalize) -> None:
        super().__init__()
        self.term, self.weight = term, float(section.weight)
        self.batch_size, self.seed, self.normalize = batch_size, seed, normalize
        self.views = StoredViews(len(images), section.views, augment.crop_padding, augment.flip, seed)
        self.images = images
        self.cache: CachedTargets | None = None  # filled on the training device at the first step
        self._tap: FeatureTap | None = None

    def ensure_cache(self, device: torch.device) -> CachedTargets:
        if self.cache is None or self.cache.targets.device != device:
            self.cache = CachedTargets(self.images.to(device), self.views, lambda x, _index: self.term.target(x))
        return self.cache

    def attach(self, model: nn.Module) -> None:
        """Hook the fine-tuned network's student layer once; every later forward leaves its feature in the tap."""
        if self._tap is None:
            self._tap = FeatureTap(model, [self.term.student_layer]).__enter__()

    def student_feature(self, model: nn.Module) -> torch.Tensor:
        """The feature of the model's last forward at the student layer."""
        self.attach(model)
        return self._tap.pop()[self.term.student_layer]

    def labelled_term(self, model: nn.Module, images01: torch.Tensor) -> torch.Tensor:
        """D on the labelled batch, whose forward the caller has just run (its feature is in the tap)."""
        return self.term(self.student_feature(model), self.term.target(images01))

    def unlabelled_term(self, model: nn.Module, step: int) -> torch.Tensor:
        """D on a batch drawn from every training image, labelled or not (no label is read)."""
        cache = self.ensure_cache(next(model.parameters()).device)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        images, targets = cache.batch(*cache.draw(self.batch_size, generator))
        model(self.normalize(images))
        return self.term(self.student_feature(model), targets)

    def __getstate__(self) -> dict:  # hooks are not pickled (deepcopy of the module)
        state = dict(self.__dict__)
        state["_tap"] = None
        return state
