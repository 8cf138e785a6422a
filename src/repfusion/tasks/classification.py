"""Image classification: fine-tuning a distilled backbone, or the same network from scratch."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from ..data import ImageDataModule
from ..data.augment import Augment, Normalize, unit_pixels
from ..stage import Stage
from ..errors import RepFusionError
from ..students import build_student, check_given_student
from ..training import OptimConfig
from .backbone import HEAD_PREFIXES, init_backbone, resolve_architecture
from ..data.device_data import pool_images
from .teacher_in_loop import TeacherInLoop, build_in_loop

if TYPE_CHECKING:
    from .finetune import FinetuneRun

DEFAULT_ARCH = "resnet18_cifar"  # the network when neither --init nor --student.arch names one


def accuracy_metrics(num_classes: int, prefix: str) -> MetricCollection:
    return MetricCollection({
        "top1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
        "top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
    }, prefix=prefix)


class Classification(Stage):
    """Cross-entropy on the student's logits; top-1/top-5 from torchmetrics, reduced across ranks.

    Two ways to keep what distillation put into the backbone, each the same for every arm:

    - `head_epochs` (LP-FT, Kumar et al. 2022): the first epochs fit only the new head, the backbone frozen
      (no gradient, BatchNorm statistics kept), so the head is fitted before its gradient reaches the backbone;
    - `in_loop` (the teacher in the loop): L = CE + w * (D_labelled + D_unlabelled), see `teacher_in_loop`.
    """

    def __init__(self, model: nn.Module, num_classes: int, optim: OptimConfig, augment: Augment,
                 normalize: Normalize | None = None, label_smoothing: float = 0.0, head_epochs: int = 0,
                 in_loop: TeacherInLoop | None = None, head_init: str = "random") -> None:
        super().__init__(augment, optim)
        self.model = model
        self.normalize = normalize or Normalize()
        self.label_smoothing = label_smoothing
        self.head_epochs = head_epochs
        self.head_init = head_init
        self.in_loop = in_loop
        if in_loop is not None:
            in_loop.attach(model)
        self.train_metrics = accuracy_metrics(num_classes, "train/")
        self.val_metrics = accuracy_metrics(num_classes, "val/")
        self.test_metrics = accuracy_metrics(num_classes, "test/")

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(images01))

    def trainable_parameters(self) -> list[dict]:
        """Two groups when optim.backbone_lr_scale != 1: the (distilled) backbone at lr x scale, the new head
        at lr, so fine-tuning can keep what distillation put in the backbone."""
        scale = self.optim.backbone_lr_scale
        if scale == 1.0:
            return [{"params": list(self.parameters())}]
        named = list(self.model.named_parameters())
        head = [p for n, p in named if n.startswith(HEAD_PREFIXES)]
        backbone = [p for n, p in named if not n.startswith(HEAD_PREFIXES)]
        return [{"params": backbone, "lr": self.optim.lr * scale}, {"params": head}]

    @property
    def head_only(self) -> bool:
        """True in LP-FT's first phase (the epochs in which only the head trains)."""
        return self.current_epoch < self.head_epochs

    @property
    def probe_only(self) -> bool:
        """head_epochs covering every epoch: a linear probe kept to the end (the backbone never trains)."""
        epochs = self.trainer.max_epochs if self._trainer is not None else None
        return self.head_epochs > 0 and epochs is not None and self.head_epochs >= epochs

    def set_backbone_frozen(self, frozen: bool) -> None:
        """Frozen: no backbone parameter gets a gradient, other modules (dropout) are in eval mode, and BatchNorm
        normalises by the batch without updating its statistics (`track_running_stats` off while frozen), so
        nothing of the backbone changes; the optimiser keeps every parameter.

        Batch statistics rather than the stored ones: a random initialisation's stored statistics are the
        identity, and its unnormalised features sent a head trained at lr 0.1 to NaN within an epoch. A probe
        kept to the end (`probe_only`) is the exception: there the statistics were recomputed on the training
        images before the first step (`recalibrate_batchnorm`) and BatchNorm uses them in training as in
        evaluation, since batch statistics in training and never-updated stored ones in evaluation put the head
        on features it never saw (a probe at chance on the validation split)."""
        whole_run = frozen and self.probe_only
        for name, parameter in self.model.named_parameters():
            if not name.startswith(HEAD_PREFIXES):
                parameter.requires_grad_(not frozen)
        for name, module in self.model.named_modules():
            if not name or f"{name}.".startswith(HEAD_PREFIXES):
                continue
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and whole_run:
                module.eval()
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.track_running_stats = not frozen
            elif frozen:
                module.eval()

    def on_train_start(self) -> None:
        """head_init probe: before the first step (not on a resume) the head is the linear probe of the frozen
        backbone, so fine-tuning starts from a fitted head (LP-FT's first phase as Kumar et al. fit it)."""
        if self.probe_only and self.global_step == 0:
            recalibrate_batchnorm(self.model, self.trainer.datamodule.train_set, self.normalize, self.device)
        if self.head_init == "probe" and self.global_step == 0:
            fit_probe_head(self.model, self.trainer.datamodule.train_set, self.normalize, self.device,
                           batch_statistics=not self.probe_only)

    def on_train_batch_start(self, batch: object, batch_idx: int) -> None:
        if self.head_epochs > 0:  # per batch: Lightning restores the modules' modes after each validation
            self.set_backbone_frozen(self.head_only)

    def objective(self, images: torch.Tensor, labels: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        """The step's loss terms. A labelled batch gives CE (+ w * D with the teacher in the loop); the batch
        drawn from every training image (labelled or not, no label read) gives only w * D."""
        terms: dict[str, torch.Tensor] = {}
        if labels is not None:
            logits = self(images)
            terms["ce"] = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
            terms["logits"] = logits.detach()
        use_teacher = self.in_loop is not None and not self.head_only
        if use_teacher and labels is not None:
            terms["distill_labelled"] = self.in_loop.weight * self.in_loop.labelled_term(self.model, images)
        if use_teacher:
            terms["distill_unlabelled"] = self.in_loop.weight * self.in_loop.unlabelled_term(self.model, step)
        return terms

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        terms = self.objective(images, labels, self.global_step)
        logits = terms.pop("logits")
        loss = sum(terms.values())
        self.train_metrics.update(logits, labels)
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True,
                 batch_size=len(images))
        if len(terms) > 1:
            self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, on_step=False, on_epoch=True,
                          sync_dist=True, batch_size=len(images))
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], metrics: MetricCollection, prefix: str) -> None:
        images, labels = batch
        logits = self(images)
        self.log(f"{prefix}loss", F.cross_entropy(logits, labels), sync_dist=True, batch_size=len(images))
        metrics.update(logits, labels)
        self.log_dict(metrics, prog_bar=True, on_step=False, on_epoch=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val/")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, "test/")


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, dataset: torch.utils.data.Dataset, normalize: nn.Module,
                          device: torch.device, batch_size: int = 64) -> None:
    """Recompute every BatchNorm's stored statistics as the exact average over `dataset` (one pass, no
    gradient; "precise BN"), so a frozen backbone normalises its features the same way in training and in
    evaluation. Its weights are untouched; only the statistics buffers change."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    was_training, momenta = model.training, [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
        m.train()
    images = pool_images(dataset)
    try:
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device)
            model(normalize.to(device)(unit_pixels(x)))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)


def linear_fc(model: nn.Module) -> nn.Linear | None:
    """The head a probe is fitted into, if `model` has it: one linear layer named fc (the built-in ResNets, timm's
    and torchvision's)."""
    head = getattr(model, "fc", None)
    return head if isinstance(head, nn.Linear) else None


def probe_head(model: nn.Module) -> nn.Linear:
    """`linear_fc`, or one sentence saying the probe protocols need it."""
    head = linear_fc(model)
    if head is None:
        raise RepFusionError("head_init probe (and the lpft and lp protocols) needs a network whose head is one linear "
                             "layer named fc (the built-in ResNets); use head_init random or head_epochs for this "
                             "network.")
    return head


def check_probe_head(arch: str, width: float) -> None:
    """Before anything trains: whether `arch` has the head a probe is fitted into (built once, random weights)."""
    probe_head(build_student(arch, width, num_classes=2))


def has_probe_head(arch: str, width: float) -> bool:
    """`check_probe_head` as a question: whether the default menu's LP-FT can run on `arch`."""
    return linear_fc(build_student(arch, width, num_classes=2)) is not None


@torch.no_grad()
def fit_probe_head(model: nn.Module, dataset: torch.utils.data.Dataset, normalize: nn.Module,
                   device: torch.device, batch_size: int = 64, strength: float = 0.1, max_iter: int = 1000,
                   batch_statistics: bool = True) -> None:
    """Set the classifier head `fc` to a multinomial logistic regression on the frozen backbone's pooled features
    of `dataset`, the standardisation folded into its weights and bias.

    The features are those training will feed the head: BatchNorm normalising by batches of `batch_size`
    (its stored statistics untouched), not eval mode, whose statistics differ (a head fitted in eval mode
    classified 85 % of the training images there and 41 % in training mode); with `batch_statistics` off
    (a probe kept to the end, its statistics recalibrated on these images) the stored ones. `strength` is the inverse L2
    weight C, kept small so the head is not overconfident on a few hundred images.
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from ..data.device_data import pool_images, pool_labels
    from ..features import FeatureTap, pooled

    head = probe_head(model)
    was_training = model.training
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    tracking = [m.track_running_stats for m in norms]
    model.eval()
    for m in norms if batch_statistics else ():
        m.train()
        m.track_running_stats = False  # batch statistics, nothing stored
    images, labels = pool_images(dataset), pool_labels(dataset).numpy()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    features = np.zeros((len(images), head.in_features), dtype=np.float32)
    try:
        with FeatureTap(model, [model.feature_layer]) as tap:
            for start in range(0, len(images), batch_size):
                index = order[start:start + batch_size]
                x = images[index].to(device)
                x = unit_pixels(x)
                model(normalize.to(device)(x))
                features[index.numpy()] = pooled(tap.pop()[model.feature_layer]).float().cpu().numpy()
    finally:
        for m, flag in zip(norms, tracking):
            m.track_running_stats = flag
        model.train(was_training)
    mean, std = features.mean(0), features.std(0) + 1e-6
    probe = LogisticRegression(C=strength, max_iter=max_iter).fit((features - mean) / std, labels)
    weight = np.zeros((head.out_features, features.shape[1]), dtype=np.float64)
    bias = np.full(head.out_features, -1e4 if len(probe.classes_) < head.out_features else 0.0)
    coef = probe.coef_ if len(probe.classes_) > 2 else np.concatenate([-probe.coef_, probe.coef_]) / 2
    intercept = probe.intercept_ if len(probe.classes_) > 2 else np.concatenate([-probe.intercept_,
                                                                                   probe.intercept_]) / 2
    for row, cls in enumerate(probe.classes_):  # classes without a labelled image keep a very low logit
        weight[int(cls)] = coef[row] / std
        bias[int(cls)] = intercept[row] - (coef[row] * mean / std).sum()
    head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
    head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))


def given_classifier(student: nn.Module, init: str | None, num_classes: int, channels: int) -> nn.Module:
    """A student passed through the API, checked against the init's architecture, with a head for the classes."""
    check_given_student(student, channels)
    resolve_architecture(init, SimpleNamespace(arch=student.config["arch"], width=float(student.config["width"])))
    if student.config.get("num_classes") != num_classes:
        if not hasattr(student, "reset_head"):
            raise RepFusionError(f"The student has {student.config.get('num_classes')} classes but the data has "
                                 f"{num_classes}; build it with num_classes={num_classes}.")
        student.reset_head(num_classes)
    return student


def build_classification(cfg: FinetuneRun, datamodule: ImageDataModule,
                         student: nn.Module | None = None) -> Classification:
    """student: a built student (e.g. `ModuleStudent`) instead of `cfg.student`; `cfg.init` still loads into it."""
    channels, height, _ = datamodule.sample_shape()
    if student is None:
        arch, width = resolve_architecture(cfg.init, cfg.student, DEFAULT_ARCH)
        model = build_student(arch, width, num_classes=datamodule.num_classes, in_channels=channels)
    else:
        model = given_classifier(student, cfg.init, datamodule.num_classes, channels)
    init_backbone(model, cfg.init)
    normalize = Normalize(cfg.data.mean, cfg.data.std)
    augment = Augment(height, cfg.data.crop_padding, cfg.data.flip)
    in_loop = None
    if cfg.teacher_in_loop.enabled:
        section = cfg.teacher_in_loop
        term = build_in_loop(cfg.init, model, model.feature_layer, section, (channels, height, height))
        every_image = ImageDataModule(cfg.data)  # not cut to the labels: x_u is drawn from every training image
        every_image.setup()
        in_loop = TeacherInLoop(term, section, pool_images(every_image.train_set),
                                section.batch_size or cfg.data.batch_size, augment, cfg.trainer.seed, normalize)
    return Classification(model, datamodule.num_classes, cfg.optim, augment, normalize, cfg.label_smoothing,
                          cfg.head_epochs, in_loop, cfg.head_init)
