"""Fine-tuning that keeps what distillation put in (issue 23): LP-FT's head phase, the teacher in the loop,
cached teacher targets and projector heads."""

from dataclasses import replace

import pytest
import torch

from repfusion.cli import main
from repfusion.data import DataConfig, ImageDataModule
from repfusion.distill.cache import CachedTargets, StoredViews
from repfusion.distill.losses import build_loss
from repfusion.errors import RepFusionError
from repfusion.io import load_tensors
from repfusion.tasks.classification import build_classification
from repfusion.tasks.finetune import FinetuneRun, run_finetune
from repfusion.tasks.teacher_in_loop import TeacherInLoopSection
from repfusion.training import TrainerConfig

FAST = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
        "--trainer.progress", "false", "--data.batch_size", "16", "--student.width", "0.125",
        "--timesteps.strategy", "fixed", "--reward", "none"]


@pytest.fixture(scope="module")
def distill_dirs(tmp_path_factory):
    """A student distilled with an MLP projector, and its random-teacher twin."""
    trained = tmp_path_factory.mktemp("distill")
    assert main(["distill", "--run-dir", str(trained), *FAST, "--loss.options", '{"projector": "mlp"}']) == 0
    random = tmp_path_factory.mktemp("distill_random")
    assert main(["distill", "--run-dir", str(random), *FAST, "--teacher.init", "random",
                 "--trainer.seed", "3"]) == 0
    return trained, random


def finetune_cfg(init, **changes) -> FinetuneRun:
    cfg = FinetuneRun(init=str(init), data=DataConfig(batch_size=16, label_fraction=0.2),
                      trainer=TrainerConfig(max_epochs=2, limit_train_batches=2, limit_val_batches=1, progress=False,
                                            ema_decay=None))
    return replace(cfg, **changes)


def test_head_only_phase_leaves_every_backbone_weight_unchanged(distill_dirs, tmp_path):
    """A probe kept to the end (head_epochs = every epoch): no backbone weight moves; the BatchNorm statistics
    are the labelled images' own (recalibrated once), which training and evaluation then both use."""
    trained, _ = distill_dirs
    exported = load_tensors(trained / "student" / "diffusion_pytorch_model.safetensors")
    cfg = finetune_cfg(trained, head_epochs=1)
    cfg = replace(cfg, trainer=replace(cfg.trainer, max_epochs=1))
    run_finetune(cfg, tmp_path / "ft")
    tuned = load_tensors(tmp_path / "ft" / "model" / "diffusion_pytorch_model.safetensors")
    backbone = [k for k in exported if not k.startswith("fc.")]
    weights = [k for k in backbone if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert all(torch.equal(tuned[k], exported[k]) for k in weights)
    statistics = [k for k in backbone if k.endswith("running_mean")]
    assert statistics and not all(torch.equal(tuned[k], exported[k]) for k in statistics)
    assert not torch.equal(tuned["fc.weight"], build_classification(cfg, ImageDataModule(
        cfg.data, labelled_only=True)).model.state_dict()["fc.weight"])  # the head did train


def test_after_the_head_phase_the_backbone_trains(distill_dirs, tmp_path):
    trained, _ = distill_dirs
    exported = load_tensors(trained / "student" / "diffusion_pytorch_model.safetensors")
    run_finetune(finetune_cfg(trained, head_epochs=1), tmp_path / "ft")
    tuned = load_tensors(tmp_path / "ft" / "model" / "diffusion_pytorch_model.safetensors")
    assert not torch.equal(tuned["conv1.weight"], exported["conv1.weight"])


def in_loop_module(init):
    cfg = finetune_cfg(init, teacher_in_loop=TeacherInLoopSection(weight=1.0, batch_size=4, views=3))
    module = build_classification(cfg, ImageDataModule(cfg.data, labelled_only=True))
    module.train()
    return module


def test_an_unlabelled_batch_gives_only_the_distillation_term_and_a_labelled_one_both(distill_dirs):
    trained, _ = distill_dirs
    module = in_loop_module(trained)
    images = torch.rand(4, 3, 16, 16)
    labelled = module.objective(images, torch.tensor([0, 1, 2, 3]), step=0)
    assert set(labelled) == {"ce", "logits", "distill_labelled", "distill_unlabelled"}
    unlabelled = module.objective(images, None, step=0)
    assert set(unlabelled) == {"distill_unlabelled"}
    # the unlabelled term reads no label: the same step draws the same images, whatever the labelled batch holds
    again = module.objective(torch.rand(4, 3, 16, 16), torch.tensor([4, 5, 6, 7]), step=0)
    assert torch.allclose(again["distill_unlabelled"], labelled["distill_unlabelled"], atol=1e-5)
    # and its gradient reaches the backbone and the adapter, not the classifier head
    module.zero_grad()
    unlabelled["distill_unlabelled"].backward()
    assert module.model.conv1.weight.grad.abs().sum() > 0
    assert module.model.fc.weight.grad is None or module.model.fc.weight.grad.abs().sum() == 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.in_loop.term.loss.parameters())


