"""Diffusion teachers: loading, presets, feature extraction at t, and DDPM training."""

from .diffusion_teacher import DEFAULT_TEACHER_LAYER, DiffusionTeacher
from .loading import default_scheduler, load_unet_and_scheduler, unet_from_preset
from .presets import TEACHER_PRESETS

__all__ = [
    "DEFAULT_TEACHER_LAYER",
    "DiffusionTeacher",
    "TEACHER_PRESETS",
    "default_scheduler",
    "load_unet_and_scheduler",
    "unet_from_preset",
]
