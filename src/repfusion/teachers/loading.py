"""Teachers from a hub id, a `save_pretrained` folder or a named preset, all via diffusers."""

from __future__ import annotations

from pathlib import Path

from diffusers import DDPMScheduler, UNet2DModel

from ..errors import RepFusionError, unknown_name_error
from ..pretrained import load_pretrained  # quiet without accelerate, the saved model's numbers
from .presets import TEACHER_PRESETS


def default_scheduler() -> DDPMScheduler:
    """The DDPM linear schedule of the paper's teachers (1e-4 to 0.02, T = 1000)."""
    return DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


def unet_from_preset(name: str, image_size: int | None = None) -> UNet2DModel:
    if name not in TEACHER_PRESETS:
        raise unknown_name_error("teacher preset", name, TEACHER_PRESETS)
    config = dict(TEACHER_PRESETS[name])
    if image_size is not None:
        config["sample_size"] = image_size
    return UNet2DModel(**config)


def _subfolder(source: str) -> str | None:
    """Pipeline folders (model_index.json) keep the UNet under unet/, flat ones at the root."""
    path = Path(source)
    if path.is_dir() and not (path / "config.json").exists() and (path / "unet" / "config.json").exists():
        return "unet"
    return None


WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def _check_teacher_folder(folder: Path, source: str, need_weights: bool = True) -> None:
    """A local folder needs save_pretrained's config.json and weights; say which is missing, in plain words."""
    if not (folder / "config.json").is_file():
        raise RepFusionError(f"Teacher folder {source} has no config.json; give a folder written by save_pretrained "
                             "(a UNet2DModel or a pipeline folder with unet/).")
    if need_weights and not any((folder / name).is_file() or (folder / f"{Path(name).stem}.fp16{Path(name).suffix}").is_file()
               for name in WEIGHT_FILES) and not list(folder.glob("diffusion_pytorch_model*.safetensors")):
        raise RepFusionError(f"Teacher folder {source} has a config.json but no weights "
                             f"({WEIGHT_FILES[0]}); copy the weights file there or save the model again.")


def load_unet_and_scheduler(source: str, image_size: int | None = None,
                            untrained: bool = False) -> tuple[UNet2DModel, DDPMScheduler]:
    """Resolve `source`: a preset name (random weights), a local folder, or a hub model id.

    `untrained` reads the UNet's config.json only and draws fresh weights (the random-teacher control).
    """
    if source in TEACHER_PRESETS:
        return unet_from_preset(source, image_size), default_scheduler()
    path = Path(source).expanduser()
    looks_like_path = path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1
    if looks_like_path and not path.is_dir():
        raise RepFusionError(
            f"Teacher folder {source} does not exist; give a folder written by save_pretrained, "
            f"a hub id such as google/ddpm-cifar10-32, or a preset ({', '.join(TEACHER_PRESETS)})."
        )
    if not looks_like_path and "/" not in source:
        raise unknown_name_error("teacher", source, TEACHER_PRESETS, hint=", or give a hub id or a folder")
    sub = _subfolder(str(path)) if path.is_dir() else None
    if path.is_dir():
        _check_teacher_folder(path / sub if sub else path, source, need_weights=not untrained)
    where = str(path) if path.is_dir() else source
    try:
        unet = (UNet2DModel.from_config(UNet2DModel.load_config(where, subfolder=sub)) if untrained
                else load_pretrained(UNet2DModel, where, subfolder=sub))
    except Exception as e:  # diffusers raises OSError/EnvironmentError/ValueError here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RepFusionError(
            f"Cannot load a UNet2DModel from '{source}' ({first}); give a save_pretrained folder or a reachable hub id."
        ) from None
    try:
        sched_sub = "scheduler" if sub == "unet" else None
        scheduler = DDPMScheduler.from_pretrained(str(path) if path.is_dir() else source, subfolder=sched_sub)
    except Exception:  # no scheduler_config.json beside the weights: the paper's schedule
        scheduler = default_scheduler()
    return unet, scheduler
