"""Latent diffusion teachers (Stable-Diffusion-style): a `UNet2DConditionModel` with its `AutoencoderKL`.

The teacher takes pixels like every other teacher and encodes them itself. The VAE is the expensive
part of this teacher, so its cost is kept down: it runs without autograd, once per batch (one
`forward` = one encoding, then the noise and the UNet act on the latents), on the deterministic
posterior mode (no sampling), and in bfloat16 autocast on a GPU that supports it (float32 on CPU).
Latents are `(mode - shift_factor) * scaling_factor`, as the pipelines scale them.

The UNet is conditioned on the empty prompt (unconditional generation). Its text embedding comes, in
order of preference, from a file the user gives (`uncond_embedding`: safetensors or a tensor saved
with torch.save), from the pipeline's own `text_encoder/` + `tokenizer/` (computed once per process
and cached; needs `transformers`), or is zeros with a one-line warning.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch import nn

from ..errors import RepFusionError
from ..pretrained import load_pretrained
from .diffusion_teacher import DiffusionTeacher, check_image, unet_sample_size
from .loading import default_scheduler

TEXT_ENCODERS = ("CLIPTextModel", "CLIPTextModelWithProjection")  # read by name from transformers only
_EMBEDDING_CACHE: dict[str, torch.Tensor] = {}


class LatentTeacher(DiffusionTeacher):
    """A frozen latent denoiser (`unet`) with its frozen VAE; features of the denoiser's named layers."""

    frozen = ("unet", "vae")

    def __init__(self, unet: nn.Module, vae: AutoencoderKL, scheduler: DDPMScheduler, source: str = "",
                 uncond: torch.Tensor | None = None, class_label: int | str = "auto",
                 class_map: Sequence[int] | None = None) -> None:
        super().__init__(unet, scheduler, source, class_label, class_map)
        self.vae = vae.eval().requires_grad_(False)
        self.kind = "latent"
        self.register_buffer("uncond", uncond, persistent=False)

    @property
    def in_channels(self) -> int:
        return int(self.vae.config.in_channels)

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_factor(self) -> int:
        """Downsampling of the denoiser itself (latent size must be a multiple of it)."""
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def sample_size(self) -> int:
        return unet_sample_size(self.unet) * self.vae_factor

    def check_input(self, shape: Sequence[int], require_native_size: bool = False) -> None:
        check_image(shape, self.in_channels, self.vae_factor * self.latent_factor, self.sample_size,
                    require_native_size)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] -> scaled latents (posterior mode), without autograd, bf16 on a capable GPU."""
        bf16 = pixels.is_cuda and torch.cuda.is_bf16_supported()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            latents = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.mode()
        shift = self.vae.config.get("shift_factor", None) or 0.0
        return ((latents.float() - shift) * float(self.vae.config.scaling_factor)).to(pixels.dtype)

    def denoise(self, x: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor | None) -> object:
        context = self.uncond.to(x.dtype).expand(len(x), -1, -1)
        return self.unet(x, timesteps, encoder_hidden_states=context)


def _pipeline_index(source: str) -> dict[str, Any]:
    path = Path(source).expanduser()
    if path.is_dir():
        index = path / "model_index.json"
        return json.loads(index.read_text()) if index.is_file() else {}
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(source, "model_index.json")).read_text())
    except Exception:
        return {}


def _where(source: str) -> str:
    path = Path(source).expanduser()
    return str(path) if path.is_dir() else source


def load_component(cls: type, source: str, subfolder: str, what: str, untrained: bool = False):
    """`cls.from_pretrained(source, subfolder=...)` with a one-sentence error; `untrained`: from its config only."""
    try:
        if untrained:
            return cls.from_config(cls.load_config(_where(source), subfolder=subfolder))
        return load_pretrained(cls, _where(source), subfolder=subfolder)  # quiet, the saved model's numbers
    except Exception as e:  # diffusers raises OSError/EnvironmentError/ValueError here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RepFusionError(f"Cannot load the {what} from {source}/{subfolder} ({first}); give a pipeline folder "
                             "as diffusers saves it, or a reachable hub id.") from None


def load_scheduler(source: str) -> DDPMScheduler:
    """The pipeline's own training schedule (any scheduler config has the betas); the paper's if absent."""
    try:
        return DDPMScheduler.from_pretrained(_where(source), subfolder="scheduler")
    except Exception:
        return default_scheduler()


def read_embedding(path: str | Path, width: int) -> torch.Tensor:
    """A (1, L, width) embedding from a safetensors file (one tensor) or a torch.save'd tensor (weights only)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RepFusionError(f"Unconditional embedding file {path} does not exist; give a .safetensors or .pt "
                             "file with the empty-prompt text embedding (L x width).")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = list(load_file(str(path)).values())
            tensor = tensors[0] if len(tensors) == 1 else None
        else:
            tensor = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise RepFusionError(f"Unconditional embedding file {path} cannot be read as plain tensors; save the "
                             "embedding alone with safetensors or torch.save.") from None
    if not isinstance(tensor, torch.Tensor) or tensor.dim() not in (2, 3) or tensor.shape[-1] != width:
        raise RepFusionError(f"Unconditional embedding file {path} must hold one tensor of shape (L, {width}) "
                             f"or (1, L, {width}), the UNet's cross_attention_dim.")
    return tensor.reshape(1, -1, width).float()


