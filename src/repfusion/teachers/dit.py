"""Diffusion-transformer teachers: a diffusers `DiTTransformer2DModel` with its VAE.

Pixels are encoded by the VAE exactly as for latent teachers (`LatentTeacher.encode`: no autograd,
posterior mode, bf16 on a capable GPU). A transformer block outputs tokens (B, L, D) with
L = (H / p) (W / p) patches; they are returned as (B, D, H / p, W / p) maps in patch raster order, so
every loss and probe works unchanged. DiT is class-conditional: `class_label` `null` (the default
through `auto`) feeds the extra "no class" embedding (index num_classes) it was trained with for
classifier-free guidance; `dataset` or a class index feed real classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiTTransformer2DModel

from .diffusion_teacher import check_image
from .latent import LatentTeacher, load_component, load_scheduler


class DiTTeacher(LatentTeacher):
    """Features of named transformer blocks (`transformer_blocks.N`), tokens reshaped to maps."""

    def __init__(self, transformer: DiTTransformer2DModel, vae: AutoencoderKL, scheduler: DDPMScheduler,
                 source: str = "", class_label: int | str = "auto", class_map: Sequence[int] | None = None) -> None:
        super().__init__(transformer, vae, scheduler, source, None, class_label, class_map)
        self.kind = "dit"

    @property
    def num_classes(self) -> int | None:
        n = self.unet.config.num_embeds_ada_norm
        return int(n) if n else None

    @property
    def null_class(self) -> int | None:
        return self.num_classes  # the label-dropout embedding of classifier-free guidance

    @property
    def patch_size(self) -> int:
        return int(self.unet.config.patch_size)

    @property
    def sample_size(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_factor

    @property
    def default_layer(self) -> str:
        return f"transformer_blocks.{int(self.unet.config.num_layers) // 2}"

    def check_input(self, shape: Sequence[int], require_native_size: bool = False) -> None:
        check_image(shape, self.in_channels, self.vae_factor * self.patch_size, self.sample_size,
                    require_native_size, square=True)

    def denoise(self, x: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor | None) -> object:
        return self.unet(x, timestep=timesteps, class_labels=labels)

    def as_map(self, feature: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) tokens -> (B, D, h, w), h, w = latent size / patch size; other outputs pass through."""
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        if feature.dim() == 3 and feature.shape[1] == h * w:
            return feature.transpose(1, 2).reshape(len(feature), feature.shape[2], h, w)
        return feature

    def layer_rows(self, image_size: int | None = None) -> list[tuple[str, str, tuple[int, ...] | None]]:
        """Token outputs are listed with the (1, D, h, w) map shape the teacher returns for them."""
        size = image_size or self.sample_size
        side = size // self.vae_factor // self.patch_size
        rows = super().layer_rows(image_size)
        return [(n, k, (s[0], s[2], side, side) if s and len(s) == 3 and s[1] == side * side else s)
                for n, k, s in rows]


def load_dit_teacher(source: str, class_label: int | str = "auto",
                     class_map: Sequence[int] | None = None, untrained: bool = False) -> DiTTeacher:
    """A pipeline folder or hub id with transformer/ (DiT), vae/ and scheduler/."""
    transformer = load_component(DiTTransformer2DModel, source, "transformer", "DiT transformer", untrained)
    vae = load_component(AutoencoderKL, source, "vae", "VAE (AutoencoderKL)", untrained)
    return DiTTeacher(transformer, vae, load_scheduler(source), source, class_label, class_map)
