"""guided-diffusion (ADM) checkpoints as diffusers `UNet2DModel`s.

OpenAI's guided-diffusion releases plain state dicts of its `UNetModel`; the architecture is fixed by the
model flags it was trained with (`--num_channels 192 --num_res_blocks 3 ...`). `unet_config` turns the
flags into the equivalent `UNet2DModel` config and `convert_state_dict` renames (and, for attention, splits)
every tensor; the mapping follows the layer order of guided-diffusion's `unet.py` (`input_blocks`,
`middle_block`, `output_blocks`), read from the public code, not copied. Loading is strict: every key of
the checkpoint must land on a parameter and every parameter must be filled, with the same shape.

Equivalences (checked numerically in tests/test_teacher_adm.py):
- `timestep_embedding` (cos half first, max period 1e4) = `Timesteps(flip_sin_to_cos=True, freq_shift=0)`.
- `ResBlock` with `use_scale_shift_norm` = `ResnetBlock2D(time_embedding_norm="scale_shift")`; the up/down
  `ResBlock`s (nearest upsampling, 2x2 average pooling on both branches) = `ResnetBlock2D(up=/down=True)`.
- `AttentionBlock`: the 1x1 `qkv` convolution becomes `to_q`, `to_k`, `to_v`. With
  `use_new_attention_order` (the 64x64 model) the rows are [q | k | v], each split into heads; otherwise
  (legacy order: the 128/256/512 models) they are split into heads first, each head holding [q | k | v].
- The cosine schedule is diffusers' `squaredcos_cap_v2`; the linear one is scaled by 1000 / steps as ADM does.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DModel

from ..errors import RepFusionError, torch_load_reason, unknown_name_error

NUM_IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class ADMFlags:
    """guided-diffusion's model flags (`model_and_diffusion_defaults`), same names and defaults."""

    image_size: int = 64
    num_channels: int = 128
    num_res_blocks: int = 2
    channel_mult: str = ""  # "" = the default for image_size, as in create_model
    num_heads: int = 4
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    attention_resolutions: str = "16,8"
    dropout: float = 0.0
    class_cond: bool = False
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    learn_sigma: bool = False
    diffusion_steps: int = 1000
    noise_schedule: str = "linear"
    use_fp16: bool = False  # the released weights are stored in fp32 either way
    num_classes: int = NUM_IMAGENET_CLASSES

    def mult(self) -> tuple[float, ...]:
        if self.channel_mult:
            return tuple(float(m) for m in str(self.channel_mult).split(","))
        defaults = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
        if self.image_size not in defaults:
            raise RepFusionError(f"ADM has no default channel_mult for image_size {self.image_size}; give "
                                 "channel_mult in the ADM flags (e.g. \"1,2,2\").")
        return defaults[self.image_size]

    def widths(self) -> list[int]:
        return [int(m * self.num_channels) for m in self.mult()]

    def attention_levels(self) -> list[bool]:
        """ADM puts attention where the downsampling rate 2**level is in image_size // resolutions."""
        rates = {self.image_size // int(r) for r in str(self.attention_resolutions).split(",") if r.strip()}
        return [2**level in rates for level in range(len(self.mult()))]


# The released checkpoints' flags, from guided-diffusion's README (MODEL_FLAGS of each model).
_COMMON = dict(attention_resolutions="32,16,8", diffusion_steps=1000, learn_sigma=True, resblock_updown=True,
               use_fp16=True, use_scale_shift_norm=True, num_head_channels=64)
ADM_PRESETS: dict[str, ADMFlags] = {
    # 64x64_diffusion.pt: 295.9 M parameters; the paper's Tiny-ImageNet teacher.
    "imagenet-64": ADMFlags(**_COMMON | dict(image_size=64, num_channels=192, num_res_blocks=3, class_cond=True,
                                              dropout=0.1, noise_schedule="cosine", use_new_attention_order=True)),
    "imagenet-256": ADMFlags(**_COMMON | dict(image_size=256, num_channels=256, num_res_blocks=2, class_cond=True)),
    "imagenet-256-uncond": ADMFlags(**_COMMON | dict(image_size=256, num_channels=256, num_res_blocks=2)),
    "lsun-256": ADMFlags(**_COMMON | dict(image_size=256, num_channels=256, num_res_blocks=2, dropout=0.1)),
}


# Flags of guided-diffusion's model_and_diffusion_defaults() that only change how it trains or samples (the
# loss, the output's parametrisation, respacing, gradient checkpointing), not the network's layers or weights.
DIFFUSION_ONLY_FLAGS: dict[str, Any] = {"timestep_respacing": "", "use_kl": False, "predict_xstart": False,
                                        "rescale_timesteps": False, "rescale_learned_sigmas": False,
                                        "use_checkpoint": False}
_TRUE, _FALSE = ("yes", "true", "t", "y", "1"), ("no", "false", "f", "n", "0")  # guided-diffusion's str2bool


def _parse_flag(name: str, value: Any, default: Any) -> Any:
    """One flag value the way guided-diffusion's argparser reads it (str2bool, int(), float(), str), or one
    sentence: strings as users copy them from its MODEL_FLAGS ("False", "64", "0.1") become their values."""
    kind = type(default)
    what = {bool: "True or False", int: "a whole number", float: "a number"}.get(kind, "a string")
    wrong = RepFusionError(f"ADM flag {name} must be {what} (as guided-diffusion's --{name} reads it), not "
                           f"{value!r}.")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise wrong
    if isinstance(value, bool):
        raise wrong
    if kind is int:
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise wrong from None
        raise wrong
    if kind is float:
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise wrong from None
        raise wrong
    if isinstance(value, (str, int)):  # attention_resolutions: 16 means "16"
        return str(value)
    raise wrong


def parse_model_flags(text: str) -> dict[str, str]:
    """guided-diffusion's MODEL_FLAGS string (`--image_size 64 --num_channels 192 ...`) as a dict of strings."""
    import shlex

    pasted = re.match(r"^\s*(export\s+)?MODEL_FLAGS=", text)  # the README's whole line, pasted as is
    try:
        tokens = shlex.split(text[pasted.end():] if pasted else text)
        if pasted and len(tokens) == 1:  # MODEL_FLAGS="--a 1 --b 2": the quotes held every flag
            tokens = shlex.split(tokens[0])
    except ValueError as e:
        raise RepFusionError(f"The ADM flags string cannot be split into flags ({e}); give it as guided-diffusion's "
                             "README writes MODEL_FLAGS, e.g. \"--image_size 64 --num_channels 192\".") from None
    flags: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) == 2:
            raise RepFusionError(f"The ADM flags string has '{token}' where a --flag was expected; give it as "
                                 "\"--image_size 64 --num_channels 192 ...\" (each flag followed by its value).")
        name, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                raise RepFusionError(f"The ADM flag --{name} has no value; guided-diffusion's flags each take one "
                                     "(e.g. --class_cond True).")
            value, i = tokens[i + 1], i + 1
        flags[name.replace("-", "_")] = value
        i += 1
    return flags


