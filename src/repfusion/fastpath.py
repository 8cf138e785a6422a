"""Speed options of every stage (bf16 autocast, channels-last, torch.compile), resolved per device.

`trainer.precision`, `trainer.channels_last` and `trainer.compile` accept `auto`, which turns on what is
safe on the device the run trains on: on a CUDA GPU bf16 autocast (where the GPU has bf16) and
channels-last; on a CPU nothing (CPU runs are unchanged). `compile` stays off under `auto`: it costs a
minute of start-up per run and has not been measured here on a GPU (`benchmarks/gpu_check.sh` measures
it), so it is opt-in with `trainer.compile true`.

Compiling is done in place (`nn.Module.compile`), so state-dict keys, checkpoints and exports are the
same as without it. What is compiled is named by the module's `compile_targets()` (the student in
distillation, the model in fine-tuning, the UNet in teacher training). The frozen teacher is not compiled:
its truncation (a forward hook that stops the UNet by raising) lost the tapped feature under inductor on a
CPU, so a compiled teacher needs a truncated module without hooks first.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from .errors import RepFusionError

AUTO = "auto"


@dataclass(frozen=True)
class FastPaths:
    """What a run uses after `auto` was resolved for its device."""

    precision: str  # a Lightning precision name
    channels_last: bool
    compile: bool


def _flag(value: bool | str, key: str) -> bool | None:
    """True/False for a bool or 'true'/'false', None for auto."""
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text == AUTO:
        return None
    if text in ("true", "false"):
        return text == "true"
    raise RepFusionError(f"trainer.{key} must be true, false or auto, not '{value}'.")


def check_fast_paths(channels_last: bool | str, compile: bool | str) -> None:
    _flag(channels_last, "channels_last")
    _flag(compile, "compile")


def training_device(accelerator: str) -> torch.device:
    """The device a Trainer with this accelerator will train on (auto: CUDA when torch sees one)."""
    if accelerator in ("gpu", "cuda") or accelerator == AUTO and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def resolve_fast_paths(cfg, device: torch.device | None = None) -> FastPaths:
    """Resolve `auto` in a TrainerConfig (precision, channels_last, compile) for `device`."""
    device = device or training_device(str(cfg.accelerator))
    gpu = device.type == "cuda"
    precision = str(cfg.precision)
    if precision == AUTO:
        precision = "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true"
    channels_last = _flag(cfg.channels_last, "channels_last")
    compile_ = _flag(getattr(cfg, "compile", False), "compile")
    return FastPaths(precision=precision, channels_last=gpu if channels_last is None else channels_last,
                     compile=False if compile_ is None else compile_)


def compile_targets(module: nn.Module) -> list[nn.Module]:
    own = getattr(module, "compile_targets", None)
    return list(own()) if callable(own) else [module]


def apply_fast_paths(module: nn.Module, fast: FastPaths) -> None:
    """Channels-last weights and in-place compilation of the module's compile targets."""
    if fast.channels_last:
        module.to(memory_format=torch.channels_last)
    if fast.compile:
        for part in compile_targets(module):
            if getattr(part, "_compiled_call_impl", None) is None:
                part.compile()


def autocast_context(fast: FastPaths, device: torch.device):
    """The autocast Lightning's precision plugin opens around a training step (for steps driven by hand)."""
    if fast.precision in ("bf16-mixed", "bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if fast.precision in ("16-mixed", "16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


class ApplyFastPaths(Callback):
    """Channels-last and compilation once the module sits on its device, before the first batch."""

    def __init__(self, fast: FastPaths) -> None:
        self.fast = fast

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        apply_fast_paths(pl_module, self.fast)