def test_the_in_loop_term_is_the_distillation_it_continues(distill_dirs):
    """The adapter and target statistics come back from the distill run's head file."""
    trained, _ = distill_dirs
    head = load_tensors(trained / "student" / "distillation_head.safetensors")
    term = in_loop_module(trained).in_loop.term
    state = term.loss.state_dict()
    assert state and all(torch.equal(state[k], head[f"distill_loss.{k}"]) for k in state)
    assert isinstance(term.loss.adapter, torch.nn.Sequential)  # the MLP projector


def test_the_random_teacher_is_rebuilt_with_its_own_seed(distill_dirs):
    _, random = distill_dirs
    term = in_loop_module(random).in_loop.term
    from repfusion.teachers import load_teacher

    same = load_teacher("tiny-16", init="random", init_seed=3)
    other = load_teacher("tiny-16", init="random", init_seed=4)
    first = next(iter(term.teacher.unet.state_dict()))
    assert torch.equal(term.teacher.unet.state_dict()[first], same.unet.state_dict()[first])
    assert not torch.equal(term.teacher.unet.state_dict()[first], other.unet.state_dict()[first])


def test_joint_finetuning_runs_and_logs_both_terms(distill_dirs, tmp_path):
    trained, _ = distill_dirs
    cfg = finetune_cfg(trained, head_epochs=1, teacher_in_loop=TeacherInLoopSection(weight=0.5, batch_size=8))
    results = run_finetune(cfg, tmp_path / "ft")
    assert 0 <= results["test/top1"] <= 1
    header = (tmp_path / "ft" / "metrics.csv").read_text().splitlines()[0]
    assert "train/distill_unlabelled" in header and "train/ce" in header


def test_teacher_in_loop_needs_a_distilled_init(tmp_path):
    cfg = replace(finetune_cfg(tmp_path, teacher_in_loop=TeacherInLoopSection(weight=1.0)), init=None)
    with pytest.raises(RepFusionError, match="teacher_in_loop needs init"):
        build_classification(cfg, ImageDataModule(cfg.data, labelled_only=True))


