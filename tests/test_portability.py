"""Reloaded models compute what the saved ones computed, on any CPU (issue 19, item 1), and load quietly
(item 3).

The cause of the difference seen on an AMD EPYC without AMX: diffusers' `from_pretrained` assigns the
memory-mapped safetensors tensors to the parameters, so they start at the file's 8-byte-aligned offsets,
and oneDNN chooses its kernels (so the order of fp32 sums) by pointer alignment. `repfusion.pretrained`
gives loaded tensors storage of their own, 64-byte aligned like a freshly built model's. The alignment is
checked directly (it fails on the unfixed code on every CPU); the bit-identical outputs fail there on the
CPUs whose kernel choice depends on it.
"""

from __future__ import annotations

import torch

from repfusion.pretrained import own_storage
from repfusion.students import build_student, load_student
from repfusion.teachers.loading import load_unet_and_scheduler, unet_from_preset


def own_aligned_storage(t: torch.Tensor) -> bool:
    storage = t.untyped_storage()
    return t.data_ptr() % 64 == 0 and storage.nbytes() == t.numel() * t.element_size()


def test_loaded_student_and_teacher_tensors_have_their_own_aligned_storage(tmp_path):
    student = build_student("resnet18_cifar", width=0.25)
    student.save_pretrained(tmp_path / "student")
    teacher = unet_from_preset("tiny-16")
    teacher.save_pretrained(tmp_path / "teacher")
    for model in (load_student(tmp_path / "student"), load_unet_and_scheduler(str(tmp_path / "teacher"))[0]):
        tensors = [*model.parameters(), *model.buffers()]
        assert tensors and all(own_aligned_storage(t) for t in tensors if t.numel())


def test_reloaded_models_give_the_same_bits_and_state_dicts(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for name, width in (("hrnetv2_w18", 0.125), ("resnet50", 0.25), ("mobilenetv2_cifar", 0.5)):
        model = build_student(name, width=width).eval()
        model.save_pretrained(tmp_path / name)
        loaded = load_student(tmp_path / name).eval()
        saved, reloaded = model.state_dict(), loaded.state_dict()
        assert saved.keys() == reloaded.keys()
        assert all(torch.equal(saved[k], reloaded[k]) and saved[k].stride() == reloaded[k].stride() for k in saved)
        with torch.no_grad():
            assert torch.equal(model(x), loaded(x)), name
    teacher = unet_from_preset("tiny-16").eval()
    teacher.save_pretrained(tmp_path / "teacher")
    loaded = load_unet_and_scheduler(str(tmp_path / "teacher"))[0].eval()
    with torch.no_grad():
        t = torch.tensor([10, 500])
        assert torch.equal(teacher(x, t).sample, loaded(x, t).sample)


def test_own_storage_keeps_values_strides_and_tied_weights():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    net[1].weight = net[0].weight  # tied
    channels_last = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    net.register_buffer("layout", channels_last)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    own_storage(net)
    assert net[1].weight is net[0].weight and net[0].weight.requires_grad
    assert net.layout.stride() == channels_last.stride()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_loading_a_student_or_teacher_prints_nothing(tmp_path, capfd):
    build_student("resnet18_cifar", width=0.25).save_pretrained(tmp_path / "student")
    unet_from_preset("tiny-16").save_pretrained(tmp_path / "teacher")
    capfd.readouterr()
    load_student(tmp_path / "student")
    load_unet_and_scheduler(str(tmp_path / "teacher"))
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # no advice to pip install accelerate
