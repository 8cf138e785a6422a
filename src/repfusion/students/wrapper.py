"""A student made of another network's layers up to its feature layer (a timm, torchvision or user module).

Why the wrapped net's layers are the wrapper's own: the wrapper registers the net's top-level children
(and its root-level parameters and buffers) as its own submodules instead of holding the net as one
attribute, so state-dict keys, `named_modules` and hookable layer names are exactly the net's
(`layer4.1.conv2.weight`, not `net.layer4.1.conv2.weight`): an export loads back into the user's
library, and `student.layer` names the layers the user knows. Only the children that run before the
feature layer (traced once, in eval mode, at construction) belong to the student; the rest (the net's
own pooling and classifier) are neither trained nor saved. The wrapper's own head is `fc`
(`tasks.backbone.HEAD_PREFIXES`).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import ConfigMixin
from torch import nn

from ..errors import RepFusionError, unknown_name_error
from ..features import CallPlan, FeatureTap
from ..pretrained import PretrainedModel

OWN_NAMES = ("fc", "pool")  # the wrapper's own children: a net's child of these names cannot be part of the student


def _first_param(module: nn.Module) -> torch.Tensor | None:
    return next(module.parameters(), None)


class NetWrapper(PretrainedModel, ConfigMixin):
    """The layers of `self._net` up to `feature_layer`, then global average pooling and an optional `fc` head.

    Subclasses set the config (arch, width 1.0, num_classes, in_channels) and call `_wrap`.
    """

    config_name = "config.json"

    def _wrap(self, net: nn.Module, feature_layer: str, num_classes: int, in_channels: int, image_size: int,
              arch: str, drop_unused: bool = False) -> None:
        """Trace `net` once to find its feature map and the children that compute it, then adopt them.

        drop_unused: replace the net's children that do not run with `nn.Identity` (frees a large unused
        classifier; only for nets the wrapper built itself, never the user's module).
        """
        if not isinstance(feature_layer, str) or not feature_layer:
            raise RepFusionError(f"{arch} needs the name of its feature layer (a submodule whose output is the "
                                 "B x C x H x W feature map, e.g. 'layer4'); list them with `repfusion layers`.")
        try:
            net.get_submodule(feature_layer)
        except AttributeError:
            names = [name for name, _ in net.named_modules() if name]
            raise unknown_name_error(f"feature layer of {arch}", feature_layer, names) from None
        object.__setattr__(self, "_net", net)  # not a submodule: its children are adopted one by one below
        self.feature_layer = feature_layer
        self.default_image_size = image_size
        shape, used = self._trace(in_channels, image_size, arch)
        for name, child in net.named_children():
            if name in used:
                if name in OWN_NAMES:
                    raise RepFusionError(f"{arch} has a layer named '{name}' before its feature layer, a name the "
                                         "student keeps for its own head; rename that layer in your module.")
                self.add_module(name, child)
            elif drop_unused:
                setattr(net, name, nn.Identity())
        for name, param in net.named_parameters(recurse=False):
            self.register_parameter(name, param)
        for name, buffer in net.named_buffers(recurse=False):
            self.register_buffer(name, buffer)
        self.feature_channels = int(shape[1])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.feature_channels, num_classes) if num_classes > 0 else None

    def _trace(self, in_channels: int, image_size: int, arch: str) -> tuple[torch.Size, set[str]]:
        """The feature map's shape on one dummy image and the top-level children that ran before it."""
        net: nn.Module = self._net
        used: set[str] = set()

        def mark(name: str):
            return lambda _module, _inputs: used.add(name)

        handles = [child.register_forward_pre_hook(mark(name)) for name, child in net.named_children()]
        param = _first_param(net)
        x = torch.zeros(1, in_channels, image_size, image_size,  # meta when diffusers builds it empty
                        device=param.device if param is not None else "cpu",
                        dtype=param.dtype if param is not None else torch.float32)
        was_training = net.training
        net.eval()
        tap = FeatureTap(net, [self.feature_layer], CallPlan.first_call(self.feature_layer))
        try:
            with torch.no_grad(), tap:
                tap.run(lambda: net(x))
        except (RuntimeError, ValueError, TypeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RepFusionError(f"{arch} fails on a {in_channels} x {image_size} x {image_size} image ({first}); "
                                 "give the in_channels and image_size it takes.") from None
        finally:
            for handle in handles:
                handle.remove()
            net.train(was_training)
        ran, feature = tap.calls(self.feature_layer), tap.pop().get(self.feature_layer)
        if not ran:
            raise RepFusionError(f"The feature layer '{self.feature_layer}' of {arch} never runs in its forward; "
                                 "name a layer the forward calls (list them with `repfusion layers`).")
        shape = feature.shape if feature is not None else torch.Size()
        if len(shape) != 4:
            raise RepFusionError(f"The feature layer '{self.feature_layer}' of {arch} gives a "
                                 f"{' x '.join(map(str, shape)) or 'non-tensor'} output, not a B x C x H x W "
                                 "map; name a convolutional layer (or choose a convolutional network).")
        return shape, used

    # 1. features, 2. pooled features or logits
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature layer's B x C x H x W output; the wrapped net stops right after it (a `FeatureTap`
        ending at the layer's first call, as the trace at construction did)."""
        with FeatureTap(self._net, [self.feature_layer], CallPlan.first_call(self.feature_layer)) as tap:
            return tap.run(lambda: self._net(x)).pop()[self.feature_layer]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.flatten(self.pool(self.forward_features(x)), 1)
        return self.fc(pooled) if self.fc is not None else pooled

    def reset_head(self, num_classes: int) -> None:
        """A fresh `fc` head for `num_classes` classes (none for 0), e.g. a backbone fine-tuned on a task."""
        self.fc = nn.Linear(self.feature_channels, num_classes) if num_classes > 0 else None
        if self.fc is not None and (param := _first_param(self)) is not None:
            self.fc.to(param.device)
        self.register_to_config(num_classes=num_classes)

    # the net's root-level tensors are shared with the wrapper: keep them shared when torch replaces them
    def _share_root(self) -> None:
        net: nn.Module | None = self.__dict__.get("_net")
        if net is None:
            return
        for name in net._parameters:
            net._parameters[name] = self._parameters[name]
        for name in net._buffers:
            net._buffers[name] = self._buffers[name]

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> NetWrapper:
        super()._apply(fn, *args, **kwargs)
        self._share_root()
        return self

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._share_root()

    def train(self, mode: bool = True) -> NetWrapper:
        super().train(mode)
        if "_net" in self.__dict__:
            self._net.training = mode  # the children follow through the wrapper; the net's own flag here
        return self
