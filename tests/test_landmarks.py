import math

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import Dataset

from repfusion.data import Augment, DataConfig, ImageDataModule
from repfusion.data.face_layout import WFLW_ATTRIBUTES, WFLW_FLIP_PAIRS
from repfusion.data.joint_augment import JointAugment
from repfusion.errors import RepFusionError
from repfusion.students import build_student
from repfusion.tasks.backbone import load_backbone
from repfusion.tasks.finetune import FinetuneRun, ModelSection
from repfusion.tasks.heads.heatmap import LandmarkNet
from repfusion.tasks.landmark_metrics import (LandmarkMetrics, decode_heatmaps, failure_rate_and_auc, flip_heatmaps,
                                              gaussian_heatmaps, nme_per_image, to_heatmap, to_image)
from repfusion.tasks.landmarks import LandmarkSection, Landmarks, build_landmarks, heatmap_loss


def face_points(batch: int = 1) -> torch.Tensor:
    """98 points with the outer eye corners (60, 72) 10 px apart."""
    points = torch.rand(batch, 98, 2) * 40 + 10
    points[:, 60] = torch.tensor([20.0, 30.0])
    points[:, 72] = torch.tensor([30.0, 30.0])
    return points


# --- NME, FR, AUC on hand-computed cases ---------------------------------------------------------------------------

def test_nme_is_the_mean_point_error_over_the_eye_corner_distance():
    target = face_points(2)
    pred = target.clone()
    pred[0] += torch.tensor([3.0, 4.0])  # every point 5 px off, corners 10 px apart: 0.5
    pred[1, 5] += torch.tensor([0.0, 9.8])  # one point of 98 off by 9.8 px: 9.8 / 98 / 10 = 0.01
    assert torch.allclose(nme_per_image(pred, target), torch.tensor([0.5, 0.01]))


def test_nme_refuses_coinciding_eye_corners():
    target = face_points()
    target[:, 72] = target[:, 60]
    with pytest.raises(RepFusionError, match="outer eye corners"):
        nme_per_image(target, target)


def test_failure_rate_and_auc_hand_computed():
    assert failure_rate_and_auc(torch.zeros(4)) == (0.0, pytest.approx(1.0))
    assert failure_rate_and_auc(torch.full((3,), 0.2)) == (1.0, 0.0)
    # one face at 0.04995 (counted from threshold 0.05, index 500 of 1000 steps), one failure at 0.2:
    # ys = 0.5 on indices 500..1000; Simpson weights there (2, 4, 2, ..., 4, 1) sum to 1501.
    fr, auc = failure_rate_and_auc(torch.tensor([0.04995, 0.2]))
    assert fr == 0.5
    assert auc == pytest.approx(1e-4 / 3 * 0.5 * 1501 / 0.1)


def test_metric_collects_per_image_nmes_and_attribute_subsets():
    metric = LandmarkMetrics()
    target = face_points(3)
    nmes = torch.tensor([0.01, 0.03, 0.05])  # every point shifted by nme x 10 px (the eye-corner distance)
    pred = target + torch.stack([nmes * 10, torch.zeros(3)], -1)[:, None]
    attributes = torch.zeros(3, 6, dtype=torch.uint8)
    attributes[0, 0] = attributes[2, 0] = 1  # pose: faces 0 and 2
    attributes[1, 5] = 1  # blur: face 1
    metric.update(pred[:2], target[:2], attributes[:2])
    metric.update(pred[2:], target[2:], attributes[2:])
    out = metric.compute()
    assert out["nme"].item() == pytest.approx(0.03, rel=1e-5)
    assert out["nme/pose"].item() == pytest.approx(0.03, rel=1e-5)
    assert out["nme/blur"].item() == pytest.approx(0.03, rel=1e-5)
    assert out["fr"].item() == 0.0
    assert "nme/occlusion" not in out  # no face in that subset: left out, not NaN
    assert set(WFLW_ATTRIBUTES) >= {k.split("/")[1] for k in out if k.startswith("nme/")}


# --- heatmap encoding and decoding ---------------------------------------------------------------------------------

def test_pixel_centre_mapping_round_trips_and_centres_cells():
    points = torch.tensor([[[0.0, 0.0], [1.5, 1.5], [63.0, 17.25]]])
    assert torch.allclose(to_image(to_heatmap(points, 4), 4), points)
    assert torch.allclose(to_heatmap(points, 4)[0, 1], torch.tensor([0.0, 0.0]))  # cell 0 covers pixels 0..3


