"""Face parsing: BiSeNetV1 around a student, its loss, mIoU, a tiny Trainer.fit, and the drawn predictions."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from repfusion.data.augment import Augment
from repfusion.data.face_layout import PARSING_CLASSES
from repfusion.data.faces import faces
from repfusion.errors import RepFusionError
from repfusion.students import build_student
from repfusion.tasks.backbone import init_backbone
from repfusion.tasks.finetune import FinetuneRun, ModelSection
from repfusion.tasks.heads.bisenet import BiSeNetV1
from repfusion.tasks.segmentation import (
    Segmentation,
    SegmentationSection,
    build_segmentation,
    miou_metric,
    overlay_masks,
    parsing_palette,
    per_class_iou_metric,
    segmentation_loss,
)
from repfusion.training import OptimConfig

WIDTH = 0.125  # the smallest ResNet: 8 channels per stage


class TinyParts(Dataset):
    """Items in the dense-task format: (uint8 [3,S,S], {"mask": uint8 [S,S]}), a disc 'face' with a 'mouth' bar,
    and one unlabelled (255) row at the top."""

    classes = ["background", "face", "mouth"]
    targets = ("mask",)

    def __init__(self, count: int, size: int = 32, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        self.items = []
        for _ in range(count):
            cy, cx = (torch.rand(2, generator=g) * size / 3 + size / 3).tolist()
            radius = size / 4
            mask = torch.zeros(size, size, dtype=torch.uint8)
            mask[(ys - cy) ** 2 + (xs - cx) ** 2 <= radius ** 2] = 1
            mask[(abs(ys - cy - radius / 2) <= 1) & (abs(xs - cx) <= radius / 2)] = 2
            mask[0] = 255
            palette = torch.tensor([[30, 40, 50], [220, 180, 150], [200, 30, 40]], dtype=torch.float)
            image = palette[mask.clamp(max=2).long()].permute(2, 0, 1)
            image = (image + torch.randn(image.shape, generator=g) * 10).clamp(0, 255).to(torch.uint8)
            self.items.append((image, {"mask": mask}))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.items[index]


class FixtureDataModule:
    """What build_segmentation reads of an ImageDataModule (the lead's faces source replaces it)."""

    def __init__(self, dataset: Dataset) -> None:
        self.train_set = self.val_set = self.test_set = dataset
        self.config = type("Config", (), {"source": "fixture"})()

    def setup(self, stage: str | None = None) -> None:
        pass

    def sample_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_set[0][0].shape)


def _module(classes: list[str], image_size: int = 32, **section: float) -> Segmentation:
    network = BiSeNetV1("resnet18", WIDTH, num_classes=len(classes))
    return Segmentation(network, classes, OptimConfig(lr=0.01), Augment(image_size),
                        section=SegmentationSection(**section))


def test_miou_matches_a_hand_computed_confusion_matrix() -> None:
    # 4 classes; class 3 is only "predicted" on ignored pixels, so it is absent and must not count.
    target = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 255, 255, 0]])
    pred = torch.tensor([[0, 0, 1, 1, 1, 1, 2, 0, 3, 2]])
    # labelled pixels, rows = true, columns = predicted:  true 0 -> [2, 1, 1, 0], true 1 -> [0, 3, 1, 0]
    # IoU0 = 2 / (4 + 2 - 2) = 0.5, IoU1 = 3 / (4 + 4 - 3) = 0.6, IoU2 = 0 / (0 + 2 - 0) = 0, IoU3 absent
    miou, per_class = miou_metric(4), per_class_iou_metric(4)
    for cut in (slice(0, 4), slice(4, 10)):  # two batches accumulate one confusion matrix
        miou.update(pred[:, cut], target[:, cut])
        per_class.update(pred[:, cut], target[:, cut])
    assert miou.compute().item() == pytest.approx((0.5 + 0.6 + 0.0) / 3)
    iou = per_class.compute()
    assert iou[:3].tolist() == pytest.approx([0.5, 0.6, 0.0])
    assert math.isnan(iou[3].item())


