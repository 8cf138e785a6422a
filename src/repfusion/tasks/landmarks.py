"""Facial landmarks: top-down heatmap regression on a distilled (or random) backbone; NME, FR and AUC.

The network (ResNet + SimpleBaseline deconvolutions, or HRNetV2-W18 + 1x1 head), the heatmap loss and
the metrics are the only parts that differ from classification: backbone init, optimiser, EMA,
checkpoints and report are shared (`tasks.backbone`, `stage.Stage`, `tasks.finetune`). Batches are
`(uint8 images [B,3,S,S], {"keypoints": float [B,K,2], "attributes": uint8 [B,6], ...})` (the dense-task
contract); images and keypoints are augmented together on the device by `JointAugment`, which swaps
the flip pairs on a mirror and marks points pushed out of the image as not visible (weight 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TYPE_CHECKING

import torch

from ..data.augment import Augment, Normalize
from ..data.datasets import base_dataset
from ..data.face_layout import WFLW_ATTRIBUTES, WFLW_EYE_CORNERS, WFLW_FLIP_PAIRS
from ..errors import RepFusionError
from ..section import Section
from ..training import OptimConfig
from .backbone import init_backbone, resolve_architecture
from .dense_stage import DenseStage, dense_augment
from .heads.heatmap import LandmarkNet
from .landmark_metrics import (DECODERS, LandmarkMetrics, decode_heatmaps, flip_heatmaps, gaussian_heatmaps,
                               to_heatmap, to_image)

if TYPE_CHECKING:
    from ..data import ImageDataModule
    from .finetune import FinetuneRun

DEFAULT_ARCH = "resnet50"  # the network when neither --init nor --student.arch names one


@dataclass
class LandmarkSection(Section):
    """Heatmap targets, decoding, test-time flip and the joint augmentation (flip itself: data.flip).

    sigma: Gaussian sigma of the target heatmaps in heatmap cells (2 at 64x64 maps, as mmpose and HRNet).
    decoder: "dark" (Taylor step on the log-heatmap) or "quarter" (quarter-cell shift to the higher neighbour).
    modulate: with "dark", blur the predicted heatmaps with a Gaussian of `sigma` first (DARK's modulation).
    flip_test: average the heatmaps of each image and of its mirror (flip pairs swapped) at val/test time.
    scale / rotate / translate: the random affine of `JointAugment` (zoom range, degrees, fraction of the side).
    deconv_layers: override the head's number of stride-2 deconvolutions (None: 3 on a ResNet, 0 on HRNet).
    """

    KEY: ClassVar[str] = "landmarks"

    sigma: float = 2.0
    decoder: str = "dark"
    modulate: bool = True
    flip_test: bool = True
    scale: tuple[float, float] = (0.75, 1.25)
    rotate: float = 30.0
    translate: float = 0.0
    deconv_layers: int | None = None

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise RepFusionError(f"{self.KEY}.sigma must be positive (heatmap cells), not {self.sigma}.")
        if self.decoder not in DECODERS:
            raise RepFusionError(f"{self.KEY}.decoder must be one of {', '.join(DECODERS)}, not '{self.decoder}'.")
        if self.deconv_layers is not None and self.deconv_layers < 0:
            raise RepFusionError(f"{self.KEY}.deconv_layers must be 0 or more (or null), not {self.deconv_layers}.")


def heatmap_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared heatmap error, each keypoint's maps weighted (mmpose `KeypointMSELoss`, use_target_weight).

    pred / target: [B, K, H, W]; weight: [B, K] (1 visible, 0 not) or None for all ones.
    """
    error = (pred - target).square()
    if weight is not None:
        error = error * weight[..., None, None]
    return error.mean()


def draw_landmarks(images01: torch.Tensor, predicted: torch.Tensor, path: Path,
                   true: torch.Tensor | None = None) -> Path:
    """A grid of images with predicted points (red) and, when given, the true points (green)."""
    import matplotlib.pyplot as plt

    from ..io import save_figure

    images01 = images01.detach().float().cpu().clamp(0, 1)
    predicted = predicted.detach().float().cpu()
    count = len(images01)
    cols = min(4, count)
    rows = (count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.4 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= count:
            continue
        ax.imshow(images01[i].permute(1, 2, 0).numpy())
        if true is not None:
            ax.scatter(true[i, :, 0].cpu(), true[i, :, 1].cpu(), s=4, c="lime", linewidths=0, label="true")
        ax.scatter(predicted[i, :, 0], predicted[i, :, 1], s=4, c="red", linewidths=0, label="predicted")
    if true is not None:
        axes.flat[0].legend(loc="upper left", fontsize=6, markerscale=2, frameon=False, labelcolor="white")
    fig.tight_layout()
    saved = save_figure(fig, path)
    plt.close(fig)
    return saved


class Landmarks(DenseStage):
    """Heatmap regression with a weighted MSE; NME, FR@0.1, AUC@0.1 (and NME per WFLW attribute subset).

    Logs `train/loss`, `val/loss`, `val/nme`, `test/loss`, `test/nme`, `test/fr`, `test/auc` and
    `test/nme/<attribute>` for each attribute subset with at least one test face (when the data has
    attributes). Metrics are fractions of the outer-eye-corner distance, computed on every rank's faces.
    """

    target_key, target_sources = "keypoints", "landmarks (faces, wflw)"

    def __init__(self, network: LandmarkNet, optim: OptimConfig, augment: Augment, normalize: Normalize | None = None,
                 section: LandmarkSection | None = None,
                 flip_pairs: Sequence[tuple[int, int]] = WFLW_FLIP_PAIRS,
                 attribute_names: Sequence[str] = WFLW_ATTRIBUTES,
                 eye_corners: tuple[int, int] = WFLW_EYE_CORNERS) -> None:
        section = section or LandmarkSection()
        super().__init__(network, optim, augment, normalize, section, flip_pairs=flip_pairs)
        self.flip_pairs = tuple(flip_pairs)
        self.val_metrics = LandmarkMetrics(attribute_names, eye_corners)
        self.test_metrics = LandmarkMetrics(attribute_names, eye_corners)

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        """Heatmaps [B, K, H/4, W/4] for images in [0, 1]."""
        return self.network(self.normalize(images01))

    def targets_for(self, heatmaps: torch.Tensor, keypoints: torch.Tensor, image_size: int) -> torch.Tensor:
        """Gaussian targets on the heatmaps' grid for keypoints in image pixels."""
        stride = image_size / heatmaps.shape[-1]
        return gaussian_heatmaps(to_heatmap(keypoints, stride), tuple(heatmaps.shape[-2:]), self.section.sigma)

    def predict_heatmaps(self, images01: torch.Tensor) -> torch.Tensor:
        """Heatmaps, averaged with those of the mirrored images (pairs swapped back) when flip_test is on."""
        heatmaps = self(images01)
        if self.section.flip_test:
            heatmaps = 0.5 * (heatmaps + flip_heatmaps(self(images01.flip(-1)), self.flip_pairs))
        return heatmaps

    def decode(self, heatmaps: torch.Tensor, image_size: int) -> torch.Tensor:
        """Keypoints [B, K, 2] in image pixels."""
        blur = self.section.sigma if self.section.decoder == "dark" and self.section.modulate else 0.0
        points, _ = decode_heatmaps(heatmaps.float(), self.section.decoder, blur)
        return to_image(points, image_size / heatmaps.shape[-1])

    @torch.no_grad()
    def predict_keypoints(self, images01: torch.Tensor) -> torch.Tensor:
        """Predicted keypoints [B, K, 2] in pixels of `images01` (flip test as configured)."""
        return self.decode(self.predict_heatmaps(images01), images01.shape[-1])

    def training_step(self, batch: tuple[torch.Tensor, dict[str, torch.Tensor]], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        heatmaps = self(images)
        loss = heatmap_loss(heatmaps, self.targets_for(heatmaps, targets["keypoints"], images.shape[-1]),
                            targets.get("visible"))
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True,
                 batch_size=len(images))
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, dict[str, torch.Tensor]], metrics: LandmarkMetrics,
                  prefix: str) -> None:
        images, targets = batch
        keypoints = targets["keypoints"]
        heatmaps = self.predict_heatmaps(images)
        loss = heatmap_loss(heatmaps, self.targets_for(heatmaps, keypoints, images.shape[-1]), targets.get("visible"))
        self.log(f"{prefix}loss", loss, sync_dist=True, batch_size=len(images))
        metrics.update(self.decode(heatmaps, images.shape[-1]), keypoints, targets.get("attributes"))

    def _log_metrics(self, metrics: LandmarkMetrics, prefix: str, names: tuple[str, ...] | None) -> None:
        """compute() gathers every rank's per-image NMEs, so the logged values need no further reduction."""
        if not metrics.update_called:
            return
        for name, value in metrics.compute().items():
            if names is None or name in names:
                self.log(f"{prefix}{name}", value, prog_bar=name == "nme")
        metrics.reset()

    def validation_step(self, batch: tuple[torch.Tensor, dict[str, torch.Tensor]], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val/")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val/", ("nme",))

    def test_step(self, batch: tuple[torch.Tensor, dict[str, torch.Tensor]], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, "test/")

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test/", None)

    @torch.no_grad()
    def draw_predictions(self, images01: torch.Tensor, path: Path, keypoints: torch.Tensor | None = None) -> None:
        """Predicted landmarks (red) over each image, with the true ones (green) when `keypoints` is given."""
        was_training = self.network.training
        self.network.eval()
        predicted = self.predict_keypoints(images01.to(self.device))
        self.network.train(was_training)
        draw_landmarks(images01, predicted, Path(path), keypoints)


