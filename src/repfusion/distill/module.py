"""The RepFusion distillation stage as one LightningModule whose training step reads like the paper.

    t ~ pi(t | x)                          (or fixed / uniform / decaying)
    L = kd_weight * D(adapt(f_S(x)), f_T(x, t)) + CE(head(f_T(x, t)), y) + L_policy
    L_policy = -mean(log pi(t|x) * r) - lambda * H(pi(.|x)),   r = -CE(head(f_T(x, t)), y)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..data.augment import Augment
from ..data.device_data import pool_images, pool_labels
from ..features import FeatureTap, pooled
from ..teachers import DiffusionTeacher
from ..training import OptimConfig
from ..stage import Stage
from ..errors import RepFusionError
from ..run import nonfinite_message
from ..run.loggers import log_histogram
from .cache import CachedTargets, StoredViews
from .parts import Objective, StudentTap, TeacherTap, TimestepPolicy
from .timesteps import NonFiniteError, ReinforcedTimestep

HISTOGRAM_BINS = 20


def fused_target(maps: dict[str, torch.Tensor], layers: Sequence[str]) -> torch.Tensor:
    """One layer: its map. Several: their pooled features side by side, (B, sum C): a target that carries what
    each depth of the teacher knows (per-channel standardisation then gives every layer an equal voice)."""
    if len(layers) == 1:
        return maps[layers[0]]
    return torch.cat([pooled(maps[layer]) for layer in layers], dim=1)


def teacher_target(teacher: DiffusionTeacher, images01: torch.Tensor, t: torch.Tensor, layers: Sequence[str],
                   noise_mode: str = "clean", labels: torch.Tensor | None = None, truncate: bool = True) -> torch.Tensor:
    """f_T(x, t) before any standardisation: the teacher's layer(s) for float [0, 1] images (the teacher maps
    them to its own range), one map or the fused pooled features of several layers."""
    teacher.eval()  # Lightning restores saved per-module modes directly, bypassing train()
    maps = teacher(images01, t, layers, noise_mode, truncate=truncate, labels=labels)
    return fused_target(maps, layers)


class Distillation(Stage):
    """Receives its built parts (`distill.parts`: teacher tap, student tap, objective, timestep policy) with the
    augmentation and the optimiser settings; the teacher is frozen, out of the optimiser and out of checkpoints."""

    def __init__(self, teacher: TeacherTap, student: StudentTap, objective: Objective, policy: TimestepPolicy,
                 augment: Augment, optim: OptimConfig) -> None:
        super().__init__(augment, optim)
        # registered in this order (and under these names) since the first version: the state-dict keys and the
        # optimiser's parameter order that saved checkpoints resume with
        self.teacher = teacher.teacher
        self.student = student.student
        self.distill_loss = objective.distill_loss
        self.timesteps = policy.strategy
        self.reward_head = policy.reward_head
        self.normalize = student.normalize
        self.teacher_layers = tuple(teacher.layers)
        self.student_layer = student.layer
        self.noise_mode, self.kd_weight = teacher.noise_mode, objective.kd_weight
        self.target_norm = teacher.target_norm
        self.head_uniform_t = bool(getattr(self.timesteps.cfg, "head_uniform_t", False)) and isinstance(
            self.timesteps, ReinforcedTimestep)
        self.truncate_teacher = True  # False re-creates the reference: full UNet forward, read by a hook
        # DDP's documented opt-out: the frozen teacher is neither broadcast nor bucketed for all-reduce.
        self._ddp_params_and_buffers_to_ignore = [f"teacher.{n}" for n, _ in self.teacher.named_parameters()] + [
            f"teacher.{n}" for n, _ in self.teacher.named_buffers()]
        self.t_counts = torch.zeros(HISTOGRAM_BINS)  # this epoch's draws, kept on the training device
        self.t_history: list[list[float]] = []
        self.t_draws: list[list[float]] = []  # each finished epoch's draws per bin (TensorBoard's histogram)
        self.t_steps: list[int] = []  # and the optimiser step of its train/ rows (-1: unknown, an older checkpoint)
        self._student_tap: FeatureTap | None = None  # hooks registered once, on the first student call
        self.cache_views, self.cache_seed = 0, 0
        self.cache: CachedTargets | None = None
        self.cache_labels: torch.Tensor | None = None
        self._epoch_draw: tuple[int, torch.Tensor, torch.Tensor] | None = None  # (epoch, order, views)
        self.crop_padding, self.flip = augment.crop_padding, augment.flip

    def enable_cache(self, views: int, seed: int) -> None:
        """Teacher targets computed once per training image and stored view (`distill.cache`) at the start of
        training, instead of once per step: with a fixed t and clean input they are the same every epoch up to
        the augmentation. Each epoch is then a seeded permutation of the training images, each in one of its
        `views` stored augmentations; the loader's batch only counts the steps."""
        if self.timesteps.cfg.strategy != "fixed" or self.noise_mode != "clean":
            raise RepFusionError(f"distill cache_views needs a fixed t and clean input (the teacher's output must not "
                                 f"change between epochs), not strategy {self.timesteps.cfg.strategy} with "
                                 f"{self.noise_mode} input; set cache_views to 0.")
        self.cache_views, self.cache_seed = views, seed

    def on_train_start(self) -> None:
        if self.cache_views and self.cache is None:
            dataset = self.trainer.datamodule.train_set
            images, labels = pool_images(dataset).to(self.device), pool_labels(dataset).to(self.device)
            views = StoredViews(len(images), self.cache_views, self.crop_padding, self.flip, self.cache_seed)
            t = self.timesteps.cfg.t

            def raw_target(images01: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
                times = torch.full((len(images01),), t, dtype=torch.long, device=images01.device)
                return teacher_target(self.teacher, images01, times, self.teacher_layers, self.noise_mode,
                                      labels[index.to(labels.device)], self.truncate_teacher)

            self.cache, self.cache_labels = CachedTargets(images, views, raw_target), labels

    def cached_batch(self, batch_idx: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images, labels, raw teacher targets) of step `batch_idx` of this epoch: a seeded permutation, so a
        resumed epoch continues with the same images."""
        assert self.cache is not None and self.cache_labels is not None
        if self._epoch_draw is None or self._epoch_draw[0] != self.current_epoch:  # drawn once an epoch
            generator = torch.Generator().manual_seed(self.cache_seed * 1_000_003 + self.current_epoch)
            self._epoch_draw = (self.current_epoch, torch.randperm(len(self.cache), generator=generator),
                                torch.randint(0, self.cache.views.views, (len(self.cache),), generator=generator))
        _, order, view = self._epoch_draw
        index = order[batch_idx * size:(batch_idx + 1) * size]
        if len(index) == 0:  # more steps than images (limit_train_batches as a count): wrap around
            index = order[:size]
        images, targets = self.cache.batch(index, view[index])
        return images, self.cache_labels[index.to(self.cache_labels.device)], targets

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.cache is not None and self.trainer.training:  # the batch only counts the step: no augmentation
            return batch
        return super().on_after_batch_transfer(batch, dataloader_idx)

    def trainable_parameters(self):
        """One optimiser over student, adapter, head and policy (the paper); the policy's group may be scaled."""
        policy = [p for n, p in self.named_parameters() if n.startswith("timesteps.")]
        rest = [p for n, p in self.named_parameters() if not n.startswith(("teacher.", "timesteps."))]
        scale = getattr(self.timesteps.cfg, "policy_lr_scale", 1.0)
        groups = [{"params": rest}]
        if policy:
            groups.append({"params": policy, "lr": self.optim.lr * scale})
        return groups

    def compile_targets(self) -> list[nn.Module]:
        """What `trainer.compile` compiles in place: the student. Not the teacher: its truncation (a forward hook
        that stops the UNet by raising) loses the tapped feature under inductor (measured on a CPU)."""
        return [self.student]

    def student_features(self, x: torch.Tensor) -> torch.Tensor:
        """The student's hooked layer; the tap is resolved and hooked once, not per call."""
        if self._student_tap is None:
            self._student_tap = FeatureTap(self.student, [self.student_layer]).__enter__()
        self.student(x)
        return self._student_tap.pop()[self.student_layer]

    def teacher_features(self, images01: torch.Tensor, t: torch.Tensor,
                         labels: torch.Tensor | None = None) -> torch.Tensor:
        """The distillation target f_T(x, t): the hooked teacher layer, standardised per t-bin if configured.

        `labels` reach class-conditional teachers that read the dataset's labels (ADM, DiT); others ignore them.
        """
        feature = teacher_target(self.teacher, images01, t, self.teacher_layers, self.noise_mode, labels,
                                 self.truncate_teacher)
        return feature if self.target_norm is None else self.target_norm(feature, t)

    def epoch_progress(self, batch_idx: int) -> float:
        batches = self.trainer.num_training_batches if self._trainer is not None else 0
        batches = batches if isinstance(batches, int) and batches > 0 else 1
        return self.current_epoch + batch_idx / batches

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        cached = None
        if self.cache is not None:
            images, labels, cached = self.cached_batch(batch_idx, len(images))
        epoch = self.epoch_progress(batch_idx)
        student_input = self.normalize(images)
        # 1. choose t per image, 2. read the teacher at t and the student
        try:
            draw = self.timesteps.sample(student_input, epoch)
        except NonFiniteError as e:
            raise RepFusionError(nonfinite_message(self.trainer, str(e))) from None
        if cached is None:
            teacher_feature = self.teacher_features(images, draw.t, labels)
        else:
            teacher_feature = cached if self.target_norm is None else self.target_norm(cached, draw.t)
        student_feature = self.student_features(student_input)
        # 3. distil, 4. train the task head, 5. REINFORCE with r = -head loss
        distill = self.distill_loss(student_feature, teacher_feature)
        head = self.reward_head(teacher_feature, student_feature, labels)
        head_losses = [head.per_image_loss]
        if self.head_uniform_t:  # the head also sees t the policy avoids, so its reward is fair across t
            uniform = torch.randint_like(draw.t, self.teacher.num_timesteps)
            head_losses.append(self.reward_head(self.teacher_features(images, uniform, labels), student_feature,
                                                labels).per_image_loss)
        head_loss = torch.cat(head_losses).mean()
        policy, policy_logs = self.timesteps.policy_loss(draw, -head.per_image_loss.detach(), epoch)
        loss = self.kd_weight * distill + head_loss + policy

        if self.t_counts.device != draw.t.device:
            self.t_counts = self.t_counts.to(draw.t.device)
        self.t_counts += torch.histc(draw.t.float(), HISTOGRAM_BINS, 0, self.teacher.num_timesteps)  # no host copy
        logs = {"train/loss": loss, "train/distill": distill, "train/head_loss": head_loss, "train/policy": policy,
                "train/t_mean": draw.t.float().mean()}
        logs |= {f"train/distill_{k}": v for k, v in self.distill_loss.terms.items()}
        logs |= {f"train/{k}": v for k, v in policy_logs.items()}
        if head.correct is not None:
            logs["train/head_acc"] = head.correct.float().mean()
        self.log_dict(logs, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(images))
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, logger=False)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        student_input = self.normalize(images)
        t = self.timesteps.greedy(student_input, float(self.current_epoch))
        teacher_feature = self.teacher_features(images, t, labels)
        student_feature = self.student_features(student_input)
        head = self.reward_head(teacher_feature, student_feature, labels)
        logs = {"val/distill": self.distill_loss(student_feature, teacher_feature), "val/t_mean": t.float().mean()}
        if head.correct is not None:
            logs["val/head_acc"] = head.correct.float().mean()
        self.log_dict(logs, prog_bar=True, sync_dist=True, batch_size=len(images))

    def on_train_epoch_end(self) -> None:
        counts = self.t_counts.to(self.device)
        counts = self.trainer.strategy.reduce(counts, reduce_op="sum") if self.trainer.world_size > 1 else counts
        total = counts.sum().clamp(min=1)
        self.t_history.append((counts / total).cpu().tolist())
        self.t_draws.append(counts.cpu().tolist())
        self.t_steps.append(max(self.trainer.global_step - 1, 0))  # where Lightning logs the epoch's train/ rows
        self.t_counts.zero_()
        log_histogram(self.trainer, "train/t", self.t_draws[-1], self.teacher.num_timesteps, self.t_steps[-1])

    def replay_summaries(self) -> None:
        """A resume's TensorBoard folder gets back each finished epoch's timestep histogram, at its step. An older
        checkpoint's epochs (no counts or steps saved) come back as their shares, at the step the epoch ended if
        every epoch had the same number of optimiser steps."""
        per_epoch = self.trainer.num_training_batches
        if isinstance(per_epoch, (int, float)) and math.isfinite(per_epoch) and per_epoch > 0:
            per_epoch = math.ceil(per_epoch / self.trainer.accumulate_grad_batches)
        else:  # only tests: the run finished, so its steps are all its epochs'
            per_epoch = self.trainer.global_step / max(len(self.t_draws), 1)
        for epoch, (counts, step) in enumerate(zip(self.t_draws, self.t_steps)):
            step = step if step >= 0 else max(round((epoch + 1) * per_epoch) - 1, 0)
            log_histogram(self.trainer, "train/t", counts, self.teacher.num_timesteps, step)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["t_history"] = self.t_history
        checkpoint["t_draws"], checkpoint["t_steps"] = self.t_draws, self.t_steps
        checkpoint["t_counts"] = self.t_counts.cpu().clone()  # a mid-epoch checkpoint keeps the epoch's draws so far

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.t_history = [list(map(float, row)) for row in checkpoint.get("t_history", [])]
        # an older checkpoint saved neither: its epochs keep their shares, their steps are estimated on replay
        self.t_draws = [list(map(float, row)) for row in checkpoint.get("t_draws", self.t_history)]
        self.t_steps = [int(s) for s in checkpoint.get("t_steps", [-1] * len(self.t_history))]
        if "t_counts" in checkpoint and self.global_rank == 0:  # rank 0's draws; the epoch end sums the ranks
            self.t_counts = checkpoint["t_counts"].detach().cpu().float().clone()
