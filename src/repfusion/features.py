"""Reading intermediate activations by dotted module path (the torchdistill hook-manager pattern).

`FeatureTap` stores the output of each requested module and can stop the forward pass right after
the last of them has run, so nothing past the deepest requested layer is computed. It is the one way
features are read by layer name here: the teachers' layers, the students' hooked layers and a wrapped
network's own feature layer (`students.wrapper`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .errors import unknown_name_error


class StopForward(Exception):
    """Raised from a hook once every requested feature has been read; it names the tap that raised it, so a
    tap inside another network's forward (a wrapped student inside a tapped model) lets the outer tap's
    stop pass through instead of swallowing it."""

    def __init__(self, tap: FeatureTap) -> None:
        super().__init__("every requested feature has been read")
        self.tap = tap


def first_tensor(output: object) -> torch.Tensor | None:
    """Unwrap module outputs that are tuples, lists or diffusers output dataclasses."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            found = first_tensor(item)
            if found is not None:
                return found
    sample = getattr(output, "sample", None)
    return sample if isinstance(sample, torch.Tensor) else None


def resolve_modules(model: nn.Module, layers: Sequence[str], kind: str = "layer") -> dict[str, nn.Module]:
    """Map dotted paths to modules; a bad path raises naming the closest valid ones.

    Each path is followed attribute by attribute (`get_submodule`), so a call costs the depth of the paths,
    not a walk over every module of a large UNet; the full list is built only for the error message.
    """
    found: dict[str, nn.Module] = {}
    for name in layers:
        try:
            found[name] = model.get_submodule(name) if name else None  # type: ignore[assignment]
        except AttributeError:
            found[name] = None  # type: ignore[assignment]
        if found[name] is None:
            named = dict(model.named_modules())
            named.pop("", None)
            raise unknown_name_error(kind, name, named, hint=" (list them with `repfusion layers`)")
    return found


@dataclass(frozen=True)
class CallPlan:
    """How often each requested module runs per forward, and which call is the last one overall."""

    calls: dict[str, int]
    last_layer: str

    @classmethod
    def first_call(cls, layer: str) -> CallPlan:
        """Stop right after the first call of `layer` (no trace needed: one layer, read once)."""
        return cls(calls={layer: 1}, last_layer=layer)


def plan_calls(model: nn.Module, layers: Sequence[str], run: Callable[[], object]) -> CallPlan:
    """Trace one forward pass to learn call counts and execution order of the requested modules."""
    modules = resolve_modules(model, layers)
    counts = {name: 0 for name in layers}
    order: list[str] = []

    def make_hook(name: str):
        def hook(_m, _i, _o):
            counts[name] += 1
            order.append(name)

        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in modules.items()]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    never = [n for n, c in counts.items() if c == 0]
    if never:
        raise unknown_name_error("layer (it is never called in forward)", never[0], [n for n in counts if counts[n]])
    return CallPlan(calls=counts, last_layer=order[-1])


class FeatureTap:
    """Forward hooks on named modules; use as a context manager so the hooks are always removed.

    A module called several times per forward (a shared activation, say) yields its last output.
    With `plan` given, the forward is interrupted (`StopForward`) right after the final call of the
    last requested module; `run` runs a forward and ends it there.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], plan: CallPlan | None = None) -> None:
        self.modules = resolve_modules(model, layers)
        self.plan = plan
        self._outputs: dict[str, torch.Tensor] = {}
        self._seen: dict[str, int] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            tensor = first_tensor(output)
            if tensor is not None:
                self._outputs[name] = tensor
            self._seen[name] = self._seen.get(name, 0) + 1
            plan = self.plan
            if plan is not None and name == plan.last_layer and self._seen[name] == plan.calls[name]:
                raise StopForward(self)

        return hook

    def __enter__(self) -> FeatureTap:
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.modules.items()]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def pop(self) -> dict[str, torch.Tensor]:
        """Return the stored features and clear them for the next batch."""
        out, self._outputs, self._seen = self._outputs, {}, {}
        return out

    def calls(self, layer: str) -> int:
        """How often `layer` ran since the last `pop` (0: the forward never reached it)."""
        return self._seen.get(layer, 0)

    def run(self, forward: Callable[[], object]) -> FeatureTap:
        """Call `forward` with the hooks in place (read the features with `pop`). This tap's own early stop
        ends the forward; another tap's `StopForward` propagates to the tap that raised it."""
        try:
            forward()
        except StopForward as stop:
            if stop.tap is not self:
                raise
        return self


def pooled(feature: torch.Tensor) -> torch.Tensor:
    """Global average pool (B, C, H, W) -> (B, C); vectors pass through."""
    return feature.flatten(2).mean(-1) if feature.dim() == 4 else feature.flatten(1)


def layer_output(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The output of one named module for input `x` (the whole forward runs)."""
    with FeatureTap(model, [layer]) as tap:
        return tap.run(lambda: model(x)).pop()[layer]


def output_shapes(model: nn.Module, run: Callable[[], object]) -> list[tuple[str, str, tuple[int, ...] | None]]:
    """(name, type, output shape) of every submodule, in registration order, from one forward pass."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(_m, _i, o, name=name):
            t = first_tensor(o)
            if t is not None:
                shapes[name] = tuple(t.shape)

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return [(n, type(m).__name__, shapes.get(n)) for n, m in model.named_modules() if n]
