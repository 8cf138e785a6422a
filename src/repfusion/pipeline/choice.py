"""Which teacher layer, input mode and t to distil from, chosen per dataset by a short probe.

Users of DIFT, DDAE, ddpm-segmentation and REPA keep asking which layer and t to use; the answer
depends on the teacher and the data, so the pipeline measures it on a held-out slice instead of
guessing. With labels the score is the linear-probe gap between the trained teacher and a random-weight
one of the same architecture on the validation split: what the diffusion model learned, not what any
convolutional network of that shape gives (on the CIFAR subset that gap picked the decoder's
`up_blocks.0` at clean t = 0, 50 % vs 29 %). Without labels (or with too few) nothing can be scored against a
task, so the choice is the decoder's first block, that CIFAR winner, where the teacher has one: the label-free
score used before, the share of the pooled feature's variance explained by the image rather than by t, preferred
the first encoder block on digits, the layer where the trained teacher is closest to a random one (linear CKA
0.98; the decoder's first block 0.56) and whose distilled student probed 11 points below its random initialisation
(benchmarks/results/choice_label_free_digits.md). Teachers without a decoder (DiT) keep that score. Within the layer,
the t whose features have the largest effective rank.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..analysis.probe import effective_rank, pooled_features, probe_gap, variance_shares
from ..errors import RepFusionError
from ..io import write_json, write_text
from ..teachers import DiffusionTeacher
from .config import LayerChoice

BLOCK = re.compile(r"^(down_blocks|up_blocks|input_blocks|output_blocks|transformer_blocks)\.(\d+)$")


@dataclass
class Choice:
    layer: str
    mode: str
    t: int
    score: str
    reason: str


def candidate_layers(teacher: DiffusionTeacher) -> list[str]:
    """The encoder's last two blocks, the middle block and the decoder's first two: where a UNet's
    features are most abstract; the teacher's default layer when it names none of these."""
    names = [name for name, _, shape in teacher.layer_rows() if shape is not None]
    blocks: dict[str, list[str]] = {}
    for name in names:
        match = BLOCK.match(name)
        if match:
            blocks.setdefault(match.group(1), []).append(name)
    middle = [n for n in names if n in ("mid_block", "middle_block")]
    chosen = [*blocks.get("down_blocks", blocks.get("input_blocks", []))[-2:], *middle,
              *blocks.get("up_blocks", blocks.get("output_blocks", []))[:2]]
    if not chosen and "transformer_blocks" in blocks:
        found = blocks["transformer_blocks"]
        chosen = found[len(found) // 2 - 1: len(found) // 2 + 2]
    return chosen or [teacher.default_layer]


def capped(dataset: Dataset, limit: int, seed: int) -> Dataset:
    if len(dataset) <= limit:
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:limit]
    return Subset(dataset, sorted(order.tolist()))


def check_choice(cfg: LayerChoice, teacher: DiffusionTeacher) -> None:
    bad = [t for t in cfg.timesteps if not 0 <= t < teacher.num_timesteps]
    if not cfg.timesteps or bad:
        raise RepFusionError(f"choice.timesteps must be a list of t in [0, {teacher.num_timesteps}), not "
                             f"{cfg.timesteps}.")
    if not cfg.modes or any(m not in ("clean", "noised") for m in cfg.modes):
        raise RepFusionError(f"choice.modes must list clean and/or noised, not {cfg.modes}.")
    known = {name for name, _, _ in teacher.layer_rows()}
    unknown = [layer for layer in cfg.layers or [] if layer not in known]
    if unknown:
        raise RepFusionError(f"choice.layers names {unknown[0]}, which the teacher does not have; list its layers "
                             f"with: repfusion layers --teacher {teacher.source}")