def test_dark_decoding_recovers_non_integer_positions_and_beats_the_quarter_shift():
    truth = torch.tensor([[[10.3, 20.7], [31.45, 5.12], [40.0, 40.0], [7.51, 50.49]]])
    heatmaps = gaussian_heatmaps(truth, (64, 64), sigma=2.0)
    dark, maxima = decode_heatmaps(heatmaps, "dark")
    assert (dark - truth).abs().max() < 1e-3
    assert torch.all(maxima > 0.8)
    blurred, _ = decode_heatmaps(heatmaps, "dark", blur_sigma=2.0)  # DARK's modulation keeps it sub-pixel
    assert (blurred - truth).abs().max() < 0.05
    quarter, _ = decode_heatmaps(heatmaps, "quarter")
    assert (quarter - truth).abs().max() <= 0.25 + 1e-6
    argmax = truth.round()
    assert (quarter - truth).abs().mean() < (argmax - truth).abs().mean()
    assert (dark - truth).abs().mean() < (quarter - truth).abs().mean()


def test_encode_decode_round_trip_in_image_pixels():
    points = face_points(2)
    heatmaps = gaussian_heatmaps(to_heatmap(points, 4), (16, 16), sigma=1.5)
    decoded = to_image(decode_heatmaps(heatmaps, "dark")[0], 4)
    assert (decoded - points).abs().max() < 0.02


def test_heatmap_flip_with_pair_swap_matches_joint_augment_flip():
    torch.manual_seed(3)
    points = face_points(1).expand(16, 98, 2).contiguous()
    images = torch.randint(0, 256, (16, 3, 64, 64), dtype=torch.uint8)
    augment = JointAugment(64, flip=True, scale=(1.0, 1.0), rotate=0.0)
    out_images, out = augment(images, {"keypoints": points}, train=True)
    flipped = (out["keypoints"] - points).abs().amax((1, 2)) > 1e-3
    assert 0 < flipped.sum() < 16
    assert torch.allclose(out_images[flipped], images[flipped].float().div(255).flip(-1), atol=1e-5)
    stride = 4
    original = gaussian_heatmaps(to_heatmap(points, stride), (16, 16), 2.0)
    augmented = gaussian_heatmaps(to_heatmap(out["keypoints"], stride), (16, 16), 2.0)
    assert torch.allclose(augmented[flipped], flip_heatmaps(original[flipped], WFLW_FLIP_PAIRS), atol=1e-5)
    assert torch.allclose(flip_heatmaps(flip_heatmaps(original, WFLW_FLIP_PAIRS), WFLW_FLIP_PAIRS), original)


def test_heatmap_loss_ignores_points_that_are_not_visible():
    pred = torch.zeros(1, 2, 2, 2)
    target = torch.ones(1, 2, 2, 2)
    assert heatmap_loss(pred, target).item() == 1.0
    assert heatmap_loss(pred, target, torch.tensor([[1.0, 0.0]])).item() == 0.5  # mean over all 8 cells


# --- networks ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["resnet18", "hrnetv2_w18"])
def test_landmark_net_gives_stride_4_heatmaps_and_loads_a_distilled_backbone(arch):
    net = LandmarkNet(arch, width=0.125, num_keypoints=98).eval()
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, 98, 16, 16)
    student = build_student(arch, width=0.125)
    load_backbone(net.backbone, student.state_dict(), "test")  # strict: every backbone tensor
    assert all(torch.equal(net.backbone.state_dict()[k], v) for k, v in student.state_dict().items())


def test_simplebaseline_resnet50_has_its_published_size():
    """SimpleBaseline ResNet-50 (COCO, 17 joints) has 34.0M parameters; 98 heatmaps add 81 x 257."""
    net = LandmarkNet("resnet50", num_keypoints=17)
    assert abs(sum(p.numel() for p in net.parameters()) - 34_000_000) < 50_000


def test_landmark_net_save_pretrained_round_trip(tmp_path):
    net = LandmarkNet("hrnetv2_w18", width=0.125, num_keypoints=5).eval()
    net.save_pretrained(tmp_path)
    loaded = LandmarkNet.from_pretrained(tmp_path).eval()
    saved, reloaded = net.state_dict(), loaded.state_dict()
    assert saved.keys() == reloaded.keys()
    assert all(torch.equal(saved[k], reloaded[k]) and saved[k].stride() == reloaded[k].stride() for k in saved)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        a, b = net(x), loaded(x)
    # Same weights, same input: only the kernel oneDNN picks for the loaded tensors (it looks at their
    # alignment) may differ, i.e. the order of fp32 sums. Each output is a sum of K <= 9 * C_in products per
    # layer; reordering it moves it by about sqrt(K) * 2^-24 relative (at most K * 2^-24), and the ~20 layers
    # add up like a random walk: ~1e-6 relative (measured 6e-7 on an AMD EPYC, 0 on AMX). 1e-5 is 10x that and
    # far below what a wrong or missing weight does (order 1).
    assert float((a - b).abs().max() / a.abs().max()) < 1e-5


