import pytest
import torch

from repfusion.errors import RepFusionError
from repfusion.features import FeatureTap
from repfusion.teachers import DEFAULT_TEACHER_LAYER, DiffusionTeacher, load_teacher, model_pixels, unet_from_preset


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_ddpm_cifar10_preset_is_the_hub_architecture():
    unet = unet_from_preset("ddpm-cifar10-32")
    assert n_params(unet) == 35_746_307
    assert tuple(unet.config.block_out_channels) == (128, 256, 256, 256)
    teacher = DiffusionTeacher(unet, __import__("repfusion").teachers.default_scheduler())
    assert teacher.feature_shape(DEFAULT_TEACHER_LAYER) == (256, 4, 4)


def test_celebahq_preset_mid_block_width():
    unet = unet_from_preset("ddpm-ema-celebahq-256")
    assert unet.mid_block.resnets[1].conv2.out_channels == 512
    assert 113e6 < n_params(unet) < 114.5e6


def test_medium_preset_keeps_small_layer_names_at_double_width():
    """medium-32 stands in for small-32 as a stronger CIFAR teacher: the same layers (so a layer chosen on one
    names a layer of the other), twice the channels, and a pipeline may train it itself."""
    from repfusion.pipeline.config import PIPELINE_PRESETS, TeacherChoice
    from repfusion.pipeline.inspect import PRESET_SIZES

    small, medium = unet_from_preset("small-32"), unet_from_preset("medium-32")
    assert n_params(medium) == 6_472_195
    layer_names = lambda unet: {name.split(".")[0] + "." + name.split(".")[1]  # noqa: E731
                                for name, _ in unet.named_modules() if name.count(".") >= 1}
    assert layer_names(small) == layer_names(medium)
    x, t = torch.rand(2, 3, 32, 32), torch.zeros(2, dtype=torch.long)
    scheduler = __import__("repfusion").teachers.default_scheduler()
    small_map = DiffusionTeacher(small, scheduler)(x, t, ("up_blocks.0",))["up_blocks.0"]
    medium_map = DiffusionTeacher(medium, scheduler)(x, t, ("up_blocks.0",))["up_blocks.0"]
    assert medium_map.shape[1] == 2 * small_map.shape[1] and medium_map.shape[2:] == small_map.shape[2:]
    assert "medium-32" in PIPELINE_PRESETS and PRESET_SIZES["medium-32"] == 32
    TeacherChoice(preset="medium-32")  # accepted: trained on the folder when no source is given


def test_truncated_features_equal_full_forward_exactly():
    teacher = load_teacher("ddpm-cifar10-32")
    x = torch.rand(3, 3, 32, 32)
    t = torch.tensor([0, 10, 999])
    layers = ("down_blocks.1.attentions.0", DEFAULT_TEACHER_LAYER, "mid_block.resnets.1.nonlinearity")
    truncated = teacher(x, t, layers)
    full = teacher(x, t, layers, truncate=False)
    for name in layers:
        assert torch.equal(truncated[name], full[name])


def test_truncation_skips_the_decoder():
    teacher = load_teacher("tiny-16")
    x, t = torch.zeros(2, 3, 16, 16), torch.zeros(2, dtype=torch.long)
    teacher(x, t)  # the first call traces the execution order once
    calls = []
    teacher.unet.up_blocks[0].register_forward_hook(lambda *a: calls.append("up"))
    teacher.unet.conv_out.register_forward_hook(lambda *a: calls.append("out"))
    teacher.unet.mid_block.register_forward_pre_hook(lambda *a: calls.append("mid"))
    teacher(x, t)
    assert calls == ["mid"]


def test_shared_activation_module_gives_its_last_call():
    teacher = load_teacher("tiny-16")
    x, t = torch.rand(2, 3, 16, 16), torch.tensor([5, 500])
    a = teacher(x, t, ("mid_block.resnets.0.nonlinearity",))["mid_block.resnets.0.nonlinearity"]
    b = teacher(x, t, ("mid_block.resnets.0.nonlinearity",), truncate=False)["mid_block.resnets.0.nonlinearity"]
    assert torch.equal(a, b)


def test_clean_and_noised_modes():
    teacher = load_teacher("tiny-16")
    x01 = torch.rand(2, 3, 16, 16)
    x = model_pixels(x01)  # where the denoiser works; the teacher itself takes [0, 1]
    t = torch.tensor([300, 300])
    noise = torch.randn_like(x)
    clean = teacher(x01, t)[DEFAULT_TEACHER_LAYER]
    noised = teacher(x01, t, noise_mode="noised", noise=noise)[DEFAULT_TEACHER_LAYER]
    with FeatureTap(teacher.unet, [DEFAULT_TEACHER_LAYER]) as tap, torch.no_grad():
        by_hand = tap.run(lambda: teacher.unet(teacher.scheduler.add_noise(x, noise, t), t)).pop()[DEFAULT_TEACHER_LAYER]
    assert torch.equal(noised, by_hand)
    assert not torch.allclose(clean, noised)
    abar = teacher.scheduler.alphas_cumprod[300]
    assert torch.allclose(teacher.noised(x, t, noise), abar.sqrt() * x + (1 - abar).sqrt() * noise, atol=1e-6)


def test_timestep_changes_clean_features():
    teacher = load_teacher("tiny-16")
    x = torch.rand(1, 3, 16, 16).repeat(2, 1, 1, 1)
    f = teacher(x, torch.tensor([0, 900]))[DEFAULT_TEACHER_LAYER]
    assert not torch.allclose(f[0], f[1])


