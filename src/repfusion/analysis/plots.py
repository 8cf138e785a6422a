"""Figures a person would rather look at than a CSV; each is written atomically as PNG."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..io import save_figure  # noqa: E402


def read_metrics(path: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.csv (Lightning CSVLogger) as {column: [(epoch, value), ...]}."""
    series: dict[str, list[tuple[int, float]]] = {}
    if not path.exists():
        return series
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            epoch = int(float(row.get("epoch") or 0))
            for key, value in row.items():
                if key in ("epoch", "step") or value in ("", None):
                    continue
                series.setdefault(key, []).append((epoch, float(value)))
    return series


def plot_curves(metrics_csv: Path, out: Path, keys: Sequence[str] | None = None, title: str = "") -> Path | None:
    series = read_metrics(metrics_csv)
    keys = [k for k in (keys or sorted(series)) if k in series and "lr" not in k]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        xs, ys = zip(*series[key])
        ax.plot(xs, ys, marker=".")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("epoch")
    fig.suptitle(title)
    fig.tight_layout()
    path = save_figure(fig, out)
    plt.close(fig)
    return path


def plot_timestep_history(history: Sequence[Sequence[float]], num_timesteps: int, out: Path,
                          title: str = "sampled timesteps per epoch") -> Path | None:
    """Heat map (epoch x t bin) of how often each timestep range was sampled, plus the last epoch."""
    if not history:
        return None
    bins = len(history[0])
    fig, (heat, last) = plt.subplots(1, 2, figsize=(9, 3.2), gridspec_kw={"width_ratios": [2, 1]})
    image = heat.imshow(list(zip(*history)), aspect="auto", origin="lower", cmap="viridis",
                        extent=(0.5, len(history) + 0.5, 0, num_timesteps))
    heat.set_xlabel("epoch")
    heat.set_ylabel("t")
    heat.set_title(title, fontsize=9)
    fig.colorbar(image, ax=heat, label="fraction")
    width = num_timesteps / bins
    last.bar([width * (i + 0.5) for i in range(bins)], history[-1], width=width * 0.9)
    last.set_xlabel("t")
    last.set_title("last epoch", fontsize=9)
    fig.tight_layout()
    path = save_figure(fig, out)
    plt.close(fig)
    return path


def plot_arms(runs: dict[str, Sequence[float]], out: Path, title: str, ylabel: str = "test top-1 (%)") -> Path:
    """Mean ± std bar per arm with every run as a dot: the comparison of scratch and RepFusion inits."""
    import statistics

    names = list(runs)
    means = [statistics.mean(runs[n]) for n in names]
    stds = [statistics.stdev(runs[n]) if len(runs[n]) > 1 else 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.15 * len(names)), 3.4))
    ax.bar(range(len(names)), means, yerr=stds, capsize=5)
    for i, name in enumerate(names):
        ax.scatter([i] * len(runs[name]), runs[name], color="black", s=9, zorder=3)
    ax.set_xticks(range(len(names)), names, rotation=25 if len(names) > 2 else 0, ha="right" if len(names) > 2 else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    path = save_figure(fig, out)
    plt.close(fig)
    return path