def test_bad_protocol_values_are_one_sentence():
    with pytest.raises(RepFusionError, match="head_epochs"):
        FinetuneRun(head_epochs=-1)
    with pytest.raises(RepFusionError, match="teacher_in_loop.weight"):
        TeacherInLoopSection(weight=-1)
    with pytest.raises(RepFusionError, match="dense tasks"):
        FinetuneRun(task="segmentation", head_epochs=2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cached_targets_equal_recomputed_ones_under_the_cached_augmentations(tiny_teacher_dir, dtype):
    """In float64 the cache equals a fresh teacher call to 1e-6; in float32 a batch of another size alone moves
    the UNet's output by ~2e-6 (a few ulps of values near 4), so there the bound is 1e-5."""
    from repfusion.teachers import load_teacher

    teacher = load_teacher(str(tiny_teacher_dir)).to(dtype)

    def target(images01, _index=None):
        t = torch.zeros(len(images01), dtype=torch.long)
        return teacher(images01.to(dtype), t, ("mid_block",))["mid_block"]  # it maps [0, 1] itself

    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    views = StoredViews(len(images), views=4, padding=2, flip=True, seed=0)
    cache = CachedTargets(images, views, target, chunk=3)
    index, view = torch.tensor([0, 3, 3, 9, 5]), torch.tensor([0, 1, 2, 3, 2])
    shown, cached = cache.batch(index, view)
    assert cached.dtype == dtype
    bound = dict(atol=1e-6, rtol=0) if dtype == torch.float64 else dict(atol=1e-5, rtol=1e-5)
    assert torch.allclose(cached, target(shown), **bound)
    assert torch.equal(shown[0], images[0].float() / 255)  # view 0 is the image as it is
    assert torch.equal(shown[1], images[3].float().flip(-1) / 255)  # view 1 its mirror image


def test_stored_views_match_a_padded_crop_and_flip():
    images = torch.rand(3, 1, 5, 5)
    views = StoredViews(3, views=3, padding=2, flip=True, seed=1)
    out = views.apply(images, torch.tensor([0, 1, 2]), torch.tensor([2, 2, 2]))
    padded = torch.nn.functional.pad(images, [2] * 4)
    for i in range(3):
        dy, dx = views.offsets[i, 2].tolist()
        expected = padded[i, :, dy:dy + 5, dx:dx + 5]
        expected = expected.flip(-1) if views.flips[i, 2] else expected
        assert torch.equal(out[i], expected)


def test_projector_heads_are_not_in_the_exported_backbone(distill_dirs):
    trained, _ = distill_dirs
    exported = load_tensors(trained / "student" / "diffusion_pytorch_model.safetensors")
    assert not any("adapter" in k or k.startswith("distill_loss") for k in exported)
    head = load_tensors(trained / "student" / "distillation_head.safetensors")
    assert any(k.startswith("distill_loss.adapter.3.") for k in head)  # the MLP's last layer lives beside it


def test_cosine_smoothl1_stored_value():
    loss = build_loss("cosine_smoothl1", (2,), (2,))
    with torch.no_grad():
        loss.adapter.weight.copy_(torch.eye(2))
        loss.adapter.bias.zero_()
    student, teacher = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    # cosine 0 -> 0.9 x 1; smooth-L1: mean(0.5, 1.5) = 1.0 -> 0.1 x 1.0
    assert loss(student, teacher).item() == pytest.approx(0.9 + 0.1)


def test_probe_head_predicts_as_the_logistic_regression_probe(distill_dirs):
    """head_init probe: the head is the backbone's probe on training-mode features (batch statistics), its
    standardisation folded into fc; fitting it changes no backbone tensor."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from repfusion.features import layer_output, pooled
    from repfusion.tasks.classification import fit_probe_head

    trained, _ = distill_dirs
    cfg = finetune_cfg(trained, head_init="probe")
    data = ImageDataModule(cfg.data, labelled_only=True)
    module = build_classification(cfg, data)
    before = {k: v.clone() for k, v in module.model.state_dict().items() if not k.startswith("fc.")}
    fit_probe_head(module.model, data.train_set, module.normalize, torch.device("cpu"), batch_size=10_000)
    assert all(torch.equal(v, module.model.state_dict()[k]) for k, v in before.items())
    images = torch.stack([data.train_set[i][0] for i in range(len(data.train_set))]).float() / 255
    labels = np.array([data.train_set[i][1] for i in range(len(data.train_set))])
    module.model.train()
    for m in module.model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.track_running_stats = False  # one batch of every image: the statistics the probe saw
    with torch.no_grad():
        features = pooled(layer_output(module.model, "layer4", module.normalize(images))).numpy()
        predicted = module.model(module.normalize(images)).argmax(1).numpy()
    mean, std = features.mean(0), features.std(0) + 1e-6
    expected = LogisticRegression(C=0.1, max_iter=1000).fit((features - mean) / std, labels).predict(
        (features - mean) / std)
    assert np.mean(predicted == expected) > 0.98


def test_recalibrated_statistics_are_the_exact_average_over_the_images():
    """recalibrate_batchnorm: one pass gives each BatchNorm the mean and (unbiased) variance of its input over
    the whole dataset, whatever it stored before; weights and momentum are left as they were."""
    from repfusion.tasks.classification import recalibrate_batchnorm

    torch.manual_seed(0)
    images = torch.rand(40, 3, 8, 8)
    dataset = torch.utils.data.TensorDataset(images, torch.zeros(40, dtype=torch.long))
    conv, norm = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, momentum=0.3)
    norm.running_mean.fill_(5.0)
    model = torch.nn.Sequential(conv, norm).eval()
    recalibrate_batchnorm(model, dataset, torch.nn.Identity(), torch.device("cpu"), batch_size=40)
    with torch.no_grad():
        inputs = conv(images).transpose(0, 1).flatten(1)
    assert torch.allclose(norm.running_mean, inputs.mean(1), atol=1e-5)
    assert torch.allclose(norm.running_var, inputs.var(1), atol=1e-5)
    assert norm.momentum == 0.3 and not model.training