def test_teacher_is_frozen_and_out_of_state_dict():
    teacher = load_teacher("tiny-16")
    teacher.train()
    assert not teacher.unet.training
    assert all(not p.requires_grad for p in teacher.parameters())
    out = teacher(torch.rand(2, 3, 16, 16), torch.tensor([1, 2]))[DEFAULT_TEACHER_LAYER]
    assert not out.requires_grad
    assert teacher.state_dict() == {}
    wrapper = torch.nn.ModuleDict({"teacher": teacher, "head": torch.nn.Linear(2, 2)})
    state = wrapper.state_dict()
    assert set(state) == {"head.weight", "head.bias"}
    wrapper.load_state_dict(state)  # strict load succeeds without the teacher's weights


def test_load_from_save_pretrained_folder(tiny_teacher_dir):
    teacher = load_teacher(str(tiny_teacher_dir))
    again = load_teacher(str(tiny_teacher_dir))
    x, t = torch.rand(2, 3, 16, 16), torch.tensor([0, 100])
    assert torch.equal(teacher(x, t)[DEFAULT_TEACHER_LAYER], again(x, t)[DEFAULT_TEACHER_LAYER])
    assert teacher.num_timesteps == 1000


def test_hub_id_goes_through_from_pretrained(monkeypatch):
    from diffusers import DDPMScheduler, UNet2DModel

    from repfusion.teachers import default_scheduler

    seen = {}

    def fake(source, **kwargs):
        seen["source"] = source
        return unet_from_preset("tiny-16")

    monkeypatch.setattr(UNet2DModel, "from_pretrained", fake)
    monkeypatch.setattr(DDPMScheduler, "from_pretrained", lambda source, **kwargs: default_scheduler())  # no network
    load_teacher("google/ddpm-cifar10-32")
    assert seen["source"] == "google/ddpm-cifar10-32"


def test_unknown_layer_names_closest():
    teacher = load_teacher("tiny-16")
    with pytest.raises(RepFusionError, match="mid_block.resnets.1.conv2"):
        teacher(torch.zeros(1, 3, 16, 16), torch.zeros(1, dtype=torch.long), ("mid_block.resnet.1.conv2",))


@pytest.mark.parametrize("source", ["no-such-preset", "./missing/folder"])
def test_unknown_teacher_is_one_sentence(source):
    with pytest.raises(RepFusionError) as err:
        load_teacher(source)
    assert "\n" not in str(err.value)


def test_input_checks():
    teacher = load_teacher("tiny-16")
    with pytest.raises(RepFusionError, match="3-channel"):
        teacher.check_input((1, 1, 16, 16))
    with pytest.raises(RepFusionError, match="multiples of 2"):
        teacher.check_input((1, 3, 15, 15))
    with pytest.raises(RepFusionError, match="trained on 16x16"):
        teacher.check_input((1, 3, 32, 32), require_native_size=True)


def test_the_teacher_takes_images_in_0_1_and_maps_them_itself_the_one_way():
    """teacher(x01) is the denoiser read at 2 * x01 - 1 (what every caller used to pass it); the probe and the
    DDPM training's noise loss see the same pixels as before: `model_pixels` is the one [0, 1] -> [-1, 1] map."""
    import re
    from pathlib import Path

    from torch.utils.data import TensorDataset

    import repfusion
    from repfusion.analysis.probe import pooled_features
    from repfusion.features import pooled
    from repfusion.teachers.ddpm_training import DDPMTraining, ddpm_augment
    from repfusion.training import OptimConfig

    teacher = load_teacher("tiny-16")
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    x01, t = images.float() / 255, torch.tensor([0, 10, 500, 999])
    assert torch.equal(model_pixels(x01), x01 * 2 - 1) and torch.equal(model_pixels(x01), images.float() / 127.5 - 1)

    def unet_read(pixels: torch.Tensor) -> torch.Tensor:  # the denoiser itself on [-1, 1] pixels
        with FeatureTap(teacher.unet, [DEFAULT_TEACHER_LAYER]) as tap, torch.no_grad():
            return tap.run(lambda: teacher.unet(pixels, t)).pop()[DEFAULT_TEACHER_LAYER]

    assert torch.equal(teacher(x01, t)[DEFAULT_TEACHER_LAYER], unet_read(x01 * 2 - 1))
    dataset = TensorDataset(images, torch.arange(4))
    probe, _ = pooled_features(teacher, dataset, 10, "clean", [DEFAULT_TEACHER_LAYER], batch_size=4, seed=0)
    t = torch.full((4,), 10)
    assert (probe[DEFAULT_TEACHER_LAYER] == pooled(unet_read(images.float() / 127.5 - 1)).numpy()).all()

    ddpm = DDPMTraining(teacher.unet, teacher.scheduler, OptimConfig(), ddpm_augment(16))
    torch.manual_seed(0)
    loss = ddpm.diffusion_loss(x01)
    torch.manual_seed(0)
    x0 = x01 * 2 - 1
    noise, steps = torch.randn_like(x0), torch.randint(0, 1000, (4,))
    expected = torch.nn.functional.mse_loss(teacher.unet(teacher.scheduler.add_noise(x0, noise, steps), steps).sample,
                                            noise)
    assert torch.equal(loss, expected)

    spellings = re.compile(r"(image\w*|pixels|x0?)\s*\*\s*2\s*-\s*1|127\.5|\.mul_?\(2\)\.sub_?\(1\)|2\s*\*\s*image")
    src = Path(repfusion.__file__).parent
    mapped = sorted(str(p.relative_to(src)) for p in src.rglob("*.py") if spellings.search(p.read_text()))
    assert mapped == ["teachers/diffusion_teacher.py"], mapped
