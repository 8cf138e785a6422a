"""What the teacher knows at each t: linear-probe accuracy, effective rank and singular-value spectrum
of pooled features, in clean and noised modes (the paper's section 3 analysis), for one or more layers.

Per layer and mode it also reports how much of the pooled feature's variance over a set of t values is
explained by t (the between-t variance of the per-t mean features) rather than by the image: in clean
mode t enters only through the time embedding, so a layer whose variance is mostly t hands a student,
which never sees t, a target it cannot predict from the image. This helps choose a layer and a mode."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader, Dataset

from ..features import pooled
from ..io import write_json, write_text
from ..teachers import DiffusionTeacher


@dataclass
class ProbeConfig:
    timesteps: list[int] = field(default_factory=lambda: [0, 50, 100, 200, 400, 600, 800, 999])
    modes: list[str] = field(default_factory=lambda: ["clean", "noised"])
    layers: list[str] | None = None  # null: the teacher's own default_layer, the one default there is
    batch_size: int = 256
    max_iter: int = 2000
    seed: int = 0


@torch.no_grad()
def pooled_features(teacher: DiffusionTeacher, dataset: Dataset, t: int, mode: str, layers: Sequence[str],
                    batch_size: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Spatially averaged teacher features of every image at each layer (one forward pass), and labels."""
    generator = torch.Generator().manual_seed(seed)
    feats: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
    labels = []
    for images, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x = images.float() / 255  # [0, 1]: the teacher maps its input itself
        steps = torch.full((len(x),), t, dtype=torch.long)
        # the noise lives where the denoiser works (latents for latent and DiT teachers), drawn from `generator`
        out = teacher(x, steps, tuple(layers), mode, labels=torch.as_tensor(y), generator=generator)
        for layer in layers:
            feats[layer].append(pooled(out[layer]).numpy())
        labels.append(np.asarray(y))
    return {layer: np.concatenate(f) for layer, f in feats.items()}, np.concatenate(labels)


def variance_shares(features_by_t: Sequence[np.ndarray]) -> tuple[float, float]:
    """(share explained by t, share explained by the image) of the total feature variance.

    features_by_t: one (N, C) array per t, the same N images in each. Total variance (summed over
    channels) = between-t variance of the per-t means + mean within-t variance across images (which in
    noised mode includes the noise); the two shares add up to 1.
    """
    stacked = np.stack([np.asarray(f, dtype=np.float64) for f in features_by_t])  # (T, N, C)
    per_t = stacked.mean(1, keepdims=True)
    between = float(((per_t - stacked.mean((0, 1), keepdims=True)) ** 2).sum(-1).mean())
    within = float(((stacked - per_t) ** 2).sum(-1).mean())
    total = between + within
    return (between / total, within / total) if total > 0 else (0.0, 0.0)


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


@dataclass
class ProbeGap:
    """Per layer, at one (mode, t): the validation probe of a trained teacher and of a random-weight one of its
    architecture (what the trained weights know beyond the architecture), with their pooled training features."""

    trained: dict[str, float]
    random: dict[str, float]
    features: dict[str, np.ndarray]
    random_features: dict[str, np.ndarray]

    def gap(self, layer: str) -> float:
        return self.trained[layer] - self.random[layer]


def probe_gap(teacher: DiffusionTeacher, random_teacher: DiffusionTeacher, train: Dataset, val: Dataset, t: int,
              mode: str, layers: Sequence[str], max_iter: int = 1000) -> ProbeGap:
    """Both teachers' pooled features on the same images with the same noise (seeds 0 and 1), and a linear probe
    per layer fitted on `train`, scored on `val`."""
    found = {}
    for name, model in (("trained", teacher), ("random", random_teacher)):
        fit, y_fit = pooled_features(model, train, t, mode, layers, 256, 0)
        score, y_score = pooled_features(model, val, t, mode, layers, 256, 1)
        found[name] = (fit, {layer: linear_probe((fit[layer], y_fit), (score[layer], y_score), max_iter)
                             for layer in layers})
    return ProbeGap(found["trained"][1], found["random"][1], found["trained"][0], found["random"][0])