def dataset_layout(datamodule: ImageDataModule) -> tuple[int, tuple[tuple[int, int], ...]]:
    """(num_keypoints, flip pairs) of the datamodule's dataset; WFLW's pairs unless it names its own."""
    datamodule.setup()
    dataset = base_dataset(datamodule.test_set)
    count = getattr(dataset, "num_keypoints", None)
    if not count:
        raise RepFusionError(f"Data source '{datamodule.config.source}' has no landmarks; use a source with "
                             "keypoints (faces, wflw).")
    return int(count), tuple(getattr(dataset, "flip_pairs", WFLW_FLIP_PAIRS))


def build_landmarks(cfg: FinetuneRun, datamodule: ImageDataModule) -> Landmarks:
    """LandmarkNet on `cfg.student`'s backbone (or the init's), the backbone loaded strictly from `cfg.init`."""
    channels, height, _ = datamodule.sample_shape()
    arch, width = resolve_architecture(cfg.init, cfg.student, DEFAULT_ARCH)
    num_keypoints, flip_pairs = dataset_layout(datamodule)
    section = getattr(cfg, "landmarks", None) or LandmarkSection()
    network = LandmarkNet(arch, width, num_keypoints, channels, deconv_layers=section.deconv_layers)
    init_backbone(network.backbone, cfg.init)
    return Landmarks(network, cfg.optim, dense_augment(cfg.data, height), Normalize(cfg.data.mean, cfg.data.std),
                     section, flip_pairs)