# --- the task ------------------------------------------------------------------------------------------------------

class KeypointFaces(Dataset):
    """Contract-format items: uint8 [3, S, S] and {"keypoints": float [98, 2], "attributes": uint8 [6]}."""

    targets = ("keypoints", "attributes")
    num_keypoints = 98

    def __init__(self, count: int, size: int = 32, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (count, 3, size, size), generator=g, dtype=torch.uint8)
        self.points = torch.rand(count, 98, 2, generator=g) * (size - 12) + 6
        self.points[:, 60, 0] = size * 0.3
        self.points[:, 72, 0] = size * 0.7
        self.attributes = (torch.rand(count, 6, generator=g) > 0.5).to(torch.uint8)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], {"keypoints": self.points[i], "attributes": self.attributes[i]}


def fixture_datamodule(count: int = 8) -> ImageDataModule:
    datamodule = ImageDataModule(DataConfig(batch_size=4))
    datamodule.train_set = KeypointFaces(count)
    datamodule.val_set = datamodule.test_set = KeypointFaces(4, seed=1)
    return datamodule


def test_tiny_fit_logs_nme_fr_auc_and_attribute_subsets(tmp_path):
    datamodule = fixture_datamodule()
    cfg = FinetuneRun(task="landmarks", student=ModelSection("resnet18", 0.125))
    module = build_landmarks(cfg, datamodule)
    assert isinstance(module.network, LandmarkNet) and module.network.config.arch == "resnet18"
    trainer = pl.Trainer(max_steps=2, limit_val_batches=1, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    before = {k: v.clone() for k, v in module.network.head.state_dict().items()}
    trainer.fit(module, datamodule=datamodule)
    assert any(not torch.equal(before[k], v) for k, v in module.network.head.state_dict().items())
    assert math.isfinite(trainer.callback_metrics["val/nme"].item())
    results = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    assert {"test/nme", "test/fr", "test/auc", "test/loss"} <= set(results)
    assert 0.0 <= results["test/fr"] <= 1.0 and 0.0 <= results["test/auc"] <= 1.0
    assert any(k.startswith("test/nme/") for k in results)
    module.draw_predictions(datamodule.test_set.images.float() / 255, tmp_path / "predictions.png",
                            datamodule.test_set.points)
    assert (tmp_path / "predictions.png").stat().st_size > 0


def test_flip_test_prediction_is_mirror_consistent():
    module = Landmarks(LandmarkNet("resnet18", width=0.125).eval(), optim=None,  # type: ignore[arg-type]
                       augment=Augment(32), section=LandmarkSection(flip_test=True))
    images = torch.rand(2, 3, 32, 32)
    heatmaps = module.predict_heatmaps(images)
    mirrored = module.predict_heatmaps(images.flip(-1))
    assert torch.allclose(flip_heatmaps(heatmaps, WFLW_FLIP_PAIRS), mirrored, atol=1e-6)


def test_data_without_keypoints_and_bad_settings_get_one_sentence():
    datamodule = ImageDataModule(DataConfig(batch_size=4))  # digits: class labels only
    with pytest.raises(RepFusionError, match="has no landmarks"):
        build_landmarks(FinetuneRun(task="landmarks", student=ModelSection("resnet18", 0.125)), datamodule)
    with pytest.raises(RepFusionError, match="landmarks.decoder"):
        LandmarkSection(decoder="soft-argmax")
    with pytest.raises(RepFusionError, match="landmarks.sigma"):
        LandmarkSection(sigma=0)


def test_finetune_runner_trains_landmarks_on_generated_faces(tmp_path):
    """The shared runner end to end on the embedded faces: checkpoints, model/ export and predictions.png."""
    from repfusion.tasks.finetune import run_finetune
    from repfusion.training import OptimConfig, TrainerConfig

    cfg = FinetuneRun(task="landmarks", student=ModelSection("resnet18", 0.125),
                      data=DataConfig(source="faces", faces_train=8, faces_test=4, image_size=32, batch_size=4),
                      optim=OptimConfig(name="adam", lr=2e-3, weight_decay=0.0),
                      trainer=TrainerConfig(max_epochs=1, limit_train_batches=2, limit_val_batches=1, progress=False,
                                            accelerator="cpu", devices=1))
    results = run_finetune(cfg, tmp_path)
    assert {"test/nme", "test/fr", "test/auc"} <= set(results)
    assert (tmp_path / "predictions.png").exists()
    loaded = LandmarkNet.from_pretrained(tmp_path / "model")
    assert loaded.config.arch == "resnet18" and loaded.config.num_keypoints == 98