def choose(teacher: DiffusionTeacher, random_teacher: DiffusionTeacher | None, train: Dataset, val: Dataset,
           cfg: LayerChoice, out: Path, log=print) -> Choice:
    """Probe every candidate (layer, mode, t); write choice.json and choice.md (with why); return the winner."""
    layers = cfg.layers or candidate_layers(teacher)
    # clean input sees t only through the time embedding: its first t stands for all; noised t = 0 is clean
    noised = [t for t in cfg.timesteps if t > 0] or cfg.timesteps[:1]
    grid = [(mode, t) for mode in cfg.modes for t in (noised if mode == "noised" else cfg.timesteps[:1])]
    if len(layers) == 1 and len(grid) == 1:
        mode, t = grid[0]
        return _write(out, Choice(layers[0], mode, t, "given", "one candidate given (choice.layers, "
                                  "choice.timesteps, choice.modes): nothing to choose."), [])
    train, val = capped(train, cfg.max_images, 0), capped(val, cfg.max_images, 1)
    rows = []
    if random_teacher is not None:
        for mode, t in grid:
            probed = probe_gap(teacher, random_teacher, train, val, t, mode, layers)
            for layer in layers:
                trained, rand = probed.trained[layer], probed.random[layer]
                rows.append({"layer": layer, "mode": mode, "t": t, "probe": trained, "random_probe": rand,
                             "gap": trained - rand})
                log(f"   {layer:>18} {mode:>7} t={t:<4} probe {100 * trained:5.1f} %, random teacher "
                    f"{100 * rand:5.1f} %, gap {100 * (trained - rand):+5.1f}")
        best = max(rows, key=lambda r: (r["gap"], -r["t"]))
        choice = Choice(best["layer"], best["mode"], best["t"], f"gap {100 * best['gap']:+.1f} points",
                        f"largest linear-probe gap between the trained and a random-weight teacher on the validation "
                        f"split ({len(train)} labelled training / {len(val)} validation images): "
                        f"{100 * best['probe']:.1f} % vs {100 * best['random_probe']:.1f} %.")
        return _write(out, choice, rows)
    for mode in cfg.modes:
        ts = cfg.timesteps
        by_t = [pooled_features(teacher, train, t, mode, layers, 256, 0)[0] for t in ts]
        for layer in layers:
            _, image_share = variance_shares([f[layer] for f in by_t])
            ranks = [effective_rank(f[layer])[0] for f in by_t]
            rows.append({"layer": layer, "mode": mode, "image_share": image_share, "ranks": dict(zip(ts, ranks)),
                         "t": ts[int(np.argmax(ranks))]})
            log(f"   {layer:>18} {mode:>7} variance explained by the image {100 * image_share:5.1f} %, effective "
                f"rank {max(ranks):.1f} at t={rows[-1]['t']}")
    decoder = decoder_start(layers)
    if decoder is not None:
        best = max((r for r in rows if r["layer"] == decoder), key=lambda r: (r["mode"] == "clean", r["image_share"]))
        choice = Choice(best["layer"], best["mode"], best["t"], "decoder start (too few labels to score)",
                        "no labels, or too few to score a layer, so the decoder's first block, where the trained teacher "
                        "was furthest above a random-weight one on the CIFAR subset (+21 probe points; the encoder "
                        "blocks the label-free variance share prefers were the closest to a random teacher on "
                        "digits, benchmarks/results/choice_label_free_digits.md), and the t with the largest effective "
                        f"rank there ({best['ranks'][best['t']]:.1f}), on {len(train)} training images.")
        return _write(out, choice, rows)
    best = max(rows, key=lambda r: r["image_share"])
    choice = Choice(best["layer"], best["mode"], best["t"], f"image share {100 * best['image_share']:.1f} %",
                    "no labels, so label-free: the largest share of the pooled feature's variance over t in "
                    f"{ts} explained by the image rather than by t ({100 * best['image_share']:.1f} %), and the t "
                    f"with the largest effective rank there ({best['ranks'][best['t']]:.1f}), on "
                    f"{len(train)} training images.")
    return _write(out, choice, rows)


def decoder_start(layers: list[str]) -> str | None:
    """The decoder's first block among `layers` (`up_blocks.0`, ADM's first `output_blocks`), if there is one."""
    found = [(int(m.group(2)), name) for name in layers
             if (m := BLOCK.match(name)) and m.group(1) in ("up_blocks", "output_blocks")]
    return min(found)[1] if found else None


def _write(out: Path, choice: Choice, rows: list[dict]) -> Choice:
    """choice.md first: choice.json marks the stage finished, so a kill between the two loses nothing."""
    lines = [f"# Teacher layer and t: `{choice.layer}`, {choice.mode} input, t = {choice.t}", "", f"Why: {choice.reason}",
             ""]
    if rows and "gap" in rows[0]:
        lines += ["| layer | mode | t | probe (%) | random teacher (%) | gap (points) |", "|---|---|---|---|---|---|"]
        lines += [f"| `{r['layer']}` | {r['mode']} | {r['t']} | {100 * r['probe']:.1f} | {100 * r['random_probe']:.1f} "
                  f"| {100 * r['gap']:+.1f} |" for r in rows]
    elif rows:
        lines += ["| layer | mode | variance explained by the image (%) | best t |", "|---|---|---|---|"]
        lines += [f"| `{r['layer']}` | {r['mode']} | {100 * r['image_share']:.1f} | {r['t']} |" for r in rows]
    write_text(out / "choice.md", "\n".join(lines) + "\n")
    write_json(out / "choice.json", {"choice": asdict(choice), "rows": rows})
    return choice


def read_choice(out: Path) -> Choice | None:
    import json

    path = out / "choice.json"
    return Choice(**json.loads(path.read_text())["choice"]) if path.is_file() else None
