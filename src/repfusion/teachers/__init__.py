"""Diffusion teachers: every kind (pixel UNet, guided-diffusion ADM, latent diffusion, DiT) behind one
interface, feature extraction at t, presets, and DDPM training."""

from .adm import ADM_PRESETS, ADMFlags, load_adm
from .diffusion_teacher import DEFAULT_TEACHER_LAYER, DiffusionTeacher, model_pixels
from .kinds import KINDS, detect_kind, load_teacher
from .loading import default_scheduler, load_unet_and_scheduler, unet_from_preset
from .presets import TEACHER_PRESETS

__all__ = [
    "ADM_PRESETS",
    "ADMFlags",
    "DEFAULT_TEACHER_LAYER",
    "DiffusionTeacher",
    "KINDS",
    "TEACHER_PRESETS",
    "default_scheduler",
    "detect_kind",
    "load_adm",
    "load_teacher",
    "load_unet_and_scheduler",
    "model_pixels",
    "unet_from_preset",
]
