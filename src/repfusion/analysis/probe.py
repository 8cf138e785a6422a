"""What the teacher knows at each t: linear-probe accuracy, effective rank and singular-value spectrum
of pooled features, in clean and noised modes (the paper's section 3 analysis)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader, Dataset

from ..distill.losses import pooled
from ..io import write_json, write_text
from ..teachers import DEFAULT_TEACHER_LAYER, DiffusionTeacher


@dataclass
class ProbeConfig:
    timesteps: list[int] = field(default_factory=lambda: [0, 50, 100, 200, 400, 600, 800, 999])
    modes: list[str] = field(default_factory=lambda: ["clean", "noised"])
    layer: str = DEFAULT_TEACHER_LAYER
    batch_size: int = 256
    max_iter: int = 2000
    seed: int = 0


@torch.no_grad()
def pooled_features(teacher: DiffusionTeacher, dataset: Dataset, t: int, mode: str, layer: str,
                    batch_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Spatially averaged teacher features of every image (pixels mapped to [-1, 1]), and labels."""
    generator = torch.Generator().manual_seed(seed)
    feats, labels = [], []
    for images, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x = images.float() / 127.5 - 1
        steps = torch.full((len(x),), t, dtype=torch.long)
        noise = torch.randn(x.shape, generator=generator)
        feats.append(pooled(teacher(x, steps, (layer,), mode, noise=noise)[layer]).numpy())
        labels.append(np.asarray(y))
    return np.concatenate(feats), np.concatenate(labels)


def effective_rank(features: np.ndarray) -> tuple[float, np.ndarray]:
    """exp(entropy of the normalised singular values) of the centred feature matrix (Roy & Vetterli)."""
    centred = features - features.mean(0, keepdims=True)
    singular = np.linalg.svd(centred, compute_uv=False)
    p = singular / max(singular.sum(), 1e-12)
    p = p[p > 0]
    return float(math.exp(-(p * np.log(p)).sum())), singular


def linear_probe(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], max_iter: int) -> float:
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    model.fit(*train)
    return float(model.score(*test))


def run_probe(teacher: DiffusionTeacher, train_set: Dataset, test_set: Dataset, cfg: ProbeConfig, out: Path,
              log=print) -> list[dict]:
    rows, spectra = [], {}
    for mode in cfg.modes:
        for t in cfg.timesteps:
            train = pooled_features(teacher, train_set, t, mode, cfg.layer, cfg.batch_size, cfg.seed)
            test = pooled_features(teacher, test_set, t, mode, cfg.layer, cfg.batch_size, cfg.seed + 1)
            accuracy = linear_probe(train, test, cfg.max_iter)
            rank, singular = effective_rank(train[0])
            spectra[(mode, t)] = singular
            rows.append({"mode": mode, "t": t, "probe_accuracy": accuracy, "effective_rank": rank,
                         "feature_dim": int(train[0].shape[1])})
            log(f"  {mode:>7} t={t:<4} probe accuracy {accuracy:.4f}  effective rank {rank:.1f}")
    write_json(out / "probe.json", {"layer": cfg.layer, "teacher": teacher.source, "rows": rows})
    lines = [f"# Teacher probe: {teacher.source}, layer `{cfg.layer}`", "",
             f"Linear probe: logistic regression on standardised, spatially averaged features; "
             f"{len(train_set)} train / {len(test_set)} test images.", "",
             "| mode | t | probe accuracy | effective rank |", "|---|---|---|---|"]
    lines += [f"| {r['mode']} | {r['t']} | {r['probe_accuracy']:.4f} | {r['effective_rank']:.1f} |" for r in rows]
    write_text(out / "probe.md", "\n".join(lines) + "\n")
    plot_probe(rows, spectra, out)
    return rows


def plot_probe(rows: Sequence[dict], spectra: dict, out: Path) -> None:
    from .plots import plt, save_figure

    fig, (acc, rank, spec) = plt.subplots(1, 3, figsize=(13, 3.4))
    for mode in sorted({r["mode"] for r in rows}):
        mine = [r for r in rows if r["mode"] == mode]
        acc.plot([r["t"] for r in mine], [r["probe_accuracy"] for r in mine], marker="o", label=mode)
        rank.plot([r["t"] for r in mine], [r["effective_rank"] for r in mine], marker="o", label=mode)
    acc.set(xlabel="t", ylabel="linear-probe accuracy", title="what the teacher knows at t")
    rank.set(xlabel="t", ylabel="effective rank", title="feature effective rank")
    acc.legend(), rank.legend()
    cmap = plt.get_cmap("viridis")
    noised = sorted((k for k in spectra if k[0] == "noised"), key=lambda k: k[1]) or sorted(spectra)
    for i, key in enumerate(noised):
        s = spectra[key]
        spec.semilogy(s / s[0], color=cmap(i / max(1, len(noised) - 1)), label=f"t={key[1]}")
    spec.set(xlabel="index", ylabel="singular value / largest", title=f"spectrum ({noised[0][0]})")
    spec.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out / "probe.png")
    plt.close(fig)
