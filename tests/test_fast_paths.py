"""The speed options give the plain path's numbers; the per-step machinery keeps its behaviour without syncs.

Tolerances: bf16 keeps 8 bits of mantissa (a relative rounding of 2^-8 = 0.4 % per operation). Independent
roundings through L layers add up like a random walk, 0.4 % x sqrt(L): the tiny teacher's ~10 convolutions
and group norms give ~1.3 % (measured 1.6 %), the student's 17 convolutions with batch-statistics BatchNorm
over 8 images ~1.6 % and more (measured 3.1 %), so bf16 must agree within 5e-2 relative, and the loss
likewise. Compilation and channels-last change only the order of fp32 sums (relative rounding u = 2^-24 =
6e-8 per operation): a convolution output is a sum of K = 9 * C_in products (K <= 1152 here), which a reordering
moves by about sqrt(K) * u (at most K * u = 7e-5) relative to the sum of its magnitudes, and the student's
17 layers, with batch-statistics BatchNorm dividing by standard deviations over 8 images, add these up like a
random walk and amplify them: measured 1.01e-5 relative on an AMD EPYC, under 1e-5 on AMX. They must agree within
5e-5 relative: 5x the largest measured, and 1000x below bf16's error, what a real precision change does.
"""

from __future__ import annotations

import types

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from repfusion.data import DataConfig, ImageDataModule
from repfusion.data.datasets import TensorImageDataset
from repfusion.data.device_data import DeviceBatches, device_batches
from repfusion.distill.run import DistillRun, StudentSection, TeacherSection, build_distillation
from repfusion.ema import ema_tensors
from repfusion.errors import RepFusionError
from repfusion.fastpath import FastPaths, apply_fast_paths, autocast_context, resolve_fast_paths
from repfusion.run import EpochSampler
from repfusion.training import NonFiniteLossGuard, TrainerConfig

CPU = torch.device("cpu")


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12))


def distillation():
    torch.manual_seed(0)
    cfg = DistillRun(teacher=TeacherSection(source="tiny-16"), student=StudentSection("resnet18_cifar", 0.25),
                     data=DataConfig(batch_size=8))
    module = build_distillation(cfg, ImageDataModule(cfg.data))
    return module.train()


def first_step(module, fast: FastPaths, images, labels):
    """Teacher feature, student feature and loss of the first training step, from the same random state."""
    apply_fast_paths(module, fast)
    torch.manual_seed(1)
    with autocast_context(fast, CPU):
        teacher = module.teacher_features(images, torch.full((len(images),), 10))
        student = module.student_features(module.normalize(images))
        torch.manual_seed(1)
        loss = module.training_step((images, labels), 0)
    return teacher, student, loss


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(2)
    return torch.rand(8, 3, 16, 16), torch.randint(0, 10, (8,))


@pytest.fixture(scope="module")
def plain(batch):
    return [t.detach() for t in first_step(distillation(), FastPaths("32-true", False, False), *batch)]


def test_auto_turns_on_only_what_is_safe_on_the_device():
    cfg = TrainerConfig()
    assert resolve_fast_paths(cfg, CPU) == FastPaths("32-true", channels_last=False, compile=False)
    gpu = resolve_fast_paths(cfg, torch.device("cuda"))
    assert gpu.channels_last and not gpu.compile
    assert gpu.precision == ("bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported()
                             else "32-true")
    explicit = TrainerConfig(precision="bf16-mixed", channels_last=True, compile="true")
    assert resolve_fast_paths(explicit, CPU) == FastPaths("bf16-mixed", True, True)
    with pytest.raises(RepFusionError, match="trainer.compile must be true, false or auto, not 'sometimes'"):
        TrainerConfig(compile="sometimes")  # the section checks itself when built


def test_bf16_autocast_gives_the_same_features_and_first_loss(batch, plain):
    teacher, student, loss = first_step(distillation(), FastPaths("bf16-mixed", False, False), *batch)
    assert teacher.dtype == torch.bfloat16  # autocast really ran the teacher in bf16
    assert relative(teacher, plain[0]) < 5e-2 and relative(student, plain[1]) < 5e-2
    assert abs(float(loss) - float(plain[2])) / abs(float(plain[2])) < 5e-2


def test_channels_last_gives_the_same_features_and_first_loss(batch, plain):
    module = distillation()
    teacher, student, loss = first_step(module, FastPaths("32-true", True, False), *batch)
    assert module.student.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert relative(teacher, plain[0]) < 5e-5 and relative(student, plain[1]) < 5e-5  # see the module docstring
    assert abs(float(loss) - float(plain[2])) / abs(float(plain[2])) < 5e-5


