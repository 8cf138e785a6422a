import pytest
import torch
from torch import nn

from repfusion.errors import RepFusionError
from repfusion.features import layer_output
from repfusion.layers import list_layers
from repfusion.students import STUDENTS, HRNet, build_student, load_student
from repfusion.students.resnet import Bottleneck
from repfusion.tasks.backbone import load_backbone


def n_params(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def test_w18_backbone_plus_the_reference_classification_head_has_hrnet_w18_c_size():
    """HRNet-W18-C (mmpretrain / timm `hrnet_w18`, 21.30M parameters) = this backbone + its ImageNet head:
    a Bottleneck per branch (32/64/128/256 planes), stride-2 3x3 convs between them, 1x1 to 2048, fc 1000."""
    head: list[nn.Module] = [Bottleneck(c, p) for c, p in zip((18, 36, 72, 144), (32, 64, 128, 256))]
    for cin, cout in ((128, 256), (256, 512), (512, 1024)):
        head += [nn.Conv2d(cin, cout, 3, 2, 1), nn.BatchNorm2d(cout)]
    head += [nn.Conv2d(1024, 2048, 1), nn.BatchNorm2d(2048), nn.Linear(2048, 1000)]
    backbone = build_student("hrnetv2_w18")
    assert backbone.feature_channels == 18 + 36 + 72 + 144
    assert abs(n_params(backbone, *head) - 21_300_000) < 5_000


def test_representation_is_all_branches_at_stride_4():
    model = build_student("hrnetv2_w18", width=0.25).eval()
    assert model.feature_channels == 5 * (1 + 2 + 4 + 8)  # 18 x 0.25 = 4.5, rounded half up
    x = torch.randn(2, 3, 32, 32)
    assert model.forward_features(x).shape == (2, model.feature_channels, 8, 8)
    assert model(x).shape == (2, model.feature_channels)  # num_classes=0: pooled representation


@pytest.mark.parametrize("side", [40, 72])
def test_sides_that_are_not_multiples_of_32_work(side):
    model = build_student("hrnetv2_w18", width=0.125).eval()
    out = model.forward_features(torch.randn(1, 3, side, side))
    assert out.shape[-2:] == ((side + 3) // 4, (side + 3) // 4)


def test_feature_layer_is_hookable_and_is_the_dense_representation():
    model = build_student("hrnetv2_w18", width=0.125).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        hooked = layer_output(model, model.feature_layer, x)
        assert torch.equal(hooked, model.forward_features(x))


def test_classifier_is_named_fc_and_a_bare_export_loads_strictly():
    bare = build_student("hrnetv2_w18", width=0.125).eval()
    classifier = build_student("hrnetv2_w18", width=0.125, num_classes=7)
    assert classifier(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert {"fc.weight", "fc.bias"} <= set(classifier.state_dict())
    load_backbone(classifier, bare.state_dict(), "test")  # only fc. stays random
    assert torch.equal(classifier.state_dict()["conv1.weight"], bare.state_dict()["conv1.weight"])


def test_save_pretrained_round_trip(tmp_path):
    model = build_student("hrnetv2_w18", width=0.125, num_classes=3).eval()
    model.save_pretrained(tmp_path)
    loaded = load_student(tmp_path).eval()
    assert isinstance(loaded, HRNet)
    assert loaded.config.arch == "hrnetv2_w18" and loaded.config.width == 0.125 and loaded.config.num_classes == 3
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))  # exact: load_student gives loaded weights aligned storage of their own


def test_layers_listing_names_the_representation():
    table = list_layers(student="hrnetv2_w18", image_size=64, width=0.125)
    assert "default feature layer: representation" in table
    line = next(row for row in table.splitlines() if row.startswith("representation "))
    assert line.split()[-1] == "2x30x16x16"


def test_registered_and_unknown_arch():
    assert "hrnetv2_w18" in STUDENTS
    with pytest.raises(RepFusionError, match="hrnetv2_w18"):
        HRNet(arch="hrnetv2_w81")


def test_dense_hint_distillation_at_t0_trains_hrnet_and_its_export_loads_into_the_landmark_net(tmp_path):
    """The paper's face pre-training row on a tiny teacher: dense hint at t = 0, no labels (reward none)."""
    from repfusion.data import DataConfig, ImageDataModule
    from repfusion.distill.run import DistillRun, LossSection, StudentSection, TeacherSection, build_distillation
    from repfusion.distill.run import export_student
    from repfusion.distill.timesteps import TimestepConfig
    from repfusion.tasks.backbone import backbone_weights
    from repfusion.tasks.heads.heatmap import LandmarkNet
    from repfusion.training import TrainerConfig, build_trainer

    cfg = DistillRun(teacher=TeacherSection(source="tiny-16"), student=StudentSection("hrnetv2_w18", 0.125),
                     loss=LossSection(name="hint", options={"mode": "dense"}),
                     timesteps=TimestepConfig(strategy="fixed", t=0), reward="none",
                     data=DataConfig(batch_size=8, train_limit=16))
    module = build_distillation(cfg, ImageDataModule(cfg.data))
    assert module.student_layer == "representation"
    before = module.student.state_dict()["conv1.weight"].clone()
    trainer = build_trainer(TrainerConfig(max_steps=2, progress=False, limit_val_batches=0, ema_decay=None), tmp_path)
    trainer.fit(module, datamodule=ImageDataModule(cfg.data))
    assert not torch.equal(before, module.student.state_dict()["conv1.weight"])
    export_student(module, cfg, tmp_path / "student")
    net = LandmarkNet("hrnetv2_w18", width=0.125)
    load_backbone(net.backbone, backbone_weights(str(tmp_path)), str(tmp_path))
    assert torch.equal(net.backbone.state_dict()["conv1.weight"], module.student.state_dict()["conv1.weight"])