def test_loss_adds_weighted_auxiliary_cross_entropies_and_ignores_255() -> None:
    mask = torch.tensor([[[0, 1], [2, 255]]])
    zeros = torch.zeros(1, 4, 2, 2, requires_grad=True)  # uniform over 4 classes: CE = log 4 per labelled pixel
    assert segmentation_loss(zeros, mask).item() == pytest.approx(math.log(4))
    aux = (torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2))
    assert segmentation_loss(zeros, mask, aux, aux_weight=0.5).item() == pytest.approx(2 * math.log(4))
    assert segmentation_loss(zeros, mask, aux, aux_weight=0.0).item() == pytest.approx(math.log(4))
    confident = torch.full((1, 4, 2, 2), -10.0)
    confident[0, 3, 1, 1] = 10.0  # a wrong but confident guess on the ignored pixel costs nothing
    confident[0, 0, 0, 0] = confident[0, 1, 0, 1] = confident[0, 2, 1, 0] = 10.0
    assert segmentation_loss(confident, mask).item() < 1e-6
    nothing = segmentation_loss(zeros, torch.full((1, 2, 2), 255))
    nothing.backward()
    assert nothing.item() == 0.0 and zeros.grad is not None


def test_auxiliary_heads_run_in_training_only() -> None:
    network = BiSeNetV1("resnet18", WIDTH, num_classes=5)
    x = torch.randn(2, 3, 40, 36)  # any size: every output comes back at the input size
    out = network.train()(x)
    assert out.logits.shape == (2, 5, 40, 36)
    assert [a.shape for a in out.aux_logits] == [(2, 5, 40, 36)] * 2
    out = network.eval()(x)
    assert out.logits.shape == (2, 5, 40, 36) and out.aux_logits is None


def test_resnet50_context_path_and_save_pretrained_round_trip(tmp_path: Path) -> None:
    network = BiSeNetV1("resnet50", WIDTH, num_classes=3).eval()
    network.save_pretrained(tmp_path, safe_serialization=True)
    loaded = BiSeNetV1.from_pretrained(str(tmp_path), use_safetensors=True).eval()
    saved, reloaded = network.state_dict(), loaded.state_dict()
    assert loaded.config.arch == "resnet50" and saved.keys() == reloaded.keys()
    assert all(torch.equal(saved[k], reloaded[k]) and saved[k].stride() == reloaded[k].stride() for k in saved)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        a, b = network(x).logits, loaded(x).logits
    # Same weights, same input: only oneDNN's kernel choice for the loaded tensors (by their alignment), i.e.
    # the order of fp32 sums, may differ: about sqrt(K) * 2^-24 relative per layer of K <= 9 * C_in products,
    # adding up like a random walk over ResNet-50's ~55 layers to ~1e-6 (measured on an AMD EPYC; 0 on AMX).
    # 1e-5 is 10x that and far below what a wrong or missing weight does (order 1).
    assert float((a - b).abs().max() / a.abs().max()) < 1e-5


def test_backbone_loads_strictly_from_a_distilled_student(tmp_path: Path) -> None:
    student = build_student("resnet18", WIDTH, num_classes=0)
    student.save_pretrained(tmp_path / "student", safe_serialization=True)
    data = FixtureDataModule(TinyParts(2))
    cfg = FinetuneRun(task="segmentation", init=str(tmp_path))  # arch and width come from the init
    module = build_segmentation(cfg, data)
    assert module.network.config.arch == "resnet18" and module.network.config.width == WIDTH
    loaded = module.network.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in student.state_dict().items())
    assert module.class_names == TinyParts.classes and module.network.config.num_classes == 3

    wider = BiSeNetV1("resnet18", 2 * WIDTH, num_classes=3)
    with pytest.raises(RepFusionError) as err:
        init_backbone(wider.backbone, str(tmp_path))
    message = str(err.value)
    assert "mismatched" in message and "\n" not in message and message.endswith(".")
    assert message.replace("e.g. ", "").count(". ") == 0  # one sentence