def test_compile_gives_the_same_features_loss_and_checkpoint_keys(batch, plain, monkeypatch):
    # dynamo captures the student (its persistent tap's hook) with its eager backend:
    # what can break in capture is tested here in seconds; inductor's own numerics (fp32, reordered sums)
    # are compared on a GPU by benchmarks/gpu_check.sh
    original = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: original(self, backend="eager"))
    monkeypatch.setattr(torch._dynamo.config, "automatic_dynamic_shapes", False)  # no symbolic re-trace
    module = distillation()
    keys = list(module.state_dict())
    teacher, student, loss = first_step(module, FastPaths("32-true", False, True), *batch)
    assert module.student._compiled_call_impl is not None
    assert module.teacher.unet._compiled_call_impl is None  # its hook-based truncation does not survive inductor
    assert relative(teacher, plain[0]) < 1e-5 and relative(student, plain[1]) < 1e-5
    assert abs(float(loss) - float(plain[2])) / abs(float(plain[2])) < 1e-5
    loss.backward()  # gradients flow through the compiled student
    assert module.student.conv1.weight.grad is not None
    assert list(module.state_dict()) == keys  # compiled in place: checkpoints and exports unchanged
    assert not any(name.startswith("teacher.") for name in ema_tensors(module))  # EMA leaves the teacher out


def test_device_batches_are_the_dataloaders_batches_and_resume_mid_epoch():
    images = torch.randint(0, 256, (23, 3, 4, 4), dtype=torch.uint8)
    dataset = Subset(TensorImageDataset(images, torch.arange(23) % 5, list("abcde")), list(range(2, 22)))
    sampler = EpochSampler(len(dataset), 6, seed=3)
    batches = device_batches(dataset, CPU, 6, True, sampler, {})
    assert isinstance(batches, DeviceBatches) and len(batches) == 3
    loader = DataLoader(dataset, batch_size=6, sampler=sampler, drop_last=True)
    for (a, y), (b, z) in zip(batches, loader, strict=True):
        assert torch.equal(a, b) and torch.equal(y, z) and a.dtype == torch.uint8
    # a resumed epoch (2 batches done) continues with the batches the uninterrupted epoch would draw next
    trainer = types.SimpleNamespace(fit_loop=types.SimpleNamespace(
        epoch_progress=types.SimpleNamespace(current=types.SimpleNamespace(started=1, processed=0)),
        epoch_loop=types.SimpleNamespace(batch_progress=types.SimpleNamespace(current=types.SimpleNamespace(
            processed=2)))))
    resumed = device_batches(dataset, CPU, 6, True, EpochSampler(len(dataset), 6, 3, lambda: trainer), {})
    rest = list(resumed)
    assert len(rest) == 1 and torch.equal(rest[0][0], list(batches)[2][0])
    # unordered (validation): every image once, in order, the last batch short
    val = list(device_batches(dataset, CPU, 6, False, None, {}))
    assert [len(y) for _, y in val] == [6, 6, 6, 2] and torch.equal(torch.cat([x for x, _ in val]), images[2:22])


def test_files_keep_the_dataloader():
    assert device_batches([(torch.zeros(3, 2, 2, dtype=torch.uint8), {"mask": 0})], CPU, 2, False, None, {}) is None


def fake_trainer(step: int = 7):
    return types.SimpleNamespace(global_step=step, current_epoch=0, checkpoint_callbacks=[])


def test_nan_guard_reads_its_flags_late_but_names_the_first_bad_step():
    guard = NonFiniteLossGuard(every=100)
    guard.params = [torch.ones(3)]
    guard.pending = [(step, 0, torch.tensor(float("nan") if step == 5 else 1.0)) for step in (4, 5, 6)]
    with pytest.raises(RepFusionError, match=r"The training loss became nan at step 5 \(epoch 0\)"):
        guard.check(fake_trainer())
    assert guard.pending == []
    guard.check(fake_trainer())  # nothing pending: nothing to say


def test_nan_guard_checks_the_weights_before_a_checkpoint():
    guard = NonFiniteLossGuard(every=10)
    guard.params = [torch.ones(3), torch.tensor([1.0, float("inf")])]
    guard.on_train_batch_end(fake_trainer(7), None, {"loss": torch.tensor(0.5)}, None, 0)  # a finite loss passes
    with pytest.raises(RepFusionError, match="The weights became non-finite at step 7"):
        guard.on_save_checkpoint(fake_trainer(7), None, {})
