"""`from_pretrained` that gives a reloaded model the numbers of the model that was saved, quietly.

Why a reloaded model computed differently: diffusers loads a safetensors file by memory-mapping it and
*assigns* the mapped tensors to the parameters (`assign_to_params_buffers`), so every weight is a view into
the file at its header offset, aligned to 8 bytes only, where a freshly built model's weights start on the
64-byte boundaries of torch's CPU allocator. oneDNN picks its convolution kernels (and their blocking, so
the order of the float32 sums) by the alignment of the pointers it is given: on some CPUs (seen on an AMD
EPYC without AMX) the same weights then give outputs that differ in the last bits (1.3e-6), though the
state dicts are bit-identical. `own_storage` copies every loaded tensor into storage of its own (aligned,
and no longer backed by the file, which may then be replaced or deleted), after which the reloaded model
runs the same kernels as the original and gives the same bits.

Quietly: without `accelerate` installed, diffusers' default `low_cpu_mem_usage=True` prints a three-line
advice to install it at every load; asking for `low_cpu_mem_usage=False` (what diffusers falls back to
anyway) loads the same weights the same way without the advice.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
from diffusers import ModelMixin
from diffusers.utils import is_accelerate_available

M = TypeVar("M", bound=torch.nn.Module)


def own_storage(module: M) -> M:
    """Give every parameter and buffer of `module` a fresh copy of its data (same values, strides and dtype)
    in storage of its own; tied parameters stay tied."""
    # keyed by the id of the Parameter or buffer, kept alive here so that no id is reused meanwhile
    done: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    with torch.no_grad():
        for sub in module.modules():
            for param in sub._parameters.values():
                if param is not None and id(param) not in done:
                    done[id(param)] = (param, param)
                    param.data = param.data.clone(memory_format=torch.preserve_format)
            for name, buffer in sub._buffers.items():
                if buffer is not None:
                    if id(buffer) not in done:
                        done[id(buffer)] = (buffer, buffer.detach().clone(memory_format=torch.preserve_format))
                    sub._buffers[name] = done[id(buffer)][1]
    return module


def pretrained_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` for diffusers' `from_pretrained`, with `low_cpu_mem_usage=False` where accelerate is absent."""
    if not is_accelerate_available():
        kwargs.setdefault("low_cpu_mem_usage", False)
    return kwargs


def load_pretrained(cls: type[M], *args: Any, **kwargs: Any) -> M:
    """`cls.from_pretrained(*args, **kwargs)` for a diffusers model class that is not ours (UNet2DModel, ...):
    quiet without accelerate, and computing exactly what the saved model computed."""
    model = cls.from_pretrained(*args, **pretrained_kwargs(kwargs))  # type: ignore[attr-defined]
    return own_storage(model) if isinstance(model, torch.nn.Module) else model


class PretrainedModel(ModelMixin):
    """diffusers' `ModelMixin` whose `from_pretrained` loads quietly and gives the saved model's numbers."""

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        return own_storage(super().from_pretrained(*args, **pretrained_kwargs(kwargs)))