def _check_values(flags: ADMFlags) -> ADMFlags:
    """Ranges and the comma lists, so a bad value is one sentence, not a traceback inside UNet2DModel."""
    for name in ("image_size", "num_channels", "num_res_blocks", "num_heads", "diffusion_steps", "num_classes"):
        if getattr(flags, name) < 1:
            raise RepFusionError(f"ADM flag {name} must be at least 1, not {getattr(flags, name)}.")
    if flags.num_head_channels != -1 and flags.num_head_channels < 1:
        raise RepFusionError(f"ADM flag num_head_channels must be at least 1 (or -1 to use num_heads), not "
                             f"{flags.num_head_channels}.")
    if not 0.0 <= flags.dropout < 1.0:
        raise RepFusionError(f"ADM flag dropout must be in [0, 1), not {flags.dropout}.")
    for name, parse in (("channel_mult", float), ("attention_resolutions", int)):
        text = str(getattr(flags, name))
        try:
            values = [parse(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise RepFusionError(f"ADM flag {name} must be a comma-separated list of numbers (e.g. "
                                 f"\"{'1,2,3,4' if name == 'channel_mult' else '32,16,8'}\"), not '{text}'.") from None
        if any(v <= 0 for v in values):
            raise RepFusionError(f"ADM flag {name} must list positive numbers, not '{text}'.")
    return flags


def adm_flags(flags: str | dict[str, Any] | ADMFlags) -> ADMFlags:
    """A preset name, a dict of flags (guided-diffusion names; `preset` starts from a preset), guided-diffusion's
    MODEL_FLAGS string (`--image_size 64 ...`) or ADMFlags. Values are read as guided-diffusion's argparser reads
    them ("False" is false, "64" is 64); its diffusion-only flags are accepted and ignored with a note."""
    if isinstance(flags, ADMFlags):
        return flags
    if isinstance(flags, str):
        if flags.lstrip().startswith(("-", "MODEL_FLAGS=", "export MODEL_FLAGS=")):
            return adm_flags(parse_model_flags(flags))
        if flags not in ADM_PRESETS:
            raise unknown_name_error("ADM preset", flags, ADM_PRESETS, hint=", or give the model flags as a mapping")
        return ADM_PRESETS[flags]
    if not isinstance(flags, dict):
        raise RepFusionError(f"ADM flags must be a preset name, a mapping of flags or a MODEL_FLAGS string, not "
                             f"{type(flags).__name__}.")
    flags = dict(flags)
    base = asdict(adm_flags(str(flags.pop("preset")))) if "preset" in flags else {}  # a preset, then overrides
    defaults = {f.name: f.default for f in fields(ADMFlags)}
    bad = [k for k in flags if k not in defaults and k not in DIFFUSION_ONLY_FLAGS]
    if bad:
        raise unknown_name_error("ADM flag", bad[0], [*defaults, *DIFFUSION_ONLY_FLAGS])
    values = {k: _parse_flag(k, v, defaults.get(k, DIFFUSION_ONLY_FLAGS.get(k))) for k, v in flags.items()}
    ignored = sorted(k for k in values if k in DIFFUSION_ONLY_FLAGS)
    steps = values.get("diffusion_steps", base.get("diffusion_steps", defaults["diffusion_steps"]))
    if values.get("rescale_timesteps") and steps != 1000:
        raise RepFusionError(f"ADM flag rescale_timesteps feeds the network t x 1000 / {steps}, which this converter "
                             "does not; only models with rescale_timesteps False (or diffusion_steps 1000) load.")
    if ignored:
        import sys

        print(f"note: ADM flags {', '.join(ignored)} only change how guided-diffusion trains or samples, not the "
              "network's layers or weights; repfusion ignores them.", file=sys.stderr)
    return _check_values(ADMFlags(**base | {k: v for k, v in values.items() if k not in DIFFUSION_ONLY_FLAGS}))


def unet_config(flags: ADMFlags) -> dict[str, Any]:
    """The `UNet2DModel` config with the same layers, shapes and equations as ADM's `UNetModel`."""
    widths, attn = flags.widths(), flags.attention_levels()
    if flags.mult()[0] != 1:
        raise RepFusionError(f"ADM models with channel_mult starting at {flags.mult()[0]} (not 1) embed t at a "
                             "width UNet2DModel cannot express; only models whose channel_mult starts at 1 load.")
    if flags.num_heads_upsample not in (-1, flags.num_heads):
        raise RepFusionError("ADM models with num_heads_upsample different from num_heads cannot be converted; "
                             "they are deprecated in guided-diffusion and unsupported here.")
    if flags.num_head_channels != -1:
        head_dim = flags.num_head_channels
    else:  # a fixed head count: UNet2DModel needs one head width at every attention level
        dims = {w // flags.num_heads for w, a in zip(widths, attn) if a} | {widths[-1] // flags.num_heads}
        if len(dims) != 1:
            raise RepFusionError(f"This ADM model uses {flags.num_heads} heads at widths of different sizes, so "
                                 "its head width varies per level, which UNet2DModel cannot express.")
        head_dim = dims.pop()
    plain_down = "ResnetDownsampleBlock2D" if flags.resblock_updown else "DownBlock2D"
    plain_up = "ResnetUpsampleBlock2D" if flags.resblock_updown else "UpBlock2D"
    resample = "resnet" if flags.resblock_updown else "conv"
    return dict(
        sample_size=flags.image_size, in_channels=3, out_channels=6 if flags.learn_sigma else 3,
        layers_per_block=flags.num_res_blocks, block_out_channels=tuple(widths),
        down_block_types=tuple("AttnDownBlock2D" if a else plain_down for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else plain_up for a in reversed(attn)),
        attention_head_dim=head_dim, downsample_type=resample, upsample_type=resample, downsample_padding=1,
        resnet_time_scale_shift="scale_shift" if flags.use_scale_shift_norm else "default",
        num_class_embeds=flags.num_classes if flags.class_cond else None,
        flip_sin_to_cos=True, freq_shift=0, norm_eps=1e-5, norm_num_groups=32, dropout=flags.dropout,
        attn_norm_num_groups=32,  # else diffusers drops the mid-block attention's GroupNorm under scale_shift
        num_train_timesteps=flags.diffusion_steps,
    )


def adm_scheduler(flags: ADMFlags) -> DDPMScheduler:
    """ADM's noise schedule: cosine = squaredcos_cap_v2; linear betas scaled by 1000 / steps."""
    steps = flags.diffusion_steps
    variance = "learned_range" if flags.learn_sigma else "fixed_large"
    if flags.noise_schedule == "cosine":
        return DDPMScheduler(num_train_timesteps=steps, beta_schedule="squaredcos_cap_v2", variance_type=variance)
    if flags.noise_schedule == "linear":
        scale = 1000 / steps
        return DDPMScheduler(num_train_timesteps=steps, beta_schedule="linear", beta_start=scale * 1e-4,
                             beta_end=scale * 0.02, variance_type=variance)
    raise RepFusionError(f"Unknown ADM noise_schedule '{flags.noise_schedule}'; use 'linear' or 'cosine'.")


_RESBLOCK = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
             "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_ATTENTION = {"norm": "group_norm", "proj_out": "to_out.0"}  # qkv is split into to_q, to_k, to_v
_RESAMPLE = {"op": "conv", "conv": "conv"}  # Downsample's strided conv / Upsample's conv


def module_map(flags: ADMFlags) -> dict[str, tuple[str, str]]:
    """ADM module prefix -> (diffusers module prefix, kind), walking ADM's blocks in construction order."""
    attn, levels, blocks = flags.attention_levels(), len(flags.mult()), flags.num_res_blocks
    resample = "resblock" if flags.resblock_updown else "resample"
    out: dict[str, tuple[str, str]] = {
        "time_embed.0": ("time_embedding.linear_1", "plain"), "time_embed.2": ("time_embedding.linear_2", "plain"),
        "input_blocks.0.0": ("conv_in", "plain"), "out.0": ("conv_norm_out", "plain"), "out.2": ("conv_out", "plain"),
        "middle_block.0": ("mid_block.resnets.0", "resblock"),
        "middle_block.1": ("mid_block.attentions.0", "attention"),
        "middle_block.2": ("mid_block.resnets.1", "resblock"),
    }
    if flags.class_cond:
        out["label_emb"] = ("class_embedding", "plain")
    k = 1
    for level in range(levels):
        for j in range(blocks):
            out[f"input_blocks.{k}.0"] = (f"down_blocks.{level}.resnets.{j}", "resblock")
            if attn[level]:
                out[f"input_blocks.{k}.1"] = (f"down_blocks.{level}.attentions.{j}", "attention")
            k += 1
        if level != levels - 1:
            out[f"input_blocks.{k}.0"] = (f"down_blocks.{level}.downsamplers.0", resample)
            k += 1
    k = 0
    for i, level in enumerate(reversed(range(levels))):
        for j in range(blocks + 1):
            out[f"output_blocks.{k}.0"] = (f"up_blocks.{i}.resnets.{j}", "resblock")
            if attn[level]:
                out[f"output_blocks.{k}.1"] = (f"up_blocks.{i}.attentions.{j}", "attention")
            if level and j == blocks:
                out[f"output_blocks.{k}.{2 if attn[level] else 1}"] = (f"up_blocks.{i}.upsamplers.0", resample)
            k += 1
    return out


def _split_module(key: str, modules: dict[str, tuple[str, str]]) -> tuple[str, str] | None:
    parts = key.split(".")
    for n in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in modules:
            return prefix, ".".join(parts[n:])
    return None


def _split_qkv(tensor: torch.Tensor, heads: int, new_order: bool) -> tuple[torch.Tensor, ...]:
    """(3C, C, 1) conv weight or (3C,) bias -> q, k, v as (C, C) / (C,), in the checkpoint's head layout."""
    tensor = tensor.reshape(tensor.shape[0], -1) if tensor.dim() > 1 else tensor
    if new_order:  # rows: [q(all heads) | k | v]
        return tuple(tensor.chunk(3, dim=0))
    per_head = tensor.reshape(heads, 3, tensor.shape[0] // (3 * heads), *tensor.shape[1:])  # rows: per head [q|k|v]
    return tuple(per_head[:, i].reshape(-1, *tensor.shape[1:]) for i in range(3))


def convert_state_dict(state: dict[str, torch.Tensor], flags: ADMFlags,
                       target: dict[str, torch.Size] | None = None) -> dict[str, torch.Tensor]:
    """Rename (and split) an ADM state dict to `UNet2DModel` names; strict when `target` shapes are given."""
    modules = module_map(flags)
    head_dim = unet_config(flags)["attention_head_dim"]
    converted: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, tensor in state.items():
        found = _split_module(key, modules)
        if found is None:
            unexpected.append(key)
            continue
        prefix, rest = found
        new_prefix, kind = modules[prefix]
        sub, _, param = rest.rpartition(".")
        if kind == "attention" and sub == "qkv":
            heads = tensor.shape[0] // 3 // head_dim
            for name, part in zip(("to_q", "to_k", "to_v"), _split_qkv(tensor, heads, flags.use_new_attention_order)):
                converted[f"{new_prefix}.{name}.{param}"] = part
            continue
        table = {"resblock": _RESBLOCK, "attention": _ATTENTION, "resample": _RESAMPLE}.get(kind, {})
        if kind == "plain" and not sub:
            new_sub = ""
        elif sub in table:
            new_sub = table[sub]
        else:
            unexpected.append(key)
            continue
        if kind == "attention" and sub == "proj_out":
            tensor = tensor.reshape(tensor.shape[0], -1) if tensor.dim() > 1 else tensor
        converted[".".join(p for p in (new_prefix, new_sub, param) if p)] = tensor
    if target is not None:
        check_strict(converted, target, unexpected)
    elif unexpected:
        raise RepFusionError(f"The ADM checkpoint has {len(unexpected)} key(s) these flags do not explain, "
                             f"e.g. '{unexpected[0]}'; check the model flags (or the preset) it was trained with.")
    return converted


def check_strict(converted: dict[str, torch.Tensor], target: dict[str, torch.Size], unexpected: list[str]) -> None:
    """No missing, no unexpected key, every shape equal; one sentence naming the first problem."""
    missing = [k for k in target if k not in converted]
    extra = unexpected + [k for k in converted if k not in target]
    wrong = [k for k in target if k in converted and tuple(converted[k].shape) != tuple(target[k])]
    if missing or extra or wrong:
        first = (f"missing '{missing[0]}'" if missing else f"unexpected '{extra[0]}'" if extra else
                 f"'{wrong[0]}' is {tuple(converted[wrong[0]].shape)}, expected {tuple(target[wrong[0]])}")
        raise RepFusionError(f"The ADM checkpoint does not match its model flags ({len(missing)} missing, "
                             f"{len(extra)} unexpected, {len(wrong)} mis-shaped keys; first: {first}); check the "
                             "flags (or the preset) it was trained with.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors only: safetensors, or torch.load(weights_only=True), which refuses pickled code."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RepFusionError(f"ADM checkpoint {path} does not exist; give the path of the .pt file "
                             "(e.g. 64x64_diffusion.pt from guided-diffusion).")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors' own error types for a corrupt or foreign file
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RepFusionError(f"ADM checkpoint {path} is not a valid safetensors file ({first}); give the .pt "
                                 "file guided-diffusion released, or re-save the state dict as safetensors.") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError for pickled code, RuntimeError for a corrupt file
        pickled = "weights_only" in str(e) or "Unpickl" in type(e).__name__
        reason = (f"holds pickled code, not only tensors ({torch_load_reason(e)})" if pickled
                  else f"cannot be read ({type(e).__name__})")
        raise RepFusionError(f"ADM checkpoint {path} {reason}; repfusion loads only plain state dicts, so re-save "
                             "it with torch.save(model.state_dict(), path) or as safetensors.") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RepFusionError(f"ADM checkpoint {path} is not a state dict of tensors; save the UNet's "
                             "state_dict() (what guided-diffusion releases).")
    return state


def unet_from_adm_state(state: dict[str, torch.Tensor], flags: ADMFlags) -> UNet2DModel:
    """Build the UNet on the meta device (no random init of 300 M parameters) and assign the converted weights."""
    config = unet_config(flags)
    with torch.device("meta"):
        unet = UNet2DModel(**config)
    target = {k: v.shape for k, v in unet.state_dict().items()}
    converted = convert_state_dict(state, flags, target)
    unet.load_state_dict({k: v.float().contiguous() for k, v in converted.items()}, strict=True, assign=True)
    return unet


def load_adm(path: str | Path,
             flags: str | dict[str, Any] | ADMFlags = "imagenet-64") -> tuple[UNet2DModel, DDPMScheduler]:
    """An ADM checkpoint and its flags -> (UNet2DModel with its weights, the matching DDPMScheduler)."""
    flags = adm_flags(flags)
    return unet_from_adm_state(read_state_dict(path), flags), adm_scheduler(flags)


def random_adm(flags: str | dict[str, Any] | ADMFlags) -> tuple[UNet2DModel, DDPMScheduler]:
    """A randomly initialised ADM-architecture UNet (layer names and shapes of the real checkpoint)."""
    flags = adm_flags(flags)
    return UNet2DModel(**unet_config(flags)), adm_scheduler(flags)
