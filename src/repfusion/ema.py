"""An exponential moving average of the trainable weights, with a decay warm-up (replaces Lightning's
`EMAWeightAveraging`, which had neither a warm-up nor a way to leave the frozen teacher out).

    decay_n = min(decay, (1 + n) / (10 + n)),   shadow <- decay_n * shadow + (1 - decay_n) * weights

with n the number of updates so far (one per optimiser step). Without the warm-up a 0.999 average over
168 steps is still 85 % the random initialisation (a fine-tune evaluated at 9.7 % instead of 93.8 %);
with it the average always leans on the latest weights early on, so short runs are never much worse
than no EMA, and long runs get the full decay.

What is averaged is `module.ema_tensors()` (see `Stage.ema_tensors`): trainable parameters plus
BatchNorm running statistics of the parts that train, never a frozen teacher and never other running
statistics (policy baselines, per-t target statistics), which keep their live values. The update is a
single multi-tensor `lerp_` with a host-side decay: no copy of the module, no per-step host sync.

Lifecycle in `Trainer.fit`: the shadow is created at `on_train_start` (after the strategy moved the
module to its device); the averaged weights are swapped in for every validation epoch (so `val/*`
metrics and the `best` checkpoint describe the averaged model) and copied in at the end of training (so
exports and `trainer.test` use them). Checkpoints hold the averaged weights in `state_dict` (what a
user loading a `.ckpt` wants) and the training weights, n and the decay under the `"ema"` key, as
plain tensors and numbers (loadable with `torch.load(weights_only=True)`); `--resume` restores both,
so an interrupted run continues the same average. Under DDP every rank holds the same weights and so
the same average; BatchNorm statistics, which ranks keep apart, are averaged across ranks in the
shadow at every epoch end (and in the module by `AverageNormStats`).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from .errors import RepFusionError

WARMUP = 10  # the warm-up's constant: decay_n = (1 + n) / (WARMUP + n) until it reaches `decay`


def warmup_decay(decay: float, updates: int) -> float:
    """The decay used for update number `updates` (0-based): min(decay, (1 + n) / (10 + n))."""
    return min(decay, (1 + updates) / (WARMUP + updates))


def ema_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """State-dict names -> tensors an EMA of `module` should average.

    Uses `module.ema_tensors()` when the module defines it, else the trainable parameters and the
    BatchNorm running statistics of every child that has a trainable parameter.
    """
    own = getattr(module, "ema_tensors", None)
    return own() if callable(own) else trainable_tensors(module)


def trainable_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters and norm-layer running statistics of the children that train.

    A child without a trainable parameter (a frozen teacher, the augmentation, the metrics) is skipped
    whole, so its buffers are never copied either.
    """
    out: dict[str, torch.Tensor] = {}
    for prefix, child in module.named_children():
        if not any(p.requires_grad for p in child.parameters()):
            continue
        out |= {f"{prefix}.{n}": p for n, p in child.named_parameters() if p.requires_grad}
        for name, sub in child.named_modules():
            if isinstance(sub, nn.modules.batchnorm._NormBase) and sub.track_running_stats:
                path = f"{prefix}.{name}." if name else f"{prefix}."
                out |= {path + b: getattr(sub, b) for b in ("running_mean", "running_var")
                        if getattr(sub, b) is not None}
    return out


