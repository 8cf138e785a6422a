"""Which teacher layer to distil from when there are too few labels to score one (pipeline.choice).

For every block-level layer of a teacher, on one dataset: how alike the trained teacher's pooled features are
to a random-weight teacher's of the same architecture (linear CKA, Kornblith et al. 2019: 1 = the same up to a
rotation and scale, so nothing learned shows), and, as the reference the label-free rule cannot compute, the
linear-probe gap between them with every training label (fitted on up to 1,000 training images, scored on up to
1,000 validation images; the test split is not used). Also which layer the label-free score used before (share
of the feature variance explained by the image rather than t) and the decoder-start rule pick.

    python benchmarks/choice_label_free.py --name choice_label_free_cifar --source cifar --root CIFAR --teacher TEACHER
    python benchmarks/choice_label_free.py --name choice_label_free_digits --source folder --root DIGITS \
        --image-size 16 --teacher RUN/teacher/teacher
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(0), y - y.mean(0)
    return float(np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=["cifar", "folder"], required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--name", required=True, help="Stem of the result files.")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    from repfusion.analysis.probe import pooled_features, probe_gap, variance_shares
    from repfusion.data import DataConfig, ImageDataModule
    from repfusion.io import write_json, write_text
    from repfusion.pipeline.choice import BLOCK, candidate_layers, capped, decoder_start
    from repfusion.teachers import load_teacher

    data = ImageDataModule(DataConfig(source=args.source, root=args.root, image_size=args.image_size,
                                      val_fraction=0.1))
    data.setup()
    train, val = capped(data.train_set, 1000, 0), capped(data.val_set, 1000, 1)
    teacher = load_teacher(args.teacher)
    random_teacher = load_teacher(args.teacher, init="random", init_seed=0)
    layers = [n for n, _, shape in teacher.layer_rows() if shape is not None and (BLOCK.match(n) or n == "mid_block")]
    candidates = candidate_layers(teacher)
    probed = probe_gap(teacher, random_teacher, train, val, 0, "clean", layers)
    by_t = [pooled_features(teacher, train, t, "clean", candidates, 256, 0)[0] for t in (0, 100, 300)]
    rows = []
    for layer in layers:
        share = variance_shares([f[layer] for f in by_t])[1] if layer in candidates else None
        cka = linear_cka(probed.features[layer], probed.random_features[layer])
        rows.append({"layer": layer, "candidate": layer in candidates, "cka_trained_random": cka,
                     "probe": probed.trained[layer], "random_probe": probed.random[layer], "gap": probed.gap(layer),
                     "image_share": share})
    old = max((r for r in rows if r["candidate"]), key=lambda r: r["image_share"])["layer"]
    new = decoder_start(candidates)
    command = "python benchmarks/choice_label_free.py " + shlex.join(sys.argv[1:])
    result = {"command": command, "source": args.source, "train_images": len(train), "val_images": len(val),
              "rows": rows, "variance_share_pick": old, "decoder_start_pick": new}
    write_json(args.out / f"{args.name}.json", result)
    lines = [f"# Label-free layer choice: {args.source}", "", f"Command: `{command}`", "",
             f"Clean input, t = 0; {len(train)} training / {len(val)} validation images. CKA: linear CKA between the "
             "trained and a random-weight teacher's pooled features on the training images (1: alike). Probe: "
             "logistic regression with every training label, the reference a label-free rule cannot compute.", "",
             "| layer | candidate | CKA trained vs random | probe trained (%) | probe random (%) | gap | image share (%) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        share = "" if r["image_share"] is None else f"{100 * r['image_share']:.1f}"
        lines.append(f"| `{r['layer']}` | {'yes' if r['candidate'] else ''} | {r['cka_trained_random']:.3f} | "
                     f"{100 * r['probe']:.1f} | {100 * r['random_probe']:.1f} | {100 * r['gap']:+.1f} | {share} |")
    lines += ["", f"Variance-share score (the label-free rule before): `{old}`. Decoder-start rule (now): `{new}`."]
    write_text(args.out / f"{args.name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
