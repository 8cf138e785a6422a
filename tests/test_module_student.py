"""A plain torch.nn.Module as a student through the Python API: distilled, exported, fine-tuned, reloaded."""

import copy
import json

import pytest
import torch
from torch import nn

from repfusion.data import DataConfig, ImageDataModule
from repfusion.distill.run import DistillRun, StudentSection, TeacherSection, run_distillation
from repfusion.errors import RepFusionError
from repfusion.io import load_tensors
from repfusion.students import ModuleStudent, load_student
from repfusion.tasks.classification import build_classification
from repfusion.tasks.finetune import FinetuneRun, run_finetune
from repfusion.training import TrainerConfig


class TinyNet(nn.Module):
    """A user's network: its own names, a root-level parameter and buffer, and its own classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.gain = nn.Parameter(torch.ones(1))
        self.register_buffer("shift", torch.zeros(1))
        self.classifier = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(self.stem(x * self.gain + self.shift)).mean((2, 3)))


def fast_trainer(**kwargs) -> TrainerConfig:
    return TrainerConfig(max_epochs=1, limit_train_batches=3, limit_val_batches=1, progress=False, **kwargs)


def test_module_student_has_the_modules_own_names_and_keeps_shared_tensors_shared():
    net = TinyNet()
    student = ModuleStudent(net, feature_layer="body")
    keys = set(student.state_dict())
    assert keys == {k for k in net.state_dict() if not k.startswith("classifier.")}  # no prefix, no user head
    assert student.feature_channels == 16 and student.config.arch == "module:TinyNet"
    x = torch.randn(2, 3, 16, 16)
    assert student.forward_features(x).shape == (2, 16, 8, 8) and student(x).shape == (2, 16)
    copied = copy.deepcopy(student).double()  # root tensors follow dtype/device changes in the wrapped net
    assert copied._net.shift.dtype == torch.float64 and copied._net.gain is copied.gain
    assert copied(x.double()).dtype == torch.float64
    student.eval()
    assert not net.training and not net.stem.training


def test_bad_feature_layers_are_one_sentence():
    with pytest.raises(RepFusionError, match="Unknown feature layer of module:TinyNet 'bdy'; closest valid names: body"):
        ModuleStudent(TinyNet(), "bdy")
    with pytest.raises(RepFusionError, match="gives a 1 x 10 output, not a B x C x H x W map"):
        ModuleStudent(TinyNet(), "classifier")


def test_plain_module_distils_and_fine_tunes_through_the_api(tmp_path):
    cfg = DistillRun(teacher=TeacherSection(source="tiny-16"), student=StudentSection(layer="body"),
                     data=DataConfig(batch_size=16), trainer=fast_trainer())
    distill_dir = tmp_path / "distill"
    exported = run_distillation(cfg, distill_dir, student=ModuleStudent(TinyNet(), feature_layer="body"))
    config = json.loads((exported / "config.json").read_text())
    assert config["_class_name"] == "ModuleStudent" and config["arch"] == "module:TinyNet"
    assert config["feature_layer"] == "body" and config["width"] == 1.0
    weights = load_tensors(exported / "diffusion_pytorch_model.safetensors")
    assert "stem.0.weight" in weights and "gain" in weights and not any(k.startswith("net.") for k in weights)
    assert json.loads((exported / "distillation.json").read_text())["student"]["arch"] == "module:TinyNet"

    with pytest.raises(RepFusionError, match=r"module:TinyNet .*pass it again"):
        load_student(exported)  # a name cannot rebuild the class
    reloaded = load_student(exported, module=TinyNet())
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in weights.items())

    finetune = FinetuneRun(init=str(distill_dir), data=DataConfig(batch_size=16), trainer=fast_trainer(ema_decay=None))
    with pytest.raises(RepFusionError, match="pass it again"):
        run_finetune(finetune, tmp_path / "no-module")  # the init names a module the config cannot build
    model = build_classification(finetune, ImageDataModule(finetune.data),
                                 student=ModuleStudent(TinyNet(), "body")).model
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    assert model.fc.out_features == 10
    results = run_finetune(finetune, tmp_path / "finetune", student=ModuleStudent(TinyNet(), "body"))
    assert 0.0 <= results["test/top1"] <= 1.0
    assert json.loads((tmp_path / "finetune" / "model" / "config.json").read_text())["num_classes"] == 10


def test_a_bare_module_or_another_class_is_refused(tmp_path):
    cfg = FinetuneRun(data=DataConfig(batch_size=16), trainer=fast_trainer())
    with pytest.raises(RepFusionError, match="wrap it: ModuleStudent"):
        run_finetune(cfg, tmp_path / "bare", student=TinyNet())
    student = ModuleStudent(TinyNet(), "body")
    student.save_pretrained(tmp_path / "export", safe_serialization=True)
    with pytest.raises(RepFusionError, match="is module:TinyNet, not module:Linear"):
        ModuleStudent.from_pretrained(tmp_path / "export", module=nn.Linear(2, 2))


def test_one_tap_mechanism_reads_the_wrapped_feature_and_lets_an_outer_early_stop_through():
    """The wrapper reads its feature layer with a `FeatureTap` (no private hook of its own); a caller's tap that
    stops inside the wrapped net's forward stops there, not swallowed by the wrapper's own tap."""
    from repfusion.features import CallPlan, FeatureTap
    from repfusion.students import wrapper

    assert not hasattr(wrapper, "_FeatureReady")
    student = ModuleStudent(TinyNet(), feature_layer="body").eval()
    x = torch.randn(2, 3, 16, 16)
    by_hand = student.body(student.stem(x * student.gain + student.shift))
    assert torch.equal(student.forward_features(x), by_hand)
    ran_body: list[int] = []
    handle = student.body.register_forward_hook(lambda *_: ran_body.append(1))
    try:
        with FeatureTap(student, ["stem"], CallPlan.first_call("stem")) as tap:
            features = tap.run(lambda: student(x)).pop()
    finally:
        handle.remove()
    assert torch.equal(features["stem"], student.stem(x * student.gain + student.shift)) and not ran_body