def run_probe(teacher: DiffusionTeacher, train_set: Dataset, test_set: Dataset, cfg: ProbeConfig, out: Path,
              log=print) -> list[dict]:
    """Probe every (layer, mode, t); write probe.json, probe.md and probe.png to `out`; return the rows."""
    cfg = replace(cfg, layers=list(cfg.layers or [teacher.default_layer]))
    rows, spectra, variance = [], {}, []
    for mode in cfg.modes:
        train_by_t: dict[str, list[np.ndarray]] = {layer: [] for layer in cfg.layers}
        for t in cfg.timesteps:
            train, train_labels = pooled_features(teacher, train_set, t, mode, cfg.layers, cfg.batch_size, cfg.seed)
            test, test_labels = pooled_features(teacher, test_set, t, mode, cfg.layers, cfg.batch_size, cfg.seed + 1)
            for layer in cfg.layers:
                accuracy = linear_probe((train[layer], train_labels), (test[layer], test_labels), cfg.max_iter)
                rank, singular = effective_rank(train[layer])
                spectra[(layer, mode, t)] = singular
                train_by_t[layer].append(train[layer])
                rows.append({"layer": layer, "mode": mode, "t": t, "probe_accuracy": accuracy,
                             "effective_rank": rank, "feature_dim": int(train[layer].shape[1])})
                log(f"  {layer} {mode:>7} t={t:<4} probe accuracy {accuracy:.4f}  effective rank {rank:.1f}")
        for layer in cfg.layers:
            t_share, image_share = variance_shares(train_by_t[layer])
            variance.append({"layer": layer, "mode": mode, "t_share": t_share, "image_share": image_share})
            log(f"  {layer} {mode:>7} variance explained by t {t_share:.1%}, by the image {image_share:.1%}")
    order = {layer: i for i, layer in enumerate(cfg.layers)}
    rows.sort(key=lambda r: order[r["layer"]])  # stable: per layer, then mode, then t
    variance.sort(key=lambda r: order[r["layer"]])
    write_json(out / "probe.json", {"layers": cfg.layers, "teacher": teacher.source, "timesteps": cfg.timesteps,
                                    "rows": rows, "variance": variance})
    lines = [f"# Teacher probe: {teacher.source}, layer{'s' if len(cfg.layers) > 1 else ''} "
             + ", ".join(f"`{layer}`" for layer in cfg.layers), "",
             f"Linear probe: logistic regression on standardised, spatially averaged features; "
             f"{len(train_set)} train / {len(test_set)} test images.", "",
             "| layer | mode | t | probe accuracy | effective rank |", "|---|---|---|---|---|"]
    lines += [f"| `{r['layer']}` | {r['mode']} | {r['t']} | {r['probe_accuracy']:.4f} | {r['effective_rank']:.1f} |"
              for r in rows]
    lines += ["", f"Share of the pooled feature's variance over t in {{{', '.join(map(str, cfg.timesteps))}}} "
              "explained by t (between-t variance of the per-t mean feature) and by the image (within-t "
              "variance; in noised mode it includes the noise). A student never sees t, so a target whose "
              "variance is mostly t is mostly unpredictable for it.", "",
              "| layer | mode | explained by t | explained by the image |", "|---|---|---|---|"]
    lines += [f"| `{v['layer']}` | {v['mode']} | {v['t_share']:.1%} | {v['image_share']:.1%} |" for v in variance]
    write_text(out / "probe.md", "\n".join(lines) + "\n")
    plot_probe(rows, spectra, out)
    return rows


def plot_probe(rows: Sequence[dict], spectra: dict, out: Path) -> None:
    from .plots import plt, save_figure

    fig, (acc, rank, spec) = plt.subplots(1, 3, figsize=(13, 3.4))
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    for layer in layers:
        for mode in sorted({r["mode"] for r in rows}):
            mine = [r for r in rows if r["mode"] == mode and r["layer"] == layer]
            label = mode if len(layers) == 1 else f"{layer} ({mode})"
            acc.plot([r["t"] for r in mine], [r["probe_accuracy"] for r in mine], marker="o", label=label)
            rank.plot([r["t"] for r in mine], [r["effective_rank"] for r in mine], marker="o", label=label)
    acc.set(xlabel="t", ylabel="linear-probe accuracy", title="what the teacher knows at t")
    rank.set(xlabel="t", ylabel="effective rank", title="feature effective rank")
    acc.legend(), rank.legend()
    cmap = plt.get_cmap("viridis")
    first = [k for k in spectra if k[0] == layers[0]]  # the spectrum panel shows the first layer
    noised = sorted((k for k in first if k[1] == "noised"), key=lambda k: k[2]) or sorted(first, key=lambda k: k[2])
    for i, key in enumerate(noised):
        s = spectra[key]
        spec.semilogy(s / s[0], color=cmap(i / max(1, len(noised) - 1)), label=f"t={key[2]}")
    spec.set(xlabel="index", ylabel="singular value / largest", title=f"spectrum ({noised[0][1]})")
    spec.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out / "probe.png")
    plt.close(fig)
