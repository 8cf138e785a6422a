"""guided-diffusion (ADM) checkpoints: key mapping, equations of the converted blocks, strict and safe loading.

The ADM side is written here from the public architecture (guided-diffusion's unet.py), independently of
repfusion.teachers.adm: parameter names and shapes, and the block equations as plain tensor functions.
"""

import math
import os

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel

from repfusion.errors import RepFusionError
from repfusion.teachers import ADM_PRESETS, ADMFlags, detect_kind, load_teacher
from repfusion.teachers.adm import adm_scheduler, convert_state_dict, unet_config


# ---- ADM's parameters, from the public architecture -------------------------------------------------------

def adm_shapes(flags: ADMFlags) -> dict[str, tuple[int, ...]]:
    mc, emb = flags.num_channels, flags.num_channels * 4
    mult = [float(m) for m in flags.channel_mult.split(",")] if flags.channel_mult else \
        {64: [1, 2, 3, 4], 256: [1, 1, 2, 2, 4, 4]}[flags.image_size]
    attn_ds = {flags.image_size // int(r) for r in flags.attention_resolutions.split(",")}
    shapes: dict[str, tuple[int, ...]] = {}

    def lin(p, i, o):
        shapes[f"{p}.weight"], shapes[f"{p}.bias"] = (o, i), (o,)

    def conv(p, i, o, k, dims=2):
        shapes[f"{p}.weight"], shapes[f"{p}.bias"] = (o, i, *([k] * dims)), (o,)

    def norm(p, c):
        shapes[f"{p}.weight"], shapes[f"{p}.bias"] = (c,), (c,)

    def res(p, i, o):
        norm(f"{p}.in_layers.0", i), conv(f"{p}.in_layers.2", i, o, 3)
        lin(f"{p}.emb_layers.1", emb, 2 * o if flags.use_scale_shift_norm else o)
        norm(f"{p}.out_layers.0", o), conv(f"{p}.out_layers.3", o, o, 3)
        if i != o:
            conv(f"{p}.skip_connection", i, o, 1)

    def attention(p, c):
        norm(f"{p}.norm", c), conv(f"{p}.qkv", c, 3 * c, 1, dims=1), conv(f"{p}.proj_out", c, c, 1, dims=1)

    lin("time_embed.0", mc, emb), lin("time_embed.2", emb, emb)
    if flags.class_cond:
        shapes["label_emb.weight"] = (flags.num_classes, emb)
    ch = int(mult[0] * mc)
    conv("input_blocks.0.0", 3, ch, 3)
    chans, ds, k = [ch], 1, 1
    for level, m in enumerate(mult):
        for _ in range(flags.num_res_blocks):
            res(f"input_blocks.{k}.0", ch, int(m * mc))
            ch = int(m * mc)
            if ds in attn_ds:
                attention(f"input_blocks.{k}.1", ch)
            chans.append(ch)
            k += 1
        if level != len(mult) - 1:
            if flags.resblock_updown:
                res(f"input_blocks.{k}.0", ch, ch)
            else:
                conv(f"input_blocks.{k}.0.op", ch, ch, 3)
            chans.append(ch)
            ds *= 2
            k += 1
    res("middle_block.0", ch, ch), attention("middle_block.1", ch), res("middle_block.2", ch, ch)
    k = 0
    for level, m in list(enumerate(mult))[::-1]:
        for i in range(flags.num_res_blocks + 1):
            res(f"output_blocks.{k}.0", ch + chans.pop(), int(mc * m))
            ch, n = int(mc * m), 1
            if ds in attn_ds:
                attention(f"output_blocks.{k}.1", ch)
                n = 2
            if level and i == flags.num_res_blocks:
                if flags.resblock_updown:
                    res(f"output_blocks.{k}.{n}", ch, ch)
                else:
                    conv(f"output_blocks.{k}.{n}.conv", ch, ch, 3)
                ds //= 2
            k += 1
    norm("out.0", ch), conv("out.2", int(mult[0] * mc), 6 if flags.learn_sigma else 3, 3)
    return shapes


def random_state(flags: ADMFlags, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * (0.3 if len(s) > 1 else 1.0) + (1.0 if k.endswith("norm.weight") else 0)
            for k, s in adm_shapes(flags).items()}


# ---- ADM's equations, as plain functions of the state dict ----------------------------------------------

def gn(x, s, p):
    return F.group_norm(x.float(), 32, s[f"{p}.weight"], s[f"{p}.bias"], eps=1e-5)


def adm_timestep_embedding(t, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def adm_emb(s, t, flags, y=None):
    e = adm_timestep_embedding(t, flags.num_channels)
    e = F.linear(F.silu(F.linear(e, s["time_embed.0.weight"], s["time_embed.0.bias"])), s["time_embed.2.weight"],
                 s["time_embed.2.bias"])
    return e if y is None else e + s["label_emb.weight"][y]


def adm_res(s, p, x, emb, up=False, down=False):
    h = F.silu(gn(x, s, f"{p}.in_layers.0"))
    if up:
        h, x = F.interpolate(h, scale_factor=2, mode="nearest"), F.interpolate(x, scale_factor=2, mode="nearest")
    if down:
        h, x = F.avg_pool2d(h, 2, 2), F.avg_pool2d(x, 2, 2)
    h = F.conv2d(h, s[f"{p}.in_layers.2.weight"], s[f"{p}.in_layers.2.bias"], padding=1)
    e = F.linear(F.silu(emb), s[f"{p}.emb_layers.1.weight"], s[f"{p}.emb_layers.1.bias"])[..., None, None]
    scale, shift = e.chunk(2, dim=1)
    h = gn(h, s, f"{p}.out_layers.0") * (1 + scale) + shift
    h = F.conv2d(F.silu(h), s[f"{p}.out_layers.3.weight"], s[f"{p}.out_layers.3.bias"], padding=1)
    if f"{p}.skip_connection.weight" in s:
        x = F.conv2d(x, s[f"{p}.skip_connection.weight"], s[f"{p}.skip_connection.bias"])
    return x + h


def adm_attention(s, p, x, heads, new_order):
    b, c, hh, ww = x.shape
    flat = x.reshape(b, c, -1)
    qkv = F.conv1d(gn(flat, s, f"{p}.norm"), s[f"{p}.qkv.weight"], s[f"{p}.qkv.bias"])
    ch, length = c // heads, flat.shape[-1]
    if new_order:  # QKVAttention: split q, k, v, then heads
        q, k, v = qkv.chunk(3, dim=1)
        q, k, v = (z.reshape(b * heads, ch, length) for z in (q, k, v))
    else:  # QKVAttentionLegacy: split heads, then q, k, v
        q, k, v = qkv.reshape(b * heads, 3 * ch, length).split(ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    w = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, length)
    out = F.conv1d(a, s[f"{p}.proj_out.weight"], s[f"{p}.proj_out.bias"])
    return (flat + out).reshape(b, c, hh, ww)


SMALL = ADMFlags(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
                 num_head_channels=8, class_cond=True, num_classes=5, learn_sigma=True, resblock_updown=True,
                 use_new_attention_order=True, use_scale_shift_norm=True, noise_schedule="cosine")


def small_teacher(tmp_path, flags=SMALL, seed=0):
    state = random_state(flags, seed)
    path = tmp_path / "adm.pt"
    torch.save(state, path)
    flags_dict = {k: getattr(flags, k) for k in flags.__dataclass_fields__}
    return load_teacher(str(path), adm_flags=flags_dict, class_label="dataset"), state


# ---- tests ---------------------------------------------------------------------------------------------------

def test_real_64x64_model_mapping_is_complete_and_shape_exact():
    flags = ADM_PRESETS["imagenet-64"]
    shapes = adm_shapes(flags)
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}  # no 1.2 GB allocated
    with torch.device("meta"):
        unet = UNet2DModel(**unet_config(flags))
    target = {k: v.shape for k, v in unet.state_dict().items()}
    converted = convert_state_dict(state, flags, target)  # raises on any missing/unexpected/mis-shaped key
    assert set(converted) == set(target)
    assert all(tuple(converted[k].shape) == tuple(target[k]) for k in target)
    adm_params = sum(math.prod(s) for s in shapes.values())
    assert adm_params == sum(p.numel() for p in unet.parameters())
    assert 295e6 < adm_params < 297e6  # the ~296 M parameters of 64x64_diffusion.pt
    assert unet.config.out_channels == 6 and unet.config.num_class_embeds == 1000
    assert "middle_block.2.out_layers.3.weight" in shapes and "mid_block.resnets.1.conv2.weight" in target


def test_legacy_order_256_model_mapping_is_complete():
    flags = ADM_PRESETS["imagenet-256"]
    state = {k: torch.empty(s, device="meta") for k, s in adm_shapes(flags).items()}
    with torch.device("meta"):
        unet = UNet2DModel(**unet_config(flags))
    target = {k: v.shape for k, v in unet.state_dict().items()}
    assert set(convert_state_dict(state, flags, target)) == set(target)


def test_timestep_embedding_matches_adm(tmp_path):
    teacher, s = small_teacher(tmp_path)
    unet = teacher.unet
    t = torch.tensor([0, 1, 17, 999])
    y = torch.tensor([0, 4, 2, 1])
    ours = unet.time_embedding(unet.time_proj(t)) + unet.class_embedding(y)
    assert torch.allclose(ours, adm_emb(s, t, SMALL, y), atol=1e-5)


def test_scale_shift_resblocks_and_resampling_match_adm(tmp_path):
    teacher, s = small_teacher(tmp_path)
    unet = teacher.unet
    emb = torch.randn(2, 128)
    x = torch.randn(2, 32, 16, 16)
    with torch.no_grad():
        # input_blocks.1.0: 32 -> 32; input_blocks.2.0: the down ResBlock; output_blocks.0.0: 128 -> 64 with a skip conv
        assert torch.allclose(unet.down_blocks[0].resnets[0](x, emb), adm_res(s, "input_blocks.1.0", x, emb), atol=1e-4)
        assert torch.allclose(unet.down_blocks[0].downsamplers[0](x, emb),
                              adm_res(s, "input_blocks.2.0", x, emb, down=True), atol=1e-4)
        cat = torch.randn(2, 128, 8, 8)
        assert torch.allclose(unet.up_blocks[0].resnets[0](cat, emb), adm_res(s, "output_blocks.0.0", cat, emb),
                              atol=1e-4)
        h = torch.randn(2, 64, 8, 8)
        up = "output_blocks.1.2"  # level 1 has attention, so its up ResBlock is the third module
        assert torch.allclose(unet.up_blocks[0].upsamplers[0](h, emb), adm_res(s, up, h, emb, up=True), atol=1e-4)


@pytest.mark.parametrize("new_order", [True, False])
def test_attention_matches_adm_qkv_order(tmp_path, new_order):
    flags = ADMFlags(**{**{k: getattr(SMALL, k) for k in SMALL.__dataclass_fields__},
                        "use_new_attention_order": new_order})
    teacher, s = small_teacher(tmp_path, flags)
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        ours = teacher.unet.down_blocks[1].attentions[0](x)
        mid = teacher.unet.mid_block.attentions[0](x)
    assert torch.allclose(ours, adm_attention(s, "input_blocks.3.1", x, heads=8, new_order=new_order), atol=1e-4)
    assert torch.allclose(mid, adm_attention(s, "middle_block.1", x, heads=8, new_order=new_order), atol=1e-4)
    other = adm_attention(s, "input_blocks.3.1", x, heads=8, new_order=not new_order)
    assert not torch.allclose(ours, other, atol=1e-3)  # the two orders differ, so the test can tell them apart


def test_whole_model_matches_adm_forward(tmp_path):
    teacher, s = small_teacher(tmp_path)
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([3, 700]), torch.tensor([1, 3])
    emb = adm_emb(s, t, SMALL, y)
    hs = [F.conv2d(x, s["input_blocks.0.0.weight"], s["input_blocks.0.0.bias"], padding=1)]
    h = adm_res(s, "input_blocks.1.0", hs[-1], emb)
    hs.append(h)
    h = adm_res(s, "input_blocks.2.0", h, emb, down=True)
    hs.append(h)
    h = adm_attention(s, "input_blocks.3.1", adm_res(s, "input_blocks.3.0", h, emb), 8, True)
    hs.append(h)
    h = adm_res(s, "middle_block.2", adm_attention(s, "middle_block.1", adm_res(s, "middle_block.0", h, emb), 8, True),
                emb)
    for k in range(4):
        h = adm_res(s, f"output_blocks.{k}.0", torch.cat([h, hs.pop()], 1), emb)
        if k < 2:
            h = adm_attention(s, f"output_blocks.{k}.1", h, 8, True)
        if k == 1:
            h = adm_res(s, "output_blocks.1.2", h, emb, up=True)
    out = F.conv2d(F.silu(gn(h, s, "out.0")), s["out.2.weight"], s["out.2.bias"], padding=1)
    with torch.no_grad():
        ours = teacher.unet(x, t, class_labels=y).sample
    assert out.shape == ours.shape == (2, 6, 16, 16)  # learned sigma: 6 output channels
    assert torch.allclose(ours, out, atol=1e-4)


def test_adm_teacher_features_truncation_and_labels(tmp_path):
    teacher, _ = small_teacher(tmp_path)
    assert teacher.kind == "adm" and detect_kind(str(tmp_path / "adm.pt")) == "adm"
    x, t, y = torch.rand(3, 3, 16, 16), torch.tensor([0, 10, 999]), torch.tensor([0, 1, 4])
    layers = ("down_blocks.1.attentions.0", "mid_block.resnets.1.conv2")
    cut = teacher(x, t, layers, labels=y)
    full = teacher(x, t, layers, labels=y, truncate=False)
    for name in layers:
        assert torch.equal(cut[name], full[name])
    other = teacher(x, t, layers, labels=torch.tensor([2, 2, 2]))
    assert not torch.allclose(other[layers[1]], cut[layers[1]])  # the class reaches the features
    with pytest.raises(RepFusionError, match="labels"):
        teacher(x, t, layers)
    assert teacher.state_dict() == {}


def test_fixed_class_and_no_null_class(tmp_path):
    state = random_state(SMALL)
    torch.save(state, tmp_path / "m.pt")
    flags = {k: getattr(SMALL, k) for k in SMALL.__dataclass_fields__}
    fixed = load_teacher(str(tmp_path / "m.pt"), adm_flags=flags, class_label=3)
    x, t = torch.rand(2, 3, 16, 16), torch.tensor([5, 5])
    by_label = load_teacher(str(tmp_path / "m.pt"), adm_flags=flags, class_label="dataset")
    layer = fixed.default_layer
    assert torch.equal(fixed(x, t)[layer], by_label(x, t, labels=torch.tensor([3, 3]))[layer])
    with pytest.raises(RepFusionError, match="no null"):
        load_teacher(str(tmp_path / "m.pt"), adm_flags=flags, class_label="null")
    with pytest.raises(RepFusionError, match="outside"):
        load_teacher(str(tmp_path / "m.pt"), adm_flags=flags, class_label=7)


def test_cosine_schedule_is_adms():
    sched = adm_scheduler(ADM_PRESETS["imagenet-64"])

    def abar(i):
        return math.cos((i / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = torch.tensor([min(1 - abar(i + 1) / abar(i), 0.999) for i in range(1000)], dtype=torch.float64)
    assert torch.allclose(sched.alphas_cumprod.double(), torch.cumprod(1 - betas, 0), atol=1e-5)
    assert sched.config.beta_schedule == "squaredcos_cap_v2"


def test_strict_loading_names_the_first_bad_key(tmp_path):
    flags = {k: getattr(SMALL, k) for k in SMALL.__dataclass_fields__}
    state = random_state(SMALL)
    del state["middle_block.1.qkv.bias"]
    torch.save(state, tmp_path / "missing.pt")
    with pytest.raises(RepFusionError, match="missing 'mid_block.attentions.0.to_q.bias'") as err:
        load_teacher(str(tmp_path / "missing.pt"), adm_flags=flags)
    assert "\n" not in str(err.value)
    state = random_state(SMALL) | {"extra.weight": torch.zeros(1)}
    torch.save(state, tmp_path / "extra.pt")
    with pytest.raises(RepFusionError, match="unexpected 'extra.weight'"):
        load_teacher(str(tmp_path / "extra.pt"), adm_flags=flags)
    torch.save(random_state(SMALL), tmp_path / "ok.pt")
    with pytest.raises(RepFusionError, match="does not match its model flags"):
        load_teacher(str(tmp_path / "ok.pt"), adm_flags=flags | {"num_res_blocks": 2})


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickled_code_checkpoint_is_refused(tmp_path):
    marker = str(tmp_path / "pwned")
    torch.save({"time_embed.0.weight": torch.zeros(1), "payload": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(RepFusionError, match="pickled code") as err:
        load_teacher(str(tmp_path / "evil.pt"))
    assert "\n" not in str(err.value)
    assert not os.path.exists(marker)


def test_unknown_adm_preset_and_flag_name_closest():
    with pytest.raises(RepFusionError, match="imagenet-64"):
        load_teacher("/nowhere/64x64_diffusion.pt", adm_flags="imagenet64")
    from repfusion.teachers.adm import adm_flags

    with pytest.raises(RepFusionError, match="num_res_blocks"):
        adm_flags({"num_res_block": 3})


def write_tiny_imagenet(root, wnids=("n01443537", "n01629819"), per_class=4):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    lines = []
    for w in wnids:
        (root / "train" / w / "images").mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / "train" / w / "images" / f"{w}_{i}.JPEG")
            name = f"val_{w}_{i}.JPEG"
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "val" / "images" / name)
            lines.append(f"{name}\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


def test_tiny_imagenet_row_config_runs_with_an_adm_checkpoint(tmp_path):
    """The paper-row config, with a channel-scaled ADM-format checkpoint standing in for 64x64_diffusion.pt."""
    import json

    from repfusion.cli import main

    flags = {"preset": "imagenet-64", "num_channels": 32, "channel_mult": "1,2", "num_res_blocks": 1,
             "attention_resolutions": "32", "num_head_channels": 8}
    from repfusion.teachers.adm import adm_flags

    torch.save(random_state(adm_flags(flags)), tmp_path / "64x64_diffusion.pt")
    data = write_tiny_imagenet(tmp_path / "tiny-imagenet-200")
    code = main(["distill", "--config", "configs/tinyimagenet-resnet18-hint-policy.yaml", "--run-dir",
                 str(tmp_path / "run"), "--teacher.source", str(tmp_path / "64x64_diffusion.pt"),
                 "--teacher.adm_flags", json.dumps(flags), "--data.root", str(data), "--data.batch_size", "4",
                 "--student.width", "0.125", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
                 "--trainer.limit_val_batches", "1", "--trainer.progress", "false"])
    assert code == 0
    assert (tmp_path / "run" / "student" / "config.json").is_file()


# ---- issue 19, items 15-17: flag values as guided-diffusion reads them, its full flag set, layer names ----------

MODEL_FLAGS_64 = ("--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 "
                  "--image_size 64 --learn_sigma True --noise_schedule cosine --num_channels 192 --num_head_channels 64 "
                  "--num_res_blocks 3 --resblock_updown True --use_new_attention_order True --use_fp16 True "
                  "--use_scale_shift_norm True")  # guided-diffusion's README, 64x64 model


def test_string_flag_values_are_read_as_guided_diffusion_reads_them(tmp_path):
    from repfusion.teachers.adm import adm_flags

    legacy = ADMFlags(**{**{k: getattr(SMALL, k) for k in SMALL.__dataclass_fields__},
                         "use_new_attention_order": False})
    state = random_state(legacy)
    torch.save(state, tmp_path / "legacy.pt")
    as_strings = {k: str(getattr(legacy, k)) for k in legacy.__dataclass_fields__}  # "False", "32", "0.0", ...
    assert as_strings["use_new_attention_order"] == "False"
    assert adm_flags(as_strings) == legacy  # "False" was truthy: the legacy checkpoint loaded in the new order
    x, t, y = torch.rand(2, 3, 16, 16), torch.tensor([3, 500]), torch.tensor([1, 2])
    layer = "mid_block.resnets.1"
    by_strings = load_teacher(str(tmp_path / "legacy.pt"), adm_flags=as_strings, class_label="dataset")
    by_values = load_teacher(str(tmp_path / "legacy.pt"), adm_flags=dict(
        (k, getattr(legacy, k)) for k in legacy.__dataclass_fields__), class_label="dataset")
    assert torch.equal(by_strings(x, t, [layer], labels=y)[layer], by_values(x, t, [layer], labels=y)[layer])
    assert adm_flags({"class_cond": "false", "dropout": "0.1", "num_channels": "64"}) == ADMFlags(
        class_cond=False, dropout=0.1, num_channels=64)  # "64" gave an expected width of 6464
    assert adm_flags({"class_cond": 1, "attention_resolutions": 16}).class_cond is True


@pytest.mark.parametrize("flags,message", [
    ({"class_cond": "maybe"}, "class_cond must be True or False"),
    ({"num_channels": "6.4"}, "num_channels must be a whole number"),
    ({"num_channels": True}, "num_channels must be a whole number"),
    ({"dropout": "lots"}, "dropout must be a number"),
    ({"dropout": 1.5}, r"dropout must be in \[0, 1\)"),
    ({"num_res_blocks": 0}, "num_res_blocks must be at least 1"),
    ({"channel_mult": "1,a"}, "channel_mult must be a comma-separated list"),
    ({"attention_resolutions": "16,x"}, "attention_resolutions must be a comma-separated list"),
    ({"diffusion_steps": 250, "rescale_timesteps": True}, "rescale_timesteps feeds the network"),
    ("--image_size", "has no value"),
    ("--image_size 64 stray", "has 'stray' where a --flag was expected"),
])
def test_wrong_flag_values_are_one_sentence(flags, message):
    from repfusion.teachers.adm import adm_flags

    with pytest.raises(RepFusionError, match=message) as err:
        adm_flags(flags)
    assert "\n" not in str(err.value)


def test_model_and_diffusion_defaults_and_the_readme_model_flags_are_accepted(capsys):
    from repfusion.teachers.adm import adm_flags

    # guided-diffusion's script_util.model_and_diffusion_defaults(), all of it (what create_model_and_diffusion takes)
    defaults = dict(image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1,
                    num_head_channels=-1, attention_resolutions="16,8", channel_mult="", dropout=0.0,
                    class_cond=False, use_checkpoint=False, use_scale_shift_norm=True, resblock_updown=False,
                    use_fp16=False, use_new_attention_order=False, learn_sigma=False, diffusion_steps=1000,
                    noise_schedule="linear", timestep_respacing="", use_kl=False, predict_xstart=False,
                    rescale_timesteps=False, rescale_learned_sigmas=False)
    assert adm_flags(defaults) == ADMFlags()  # was: Unknown ADM flag 'predict_xstart'
    err = capsys.readouterr().err
    assert err.startswith("note: ADM flags predict_xstart, rescale_learned_sigmas, rescale_timesteps, "
                          "timestep_respacing, use_checkpoint, use_kl only change how") and err.count("\n") == 1
    assert adm_flags(MODEL_FLAGS_64) == ADM_PRESETS["imagenet-64"]
    assert adm_flags(f'MODEL_FLAGS="{MODEL_FLAGS_64}"') == ADM_PRESETS["imagenet-64"]  # the README's whole line
    assert adm_flags("--image_size=64 --num_channels 192 --timestep_respacing 250").num_channels == 192


def test_layers_names_the_mid_block_output(tmp_path, capsys):
    from repfusion.cli import main
    from repfusion.layers import mid_block_note

    state = random_state(SMALL)
    torch.save(state, tmp_path / "adm.pt")
    flags = " ".join(f"--{k} {getattr(SMALL, k)}" for k in SMALL.__dataclass_fields__)  # MODEL_FLAGS form
    assert main(["layers", "--teacher", str(tmp_path / "adm.pt"), "--adm-flags", flags]) == 0
    out = capsys.readouterr().out
    assert "mid block output: mid_block.resnets.1 (the same tensor as mid_block), ADM's middle_block output; " \
           "mid_block.resnets.1.conv2 is ADM's middle_block.2.out_layers.3" in out
    assert mid_block_note(["conv_in", "mid_block.resnets.0", "mid_block.resnets.1"], "unet").startswith(
        "\nmid block output: mid_block.resnets.1")
    teacher = load_teacher(str(tmp_path / "adm.pt"), adm_flags=flags, class_label="dataset")
    with pytest.raises(RepFusionError) as err:  # the ADM teacher has no null class: do not suggest one
        teacher(torch.rand(1, 3, 16, 16), torch.tensor([1]), [teacher.default_layer])
    assert "null'" not in str(err.value) and "no null class" in str(err.value)


def test_pretrain_choice_candidates_are_the_converted_adm_blocks(tmp_path):
    from repfusion.pipeline.choice import candidate_layers

    teacher, _ = small_teacher(tmp_path)
    found = candidate_layers(teacher)
    names = {name for name, _, _ in teacher.layer_rows()}
    assert set(found) <= names and "mid_block" in found  # converted to diffusers' block names on load
    assert any(n.startswith("down_blocks.") for n in found) and any(n.startswith("up_blocks.") for n in found)