def test_scratch_defaults_to_resnet18_and_other_students_are_refused() -> None:
    data = FixtureDataModule(TinyParts(2))
    module = build_segmentation(FinetuneRun(task="segmentation", student=ModelSection(width=WIDTH)), data)
    assert module.network.config.arch == "resnet18"
    with pytest.raises(RepFusionError, match="must be a ResNet student"):
        BiSeNetV1("mobilenetv2", WIDTH)


def test_cifar_stem_keeps_bisenet_stride_ratios_for_tiny_images() -> None:
    network = BiSeNetV1("resnet18_cifar", WIDTH, num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32)
    _, layer2, layer3, layer4 = network.backbone.forward_stages(x)
    spatial = network.spatial_path(x)
    assert spatial.shape[-1] == layer2.shape[-1] == 16 and layer3.shape[-1] == 8 and layer4.shape[-1] == 4
    assert network(x).logits.shape == (1, 3, 32, 32)
    imagenet = BiSeNetV1("resnet18", WIDTH, num_classes=3).eval()
    assert imagenet.spatial_path(torch.randn(1, 3, 64, 64)).shape[-1] == 8  # BiSeNet's stride 8
    with pytest.raises(RepFusionError, match="aux_weight"):
        SegmentationSection(aux_weight=-1)


def test_flip_swaps_left_right_classes_only_for_the_official_order() -> None:
    official = _module(PARSING_CLASSES)
    assert official.augment.label_lut[[4, 5, 6, 7, 8, 9, 10]].tolist() == [5, 4, 7, 6, 9, 8, 10]
    other = _module(TinyParts.classes)
    assert other.augment.label_lut[:10].tolist() == list(range(10))


def test_tiny_trainer_fit_and_test_log_miou_and_per_class_iou() -> None:
    train, test = faces(True, 8, image_size=32), faces(False, 4, image_size=32)  # the contract's item format
    module = _module(train.classes, rotate=10.0)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                         num_sanity_val_steps=0)
    before = {k: v.clone() for k, v in module.network.aux_head16.state_dict().items()}
    trainer.fit(module, DataLoader(train, batch_size=4, shuffle=True), DataLoader(test, batch_size=4))
    assert trainer.global_step == 2
    assert "val/miou" in trainer.callback_metrics and "train/loss" in trainer.callback_metrics
    after = module.network.aux_head16.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the auxiliary loss reached its head
    results = trainer.test(module, DataLoader(test, batch_size=4), verbose=False)[0]
    assert 0.0 <= results["test/miou"] <= 1.0
    present = {PARSING_CLASSES[int(c)] for c in torch.stack([test[i][1]["mask"] for i in range(4)]).unique()
               if c != 255}
    logged = {k.removeprefix("test/iou/") for k in results if k.startswith("test/iou/")}
    assert present <= logged <= set(PARSING_CLASSES)  # every class in the targets has its IoU


def test_overlay_colours_parts_and_keeps_background() -> None:
    images = torch.full((1, 3, 1, 3), 0.2)
    labels = torch.tensor([[[0, 1, 255]]])
    out = overlay_masks(images, labels, alpha=0.5)
    colour = parsing_palette(19)[1].float() / 255
    assert torch.allclose(out[0, :, 0, 0], images[0, :, 0, 0]) and torch.allclose(out[0, :, 0, 2], images[0, :, 0, 2])
    assert torch.allclose(out[0, :, 0, 1], 0.1 + 0.5 * colour)
    assert len({tuple(c) for c in parsing_palette(19).tolist()}) == 19  # every class has its own colour


def test_draw_predictions_writes_a_png(tmp_path: Path) -> None:
    module = _module(PARSING_CLASSES)
    images = torch.stack([TinyParts(2).items[i][0] for i in range(2)]).float() / 255
    module.draw_predictions(images, tmp_path / "predictions.png")
    assert (tmp_path / "predictions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert module.network.training  # the module is left in the mode it was in
    assert not list(tmp_path.glob(".*"))  # written atomically: no temporary file left behind
