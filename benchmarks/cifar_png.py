"""Write the CIFAR-10 subset of ../shared/data as a folder of PNG files (train/<class>/, test/<class>/),
the kind of folder a user brings, for `repfusion pretrain` (benchmarks/results/pretrain_cifar_png.md).

Usage: python benchmarks/cifar_png.py OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

from repfusion.data import cifar

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-subset"


def main(out: Path) -> None:
    for split, train in (("train", True), ("test", False)):
        data = cifar(str(SHARED), train)
        for i in range(len(data)):
            image, label = data[i]
            path = out / split / data.classes[label] / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
        print(f"{split}: {len(data)} images")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