class EMA(Callback):
    """Exponential moving average of the trainable weights with a warm-up; see the module docstring.

    Args:
        decay (`float`): the long-run decay in [0, 1), e.g. 0.999.
    """

    def __init__(self, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise RepFusionError(f"trainer.ema_decay must lie in [0, 1) (or be null to turn EMA off), not {decay}.")
        self.decay = decay
        self.updates = 0  # n: updates applied so far
        self.last_step = 0  # trainer.global_step at the last update (one update per optimiser step)
        self.names: list[str] = []
        self.live: list[torch.Tensor] = []  # views of the module's tensors (detached)
        self.shadow: list[torch.Tensor] = []  # the average, one tensor per name
        self.statistics: list[int] = []  # positions of norm-layer statistics (buffers), which ranks keep apart
        self.swapped = False  # True while the module holds the average (validation)
        self._restored: dict[str, torch.Tensor] | None = None
        self.final_training: dict[str, torch.Tensor] = {}  # the raw weights at the end of training

    # -- the average ---------------------------------------------------------------------------------
    @property
    def current_decay(self) -> float:
        return warmup_decay(self.decay, self.updates)

    @torch.no_grad()
    def update(self) -> None:
        """shadow <- shadow + (1 - decay_n) * (weights - shadow), one multi-tensor op."""
        if self.shadow:
            torch._foreach_lerp_(self.shadow, self.live, 1.0 - self.current_decay)
        self.updates += 1

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the module's weights and the average in place (optimiser references stay valid)."""
        if not self.shadow:
            return
        held = [t.clone() for t in self.live]
        torch._foreach_copy_(self.live, self.shadow)
        torch._foreach_copy_(self.shadow, held)
        self.swapped = not self.swapped

    def averaged(self) -> dict[str, torch.Tensor]:
        """name -> averaged tensor, wherever it currently lives."""
        return dict(zip(self.names, self.live if self.swapped else self.shadow))

    def training_weights(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.shadow if self.swapped else self.live))

    # -- Lightning hooks -----------------------------------------------------------------------------
    @torch.no_grad()
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Bind to the module's tensors now that they sit on their final device and memory format."""
        tensors = ema_tensors(pl_module)
        self.names = list(tensors)
        self.statistics = [i for i, t in enumerate(tensors.values()) if not isinstance(t, nn.Parameter)]
        self.live = [t.detach() for t in tensors.values()]
        self.shadow = [t.clone() for t in self.live]
        if self._restored is not None:
            for name, shadow in zip(self.names, self.shadow):
                if name in self._restored:
                    shadow.copy_(self._restored[name])
            self._restored = None
        self.swapped = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step > self.last_step:  # an optimiser step happened (not an accumulation batch)
            self.update()
            self.last_step = trainer.global_step

    @torch.no_grad()
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Average the shadow's BatchNorm statistics across ranks (one all-reduce), so every rank's average and
        a checkpoint written by rank 0 agree (the weights agree already: DDP keeps them in step)."""
        if trainer.world_size < 2 or not self.statistics:
            return
        shadow = [self.averaged()[self.names[i]] for i in self.statistics]
        flat = torch.cat([t.reshape(-1).float() for t in shadow])
        flat = trainer.strategy.reduce(flat, reduce_op="mean")
        torch._foreach_copy_(shadow, [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in shadow]),
                                                                             shadow)])

    def _fitting(self, trainer: pl.Trainer) -> bool:
        return bool(self.shadow) and trainer.state.fn == "fit" and not trainer.sanity_checking

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._fitting(trainer) and not self.swapped:
            self.swap()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._fitting(trainer) and self.swapped:
            self.swap()

    @torch.no_grad()
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The module keeps the average from here on: export and `trainer.test` use it. The raw weights are
        kept in `final_training`, so a runner can validate both and keep the better (`keep_better`)."""
        if self.shadow:
            self.final_training = {k: v.detach().clone() for k, v in self.training_weights().items()}
        if self.shadow and not self.swapped:
            torch._foreach_copy_(self.live, self.shadow)
        self.shadow, self.live, self.names, self.statistics, self.swapped = [], [], [], [], False

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.swapped:  # an interrupted validation leaves the training weights in place
            self.swap()

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        """state_dict gets the average; the training weights, n and the decay go under "ema"."""
        if not self.shadow:
            return
        state = checkpoint.get("state_dict", {})
        averaged, training = self.averaged(), self.training_weights()
        kept = [name for name in self.names if name in state]
        for name in kept:
            state[name] = averaged[name].detach()
        checkpoint["ema"] = {"decay": self.decay, "updates": self.updates, "last_step": self.last_step,
                             "training_weights": {name: training[name].detach() for name in kept}}

    @torch.no_grad()
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        """The module was just loaded with the average: keep it for the shadow, put the training weights back.

        A checkpoint written without EMA starts a fresh average (n = 0) from its weights.
        """
        saved = checkpoint.get("ema")
        if not saved:
            self.updates, self.last_step, self._restored = 0, int(checkpoint.get("global_step", 0)), None
            return
        current = pl_module.state_dict()
        training = saved["training_weights"]
        self._restored = {name: current[name].detach().clone() for name in training if name in current}
        pl_module.load_state_dict(training, strict=False)
        self.updates, self.last_step = int(saved["updates"]), int(saved["last_step"])


def final_raw_weights(trainer: pl.Trainer, ckpt_path: str | None = None) -> dict[str, torch.Tensor]:
    """The raw (not averaged) weights at the end of training: from the EMA callback after `fit`, or from the
    final checkpoint's "ema" entry when training had already finished (a kill during the export)."""
    ema = next((c for c in trainer.callbacks if isinstance(c, EMA)), None)  # type: ignore[attr-defined]
    if ema is None:
        return {}
    if ema.final_training:
        return ema.final_training
    if ckpt_path is not None:
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=True).get("ema") or {}
        return dict(saved.get("training_weights", {}))
    return {}


@torch.no_grad()
def keep_better(module: nn.Module, raw: dict[str, torch.Tensor], score: Any, mode: str) -> str:
    """Validate the averaged weights the module holds and the raw ones; keep the better on the validation split.

    timm's practice: an average over a short run can lag the weights it averages (a 4-epoch digits fine-tune
    lost 5 points to no EMA), so neither is assumed better. `score()` returns the monitored validation metric
    of the module as it stands; `mode` is max or min. Returns which was kept: "ema" or "raw".
    """
    if not raw:
        return "ema"
    state = module.state_dict()
    averaged = {name: state[name].detach().clone() for name in raw if name in state}
    ema_score = float(score())
    module.load_state_dict(raw, strict=False)
    raw_score = float(score())
    raw_wins = raw_score > ema_score if mode == "max" else raw_score < ema_score
    if not raw_wins:
        module.load_state_dict(averaged, strict=False)
    return "raw" if raw_wins else "ema"
