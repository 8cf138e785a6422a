"""Training an epsilon-prediction DDPM teacher for users who have none (diffusers UNet + Lightning)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.utils import make_image_grid

from ..data.augment import Augment
from ..io import atomic_write, replace_dir, staging_dir
from ..stage import Stage
from ..training import OptimConfig
from .diffusion_teacher import model_pixels


def ddpm_augment(image_size: int) -> Augment:
    """The augmentation a teacher trains with: random horizontal flips and no crop, as DDPM (Ho et al. 2020)
    trains on CIFAR-10. `data.flip` and `data.crop_padding` are not read (they have not been since the first
    version), so every teacher run so far is reproduced."""
    return Augment(image_size, crop_padding=0, flip=True)


class DDPMTraining(Stage):
    """L = || eps - eps_theta(sqrt(abar_t) x + sqrt(1 - abar_t) eps, t) ||^2 with t ~ U{0..T-1}."""

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler, optim: OptimConfig, augment: Augment) -> None:
        super().__init__(augment, optim)
        self.unet = unet
        self.scheduler = scheduler

    def compile_targets(self) -> list[torch.nn.Module]:
        """What `trainer.compile` compiles in place."""
        return [self.unet]

    def diffusion_loss(self, images01: torch.Tensor) -> torch.Tensor:
        x0 = model_pixels(images01)  # the noise loss works where the teachers read: [-1, 1]
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (x0.shape[0],), device=x0.device)
        return F.mse_loss(self.unet(self.scheduler.add_noise(x0, noise, t), t).sample, noise)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.diffusion_loss(batch[0])
        self.log("train/diffusion_loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.log("val/diffusion_loss", self.diffusion_loss(batch[0]), prog_bar=True, sync_dist=True)


@torch.no_grad()
def sample_grid(unet: UNet2DModel, scheduler: DDPMScheduler, path: Path, count: int = 16, steps: int = 50,
                seed: int = 0) -> Path:
    """Draw `count` samples with DDIM (the DDPM's own schedule, fewer steps) and save them as a PNG grid."""
    pipeline = DDIMPipeline(unet=unet.eval(), scheduler=DDIMScheduler.from_config(scheduler.config))
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    images = pipeline(batch_size=count, generator=generator, num_inference_steps=steps).images
    cols = int(count**0.5)
    grid = make_image_grid(images, rows=(count + cols - 1) // cols, cols=cols)
    return atomic_write(path, lambda tmp: grid.save(tmp, format="PNG"))


def export_teacher(unet: UNet2DModel, scheduler: DDPMScheduler, out_dir: Path) -> Path:
    """save_pretrained into a staging folder, then swap it in, so a kill never leaves half a teacher."""
    tmp = staging_dir(out_dir)
    unet.save_pretrained(tmp)
    scheduler.save_pretrained(tmp)
    return replace_dir(tmp, out_dir)
