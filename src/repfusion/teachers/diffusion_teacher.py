"""A frozen diffusion denoiser read as a feature extractor at a per-image timestep."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import nn

from ..errors import RepFusionError
from ..features import CallPlan, FeatureTap, output_shapes, plan_calls

DEFAULT_TEACHER_LAYER = "mid_block.resnets.1.conv2"
NoiseMode = Literal["clean", "noised"]


def model_pixels(images01: torch.Tensor) -> torch.Tensor:
    """Float [0, 1] images -> the [-1, 1] pixels diffusion models are trained on: the one definition of this
    mapping. The teachers apply it themselves (`DiffusionTeacher.forward` takes [0, 1] images like every other
    part), and the DDPM training's noise loss works on its output."""
    return images01 * 2 - 1


class DiffusionTeacher(nn.Module):
    """Frozen epsilon-prediction UNet whose activations at timestep t are the distillation target.

    Images come in as float [0, 1], like everywhere else; the teacher maps them to the [-1, 1] its denoiser
    was trained on (`model_pixels`), so no caller maps them. In `clean` mode the image is fed
    as is with the embedding of t, as the reference implementation does; in `noised` mode it is first
    noised with the teacher's own scheduler (`add_noise`). The forward pass stops right after the
    deepest requested layer. The frozen networks' weights stay out of `state_dict()` so training
    checkpoints do not carry a copy of the teacher; loading refills them from the live modules.

    `unet` is the denoiser whose layers are read (a `UNet2DModel` here, converted ADM checkpoints
    included; the latent and DiT teachers subclass this with their own denoiser and VAE). A
    class-conditional denoiser gets `class_label`: `"dataset"` (the batch's labels, mapped through
    `class_map` when given), `"null"` (the unconditional class, where the model has one), an integer
    class for every image, or `"auto"` (null where there is one, else class 0 for every image). The
    dataset's labels put the label itself into the features (a linear probe reads it off at every t, and
    the policy's reward head with it), so a fixed class is the default where no null class exists.
    """

    frozen = ("unet",)  # submodules kept out of state_dict()

    def __init__(self, unet: nn.Module, scheduler: DDPMScheduler, source: str = "",
                 class_label: int | str = "auto", class_map: Sequence[int] | None = None) -> None:
        super().__init__()
        self.unet = unet.eval().requires_grad_(False)
        self.scheduler = scheduler
        self.source = source
        self.kind = "unet"
        self.class_label = parse_class_label(class_label, self.num_classes, self.null_class)
        self.class_map = None if class_map is None else torch.as_tensor(list(class_map), dtype=torch.long)
        self._plans: dict[tuple, CallPlan] = {}
        self._register_state_dict_hook(_drop_frozen_keys)
        self._register_load_state_dict_pre_hook(self._refill_frozen_keys)

    @property
    def num_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def in_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def sample_size(self) -> int:
        return unet_sample_size(self.unet)

    @property
    def default_layer(self) -> str:
        """The layer read when none is named: the middle block's last convolution."""
        return DEFAULT_TEACHER_LAYER

    @property
    def num_classes(self) -> int | None:
        """Classes the denoiser is conditioned on (None: unconditional)."""
        n = getattr(self.unet.config, "num_class_embeds", None)
        return int(n) if n else None

    @property
    def null_class(self) -> int | None:
        """The label that means 'no class' (DiT's extra embedding); None where the model has none (ADM)."""
        return None

    def train(self, mode: bool = True) -> DiffusionTeacher:
        """Always eval: Lightning flips modules back to train mode after validation."""
        return super().train(False)

    def check_input(self, shape: Sequence[int], require_native_size: bool = False) -> None:
        """Raise a one-sentence error when images cannot go through this UNet."""
        check_unet_input(self.unet, shape, require_native_size)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """What the denoiser takes from [-1, 1] pixels: the pixels themselves here, VAE latents for latent
        teachers."""
        return pixels

    def noised(self, pixels: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps, with the teacher's own schedule."""
        if noise is None:
            noise = torch.randn(pixels.shape, generator=generator, device=pixels.device, dtype=pixels.dtype)
        return self.scheduler.add_noise(pixels, noise, timesteps)

    def class_labels(self, batch: int, labels: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
        """The class input of a conditional denoiser for this batch (None for an unconditional one)."""
        if self.num_classes is None:
            return None
        if self.class_label == "dataset":
            if labels is None:
                fixed = "a class index or 'null'" if self.null_class is not None else "a class index (this " \
                        "teacher has no null class)"
                raise RepFusionError(f"This class-conditional teacher reads the dataset's labels but none were "
                                     f"given; pass labels, or set teacher.class_label to {fixed}.")
            labels = labels.to(device).long()
            if self.class_map is not None:
                labels = self.class_map.to(device)[labels]
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise RepFusionError(f"Label {int(labels.max())} is outside the teacher's {self.num_classes} "
                                     "classes; give teacher.class_map or a fixed teacher.class_label.")
            return labels
        return torch.full((batch,), int(self.class_label), dtype=torch.long, device=device)

    def denoise(self, x: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor | None) -> object:
        """One call of the denoiser on its own input (pixels or latents)."""
        return self.unet(x, timesteps, class_labels=labels)

    def as_map(self, feature: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Features as (B, C, H, W) maps (DiT reshapes its tokens); UNet features already are."""
        return feature

    def _plan(self, layers: tuple[str, ...], x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> CallPlan:
        key = (layers, tuple(x.shape[1:]))
        if key not in self._plans:
            self._plans[key] = plan_calls(self.unet, layers,
                                          lambda: self.denoise(x[:1], t[:1], None if y is None else y[:1]))
        return self._plans[key]

    @torch.no_grad()
    def forward(
        self,
        images01: torch.Tensor,
        timesteps: torch.Tensor,
        layers: Sequence[str] = (DEFAULT_TEACHER_LAYER,),
        noise_mode: NoiseMode = "clean",
        noise: torch.Tensor | None = None,
        truncate: bool = True,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Features of `images01` (B, C, H, W, float in [0, 1]) at `timesteps` (B,), one tensor per layer name.

        Args:
            layers (`Sequence[str]`): dotted module paths, see `repfusion layers`.
            noise_mode (`str`, *optional*, defaults to `"clean"`): `"clean"` or `"noised"`.
            noise (`torch.Tensor`, *optional*): the eps of the noised mode, shaped like the denoiser's input
                (the latents for a latent teacher); drawn (with `generator`) when absent.
            truncate (`bool`, *optional*, defaults to `True`): stop after the deepest requested layer.
            labels (`torch.Tensor`, *optional*): the images' dataset labels (B,), for class-conditional
                teachers reading the dataset's labels.
        """
        layers = tuple(layers)  # unknown names raise in plan_calls / FeatureTap, naming the closest ones
        if noise_mode not in ("clean", "noised"):
            raise RepFusionError(f"noise_mode must be 'clean' or 'noised', not '{noise_mode}'.")
        self.check_input(images01.shape)
        if not getattr(self, "_range_checked", False):  # once: a [-1, 1] caller (the old API) is told, not misread
            low, high = float(images01.min()), float(images01.max())
            if low < -1e-3 or high > 1 + 1e-3:
                raise RepFusionError(f"The teacher takes float images in [0, 1] and maps them to [-1, 1] itself, but "
                                     f"got values from {low:.3g} to {high:.3g}; pass the images before any [-1, 1] "
                                     f"mapping (or divide uint8 pixels by 255).")
            self._range_checked = True
        timesteps = timesteps.to(images01.device).long()
        y = self.class_labels(len(images01), labels, images01.device)
        x = self.encode(model_pixels(images01))
        x = x if noise_mode == "clean" else self.noised(x, timesteps, noise, generator)
        plan = self._plan(layers, x, timesteps, y) if truncate and layers else None
        with FeatureTap(self.unet, layers, plan) as tap:
            features = tap.run(lambda: self.denoise(x, timesteps, y)).pop()
        return {name: self.as_map(f, x) for name, f in features.items()}

    def feature_shape(self, layer: str, image_size: int | None = None) -> tuple[int, ...]:
        """(C, H, W) of one layer's output for an input of the given size."""
        size = image_size or self.sample_size
        device = next(self.unet.parameters()).device
        x = torch.zeros(1, self.in_channels, size, size, device=device)
        labels = torch.zeros(1, dtype=torch.long, device=device)
        return tuple(self(x, torch.zeros(1, dtype=torch.long, device=device), (layer,), labels=labels)[layer].shape[1:])

    def layer_rows(self, image_size: int | None = None) -> list[tuple[str, str, tuple[int, ...] | None]]:
        """(name, type, output shape) of every denoiser module for one image (see `repfusion layers`)."""
        size = image_size or self.sample_size
        self.check_input((1, self.in_channels, size, size))
        x = torch.zeros(1, self.in_channels, size, size)
        zero = torch.zeros(1, dtype=torch.long)
        return output_shapes(self.unet, lambda: self(x, zero, (), truncate=False, labels=zero))

    def _refill_frozen_keys(self, state_dict, prefix, *_args) -> None:
        for name in self.frozen:
            module = getattr(self, name, None)
            if module is not None:
                for key, tensor in module.state_dict().items():
                    state_dict.setdefault(f"{prefix}{name}.{key}", tensor)


def parse_class_label(value: int | str, num_classes: int | None, null_class: int | None) -> int | str:
    """'auto' | 'null' | 'dataset' | an integer (or its string): checked against the model's classes."""
    text = str(value).strip().lower()
    if num_classes is None:
        if text != "auto":
            raise RepFusionError(f"This teacher is unconditional, so class_label '{value}' has no effect; leave "
                                 "teacher.class_label at auto.")
        return "none"
    if text == "auto":
        return 0 if null_class is None else null_class
    if text == "dataset":
        return "dataset"
    if text == "null":
        if null_class is None:
            raise RepFusionError("This class-conditional teacher has no null (unconditional) class; set "
                                 "teacher.class_label to 'dataset' or to a class index.")
        return null_class
    try:
        index = int(text)
    except ValueError:
        raise RepFusionError(
            f"teacher.class_label must be auto, dataset, null or a class index, not '{value}'.") from None
    limit = num_classes if null_class is None else null_class + 1
    if not 0 <= index < limit:
        raise RepFusionError(f"Class {index} is outside the teacher's {num_classes} classes; pick 0 to {limit - 1}.")
    return index


def _drop_frozen_keys(module: DiffusionTeacher, state_dict: dict, prefix: str, _meta: object) -> None:
    starts = tuple(f"{prefix}{name}." for name in module.frozen)
    for key in [k for k in state_dict if k.startswith(starts)]:
        del state_dict[key]


def unet_sample_size(unet: UNet2DModel) -> int:
    size = unet.config.sample_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def check_unet_input(unet: UNet2DModel, shape: Sequence[int], require_native_size: bool = False) -> None:
    """Raise a one-sentence error when images of this (B, C, H, W) shape cannot go through the UNet."""
    factor = 2 ** (len(unet.config.block_out_channels) - 1)
    check_image(shape, int(unet.config.in_channels), factor, unet_sample_size(unet), require_native_size)


def check_image(shape: Sequence[int], channels: int, factor: int, size: int, require_native_size: bool = False,
                square: bool = False) -> None:
    """One-sentence errors for images a teacher cannot take: channels, a size not a multiple of `factor`
    (its total downsampling), a size other than its native `size` when required, a non-square image."""
    _, c, h, w = shape
    if c != channels:
        raise RepFusionError(
            f"The teacher takes {channels}-channel images but the data have {c} channels; "
            f"convert the data or choose a teacher with in_channels={c}."
        )
    if h % factor or w % factor:
        raise RepFusionError(
            f"The teacher downsamples {factor}x, so image height and width must be multiples of {factor}, "
            f"but the data are {h}x{w}; set data.image_size to a multiple of {factor}."
        )
    if square and h != w:
        raise RepFusionError(f"The teacher takes square images but the data are {h}x{w}; set data.image_size.")
    if require_native_size and (h, w) != (size, size):
        raise RepFusionError(
            f"The teacher was trained on {size}x{size} images but the data are {h}x{w}; "
            f"set data.image_size={size} or set teacher.allow_other_size=true."
        )
