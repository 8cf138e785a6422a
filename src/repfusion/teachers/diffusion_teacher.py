"""A frozen diffusion UNet read as a feature extractor at a per-image timestep."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import nn

from ..errors import RepFusionError
from ..features import CallPlan, FeatureTap, StopForward, plan_calls
from .loading import load_unet_and_scheduler

DEFAULT_TEACHER_LAYER = "mid_block.resnets.1.conv2"
NoiseMode = Literal["clean", "noised"]


class DiffusionTeacher(nn.Module):
    """Frozen epsilon-prediction UNet whose activations at timestep t are the distillation target.

    Pixels are expected in [-1, 1] (the range DDPMs are trained on). In `clean` mode the image is fed
    as is with the embedding of t, as the reference implementation does; in `noised` mode it is first
    noised with the teacher's own scheduler (`add_noise`). The forward pass stops right after the
    deepest requested layer. The UNet's weights stay out of `state_dict()` so training checkpoints
    do not carry a copy of the teacher; loading refills them from the live module.
    """

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler, source: str = "") -> None:
        super().__init__()
        self.unet = unet.eval().requires_grad_(False)
        self.scheduler = scheduler
        self.source = source
        self._plans: dict[tuple, CallPlan] = {}
        self._register_state_dict_hook(_drop_unet_keys)
        self._register_load_state_dict_pre_hook(self._refill_unet_keys)

    @classmethod
    def from_source(cls, source: str, image_size: int | None = None) -> DiffusionTeacher:
        unet, scheduler = load_unet_and_scheduler(source, image_size)
        return cls(unet, scheduler, source)

    @property
    def num_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def in_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def sample_size(self) -> int:
        return unet_sample_size(self.unet)

    def train(self, mode: bool = True) -> DiffusionTeacher:
        """Always eval: Lightning flips modules back to train mode after validation."""
        return super().train(False)

    def check_input(self, shape: Sequence[int], require_native_size: bool = False) -> None:
        """Raise a one-sentence error when images cannot go through this UNet."""
        check_unet_input(self.unet, shape, require_native_size)

    def noised(self, pixels: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps, with the teacher's own schedule."""
        if noise is None:
            noise = torch.randn(pixels.shape, generator=generator, device=pixels.device, dtype=pixels.dtype)
        return self.scheduler.add_noise(pixels, noise, timesteps)

    def _plan(self, layers: tuple[str, ...], x: torch.Tensor, t: torch.Tensor) -> CallPlan:
        key = (layers, tuple(x.shape[1:]))
        if key not in self._plans:
            self._plans[key] = plan_calls(self.unet, layers, lambda: self.unet(x[:1], t[:1]))
        return self._plans[key]

    @torch.no_grad()
    def forward(
        self,
        pixels: torch.Tensor,
        timesteps: torch.Tensor,
        layers: Sequence[str] = (DEFAULT_TEACHER_LAYER,),
        noise_mode: NoiseMode = "clean",
        noise: torch.Tensor | None = None,
        truncate: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Features of `pixels` (B, C, H, W in [-1, 1]) at `timesteps` (B,), one tensor per layer name.

        Args:
            layers (`Sequence[str]`): dotted module paths, see `repfusion layers`.
            noise_mode (`str`, *optional*, defaults to `"clean"`): `"clean"` or `"noised"`.
            noise (`torch.Tensor`, *optional*): the eps of the noised mode; drawn when absent.
            truncate (`bool`, *optional*, defaults to `True`): stop after the deepest requested layer.
        """
        layers = tuple(layers)  # unknown names raise in plan_calls / FeatureTap, naming the closest ones
        if noise_mode not in ("clean", "noised"):
            raise RepFusionError(f"noise_mode must be 'clean' or 'noised', not '{noise_mode}'.")
        self.check_input(pixels.shape)
        timesteps = timesteps.to(pixels.device).long()
        x = pixels if noise_mode == "clean" else self.noised(pixels, timesteps, noise)
        plan = self._plan(layers, x, timesteps) if truncate else None
        with FeatureTap(self.unet, layers, plan) as tap:
            try:
                self.unet(x, timesteps)
            except StopForward:
                pass
            return tap.pop()

    def feature_shape(self, layer: str, image_size: int | None = None) -> tuple[int, ...]:
        """(C, H, W) of one layer's output for an input of the given size."""
        size = image_size or self.sample_size
        device = next(self.unet.parameters()).device
        x = torch.zeros(1, self.in_channels, size, size, device=device)
        return tuple(self(x, torch.zeros(1, dtype=torch.long, device=device), (layer,))[layer].shape[1:])

    def _refill_unet_keys(self, state_dict, prefix, *_args) -> None:
        for name, tensor in self.unet.state_dict().items():
            state_dict.setdefault(f"{prefix}unet.{name}", tensor)


def _drop_unet_keys(module: nn.Module, state_dict: dict, prefix: str, _meta: object) -> None:
    for key in [k for k in state_dict if k.startswith(f"{prefix}unet.")]:
        del state_dict[key]


def unet_sample_size(unet: UNet2DModel) -> int:
    size = unet.config.sample_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def check_unet_input(unet: UNet2DModel, shape: Sequence[int], require_native_size: bool = False) -> None:
    """Raise a one-sentence error when images of this (B, C, H, W) shape cannot go through the UNet."""
    _, c, h, w = shape
    channels = int(unet.config.in_channels)
    if c != channels:
        raise RepFusionError(
            f"The teacher takes {channels}-channel images but the data have {c} channels; "
            f"convert the data or choose a teacher with in_channels={c}."
        )
    factor = 2 ** (len(unet.config.block_out_channels) - 1)
    if h % factor or w % factor:
        raise RepFusionError(
            f"The teacher downsamples {factor}x, so image height and width must be multiples of {factor}, "
            f"but the data are {h}x{w}; set data.image_size to a multiple of {factor}."
        )
    size = unet_sample_size(unet)
    if require_native_size and (h, w) != (size, size):
        raise RepFusionError(
            f"The teacher was trained on {size}x{size} images but the data are {h}x{w}; "
            f"set data.image_size={size} or set teacher.allow_other_size=true."
        )