def encode_empty_prompt(source: str, index: dict[str, Any]) -> torch.Tensor:
    """The pipeline's text encoder applied to the empty prompt, computed once per process."""
    if source in _EMBEDDING_CACHE:
        return _EMBEDDING_CACHE[source]
    name = index["text_encoder"][1]
    if name not in TEXT_ENCODERS:
        raise RepFusionError(f"The text encoder of {source} is a {name}, which repfusion does not run; give the "
                             "empty-prompt embedding as a file with uncond_embedding.")
    try:
        import transformers
    except ImportError:
        raise RepFusionError(f"{source} has a text encoder but transformers is not installed; pip install "
                             "transformers, or give the empty-prompt embedding with uncond_embedding.") from None
    tokenizer = transformers.AutoTokenizer.from_pretrained(_where(source), subfolder="tokenizer")
    encoder = getattr(transformers, name).from_pretrained(_where(source), subfolder="text_encoder").eval()
    tokens = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    with torch.no_grad():
        embedding = encoder(tokens.input_ids)[0].float()
    _EMBEDDING_CACHE[source] = embedding
    return embedding


def unconditional_embedding(source: str, index: dict[str, Any], width: int, file: str | None) -> torch.Tensor:
    if file is not None:
        return read_embedding(file, width)
    encoder = index.get("text_encoder")
    if isinstance(encoder, (list, tuple)) and len(encoder) == 2 and encoder[1] and index.get("tokenizer"):
        embedding = encode_empty_prompt(source, index)
        if embedding.shape[-1] != width:
            raise RepFusionError(f"The text encoder of {source} gives width {embedding.shape[-1]} but the UNet "
                                 f"attends to width {width}; the pipeline folder is inconsistent.")
        return embedding
    print(f"warning: {source} has no text encoder and no uncond_embedding was given, so the UNet is conditioned "
          "on zeros instead of the empty-prompt embedding.", file=sys.stderr)
    return torch.zeros(1, 77, width)


def load_latent_teacher(source: str, uncond_embedding: str | None = None, class_label: int | str = "auto",
                        class_map: Sequence[int] | None = None, untrained: bool = False) -> LatentTeacher:
    """A pipeline folder or hub id with unet/ (UNet2DConditionModel), vae/ and scheduler/."""
    unet = load_component(UNet2DConditionModel, source, "unet", "latent UNet", untrained)
    if unet.config.get("addition_embed_type") or unet.config.get("class_embed_type") or unet.config.get(
            "num_class_embeds"):
        raise RepFusionError(f"The UNet of {source} needs extra conditioning (SDXL-style added embeddings or "
                             "classes), which repfusion does not provide; use an SD-1/2-style pipeline.")
    vae = load_component(AutoencoderKL, source, "vae", "VAE (AutoencoderKL)", untrained)
    width = int(unet.config.cross_attention_dim)
    uncond = unconditional_embedding(source, _pipeline_index(source), width, uncond_embedding)
    return LatentTeacher(unet, vae, load_scheduler(source), source, uncond, class_label, class_map)
