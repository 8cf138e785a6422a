"""Latent diffusion teachers: a tiny UNet2DConditionModel + AutoencoderKL pipeline folder as diffusers saves it."""

import json

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from repfusion.cli import main
from repfusion.errors import RepFusionError
from repfusion.teachers import detect_kind, load_teacher, model_pixels
from repfusion.teachers.latent import LatentTeacher

LAYERS = ("down_blocks.0.attentions.0", "mid_block.resnets.1.conv2")


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=8,
                         sample_size=16, scaling_factor=0.5)


@pytest.fixture(scope="module")
def ldm_dir(tmp_path_factory):
    """unet/ + vae/ + scheduler/ + model_index.json, without a text encoder (as a stripped SD folder)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ldm")
    unet = UNet2DConditionModel(sample_size=4, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8)
    unet.save_pretrained(folder / "unet")
    tiny_vae().save_pretrained(folder / "vae")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                  beta_end=0.012).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": [None, None], "tokenizer": [None, None]}))
    return folder


def test_kind_load_and_frozen(ldm_dir, capsys):
    assert detect_kind(str(ldm_dir)) == "latent"
    teacher = load_teacher(str(ldm_dir))
    assert "no text encoder" in capsys.readouterr().err  # zeros, said in one line
    assert isinstance(teacher, LatentTeacher) and teacher.kind == "latent"
    assert (teacher.sample_size, teacher.in_channels, teacher.num_timesteps) == (16, 3, 1000)
    assert torch.equal(teacher.uncond, torch.zeros(1, 77, 16))
    assert teacher.scheduler.config.beta_schedule == "scaled_linear"  # the pipeline's own schedule
    teacher.train()
    assert not teacher.unet.training and not teacher.vae.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert teacher.state_dict() == {}


def test_encoding_scaling_noise_and_truncation(ldm_dir):
    teacher = load_teacher(str(ldm_dir))
    x01, t = torch.rand(2, 3, 16, 16), torch.tensor([0, 600])
    x = model_pixels(x01)  # the VAE encodes [-1, 1] pixels; the teacher takes [0, 1] and maps them itself
    latents = teacher.encode(x)
    with torch.no_grad():
        expected = teacher.vae.encode(x).latent_dist.mode() * 0.5
    assert latents.shape == (2, 4, 4, 4) and torch.allclose(latents, expected)
    cut, full = teacher(x01, t, LAYERS), teacher(x01, t, LAYERS, truncate=False)
    for name in LAYERS:
        assert torch.equal(cut[name], full[name])
    assert cut["mid_block.resnets.1.conv2"].shape == (2, 32, 2, 2)
    assert teacher.feature_shape("mid_block.resnets.1.conv2") == (32, 2, 2)
    noise = torch.randn(2, 4, 4, 4)
    noised = teacher(x01, t, LAYERS[1:], "noised", noise=noise)[LAYERS[1]]
    context = teacher.uncond.expand(2, -1, -1)
    by_hand = {}
    hook = teacher.unet.mid_block.resnets[1].conv2.register_forward_hook(lambda m, i, o: by_hand.update(f=o))
    with torch.no_grad():
        teacher.unet(teacher.scheduler.add_noise(expected, noise, t), t, encoder_hidden_states=context)
    hook.remove()
    assert torch.allclose(noised, by_hand["f"], atol=1e-6)
    assert not torch.allclose(noised, cut[LAYERS[1]])


def test_unconditional_embedding_from_a_file(ldm_dir, tmp_path):
    from safetensors.torch import save_file

    embedding = torch.randn(7, 16)
    save_file({"embedding": embedding}, tmp_path / "uncond.safetensors")
    teacher = load_teacher(str(ldm_dir), uncond_embedding=str(tmp_path / "uncond.safetensors"))
    assert torch.equal(teacher.uncond, embedding[None])
    x, t = torch.rand(1, 3, 16, 16), torch.tensor([100])
    zeros = load_teacher(str(ldm_dir))
    assert not torch.allclose(teacher(x, t, LAYERS[:1])[LAYERS[0]], zeros(x, t, LAYERS[:1])[LAYERS[0]])
    torch.save(torch.randn(7, 8), tmp_path / "wrong.pt")
    with pytest.raises(RepFusionError, match="cross_attention_dim"):
        load_teacher(str(ldm_dir), uncond_embedding=str(tmp_path / "wrong.pt"))


def test_input_checks_and_folder_without_vae(ldm_dir, tmp_path):
    teacher = load_teacher(str(ldm_dir))
    with pytest.raises(RepFusionError, match="multiples of 8"):
        teacher.check_input((1, 3, 12, 12))
    with pytest.raises(RepFusionError, match="trained on 16x16"):
        teacher.check_input((1, 3, 32, 32), require_native_size=True)
    import shutil

    shutil.copytree(ldm_dir / "unet", tmp_path / "only" / "unet")
    with pytest.raises(RepFusionError, match="without its VAE") as err:
        load_teacher(str(tmp_path / "only"))
    assert "\n" not in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RepFusionError, match="Cannot tell what kind of teacher"):
        load_teacher(str(tmp_path / "empty"))


def test_layers_cli_lists_the_latent_unet(ldm_dir, capsys):
    assert main(["layers", "--teacher", str(ldm_dir)]) == 0
    out = capsys.readouterr().out
    assert "(latent) at 16x16" in out.splitlines()[0]
    line = next(l for l in out.splitlines() if l.startswith("mid_block.resnets.1.conv2 "))
    assert line.split()[-1] == "1x32x2x2"


def test_short_distillation_run(ldm_dir, tmp_path):
    code = main(["distill", "--teacher.source", str(ldm_dir), "--teacher.noise_mode", "noised", "--data.source",
                 "digits", "--data.image_size", "16", "--data.batch_size", "16", "--student.width", "0.125",
                 "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches",
                 "1", "--trainer.progress", "false", "--run-dir", str(tmp_path / "run")])
    assert code == 0 and (tmp_path / "run" / "student" / "config.json").is_file()
    ckpts = list((tmp_path / "run").rglob("*.ckpt"))
    assert ckpts and not any(k.startswith(("teacher.unet.", "teacher.vae."))
                             for k in torch.load(ckpts[0], weights_only=True)["state_dict"])


def test_pretrain_choice_candidates_are_the_latent_unet_blocks(ldm_dir):
    from repfusion.pipeline.choice import candidate_layers

    teacher = load_teacher(str(ldm_dir))
    found = candidate_layers(teacher)
    assert "mid_block" in found and set(found) <= {name for name, _, _ in teacher.layer_rows()}
