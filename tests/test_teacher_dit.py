"""Diffusion-transformer teachers: a tiny DiTTransformer2DModel + VAE pipeline folder written by DiTPipeline."""

import json

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiTPipeline, DiTTransformer2DModel

from repfusion.cli import main
from repfusion.errors import RepFusionError
from repfusion.teachers import detect_kind, load_teacher, model_pixels
from repfusion.teachers.dit import DiTTeacher


@pytest.fixture(scope="module")
def dit_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("dit")
    vae = AutoencoderKL(block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=8, sample_size=16)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                        num_layers=3, sample_size=4, patch_size=2, num_embeds_ada_norm=10)
    pipeline = DiTPipeline(transformer=transformer, vae=vae, scheduler=DDPMScheduler(num_train_timesteps=1000))
    pipeline.save_pretrained(folder)
    return folder


def test_kind_classes_and_frozen(dit_dir):
    assert detect_kind(str(dit_dir)) == "dit"
    assert "transformer" in json.loads((dit_dir / "model_index.json").read_text())
    teacher = load_teacher(str(dit_dir))
    assert isinstance(teacher, DiTTeacher) and teacher.kind == "dit"
    assert (teacher.num_classes, teacher.null_class, teacher.class_label) == (10, 10, 10)  # auto = the null class
    assert (teacher.sample_size, teacher.default_layer) == (16, "transformer_blocks.1")
    assert teacher.state_dict() == {} and all(not p.requires_grad for p in teacher.parameters())


def test_tokens_become_maps_and_truncation_is_exact(dit_dir):
    teacher = load_teacher(str(dit_dir))
    x01, t = torch.rand(2, 3, 16, 16), torch.tensor([0, 400])
    x = model_pixels(x01)  # what the VAE encodes; the teacher takes [0, 1] and maps them itself
    layers = ("transformer_blocks.0", "transformer_blocks.1")
    cut, full = teacher(x01, t, layers), teacher(x01, t, layers, truncate=False)
    for name in layers:
        assert cut[name].shape == (2, 16, 2, 2)
        assert torch.equal(cut[name], full[name])
    tokens = {}
    hook = teacher.unet.transformer_blocks[1].register_forward_hook(lambda m, i, o: tokens.update(f=o))
    with torch.no_grad():
        teacher.unet(teacher.encode(x), timestep=t, class_labels=torch.tensor([10, 10]))
    hook.remove()
    # token n = patch (row n // 2, column n % 2): map[:, :, r, c] is that token's vector
    assert torch.equal(cut["transformer_blocks.1"][:, :, 1, 0], tokens["f"][:, 2])
    assert torch.allclose(cut["transformer_blocks.1"].flatten(2).transpose(1, 2), tokens["f"], atol=0)
    calls = []
    teacher.unet.transformer_blocks[2].register_forward_pre_hook(lambda *a: calls.append("late"))
    teacher(x01, t, layers)
    assert calls == []  # nothing after the deepest requested block runs


def test_class_label_modes(dit_dir):
    x, t = torch.rand(2, 3, 16, 16), torch.tensor([50, 50])
    layer = ("transformer_blocks.0",)
    null = load_teacher(str(dit_dir))(x, t, layer)[layer[0]]
    fixed = load_teacher(str(dit_dir), class_label=3)(x, t, layer)[layer[0]]
    by_label = load_teacher(str(dit_dir), class_label="dataset")
    assert torch.equal(fixed, by_label(x, t, layer, labels=torch.tensor([3, 3]))[layer[0]])
    assert not torch.allclose(null, fixed)
    mapped = load_teacher(str(dit_dir), class_label="dataset", class_map=[3, 7])
    assert torch.equal(fixed, mapped(x, t, layer, labels=torch.tensor([0, 0]))[layer[0]])
    with pytest.raises(RepFusionError, match="auto, dataset, null or a class index"):
        load_teacher(str(dit_dir), class_label="cat")


def test_layers_and_probe_cli(dit_dir, tmp_path, capsys):
    assert main(["layers", "--teacher", str(dit_dir)]) == 0
    out = capsys.readouterr().out
    assert "(dit)" in out.splitlines()[0]
    assert next(l for l in out.splitlines() if l.startswith("transformer_blocks.2 ")).split()[-1] == "1x16x2x2"
    assert main(["probe", "--teacher", str(dit_dir), "--timesteps", "500", "--modes", "noised",
                 "--out", str(tmp_path / "probe")]) == 0
    rows = json.loads((tmp_path / "probe" / "probe.json").read_text())["rows"]
    assert [r["t"] for r in rows] == [500] and rows[0]["layer"] == "transformer_blocks.1"
    assert rows[0]["feature_dim"] == 16


def test_short_distillation_run_with_dataset_labels(dit_dir, tmp_path):
    code = main(["distill", "--teacher.source", str(dit_dir), "--teacher.layer", "transformer_blocks.1",
                 "--teacher.class_label", "dataset", "--data.source", "digits", "--data.image_size", "16",
                 "--data.batch_size", "16", "--student.width", "0.125", "--trainer.max_epochs", "1",
                 "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", "--trainer.progress",
                 "false", "--run-dir", str(tmp_path / "run")])
    assert code == 0 and (tmp_path / "run" / "student" / "config.json").is_file()


def test_hub_id_of_a_dit_pipeline_is_found_by_its_model_index(dit_dir, monkeypatch):
    """An uncached hub id: the UNet2DModel loader finds no config.json, model_index.json names the transformer."""
    import huggingface_hub
    from diffusers import UNet2DModel

    import repfusion.teachers.latent as latent

    def no_root_config(*args, **kwargs):
        raise OSError("facebook/dit-tiny does not appear to have a file named config.json.")

    monkeypatch.setattr(UNet2DModel, "from_pretrained", no_root_config)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name, **k: str(dit_dir / name))
    monkeypatch.setattr(latent, "_where", lambda source: str(dit_dir))  # the download itself, stood in for
    assert detect_kind("facebook/dit-tiny") == "unet"  # nothing cached: no network wait before the UNet loader
    teacher = load_teacher("facebook/dit-tiny")
    assert isinstance(teacher, DiTTeacher) and teacher.source == "facebook/dit-tiny"


def test_pretrain_choice_candidates_are_middle_transformer_blocks(dit_dir):
    from repfusion.pipeline.choice import candidate_layers

    teacher = load_teacher(str(dit_dir))
    found = candidate_layers(teacher)
    assert found and all(n.startswith("transformer_blocks.") for n in found)
    assert set(found) <= {name for name, _, _ in teacher.layer_rows()}
