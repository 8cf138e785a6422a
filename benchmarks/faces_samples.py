"""A look at the generated faces: images with their part masks and their 98 landmarks overlaid.

    python benchmarks/faces_samples.py     # writes benchmarks/results/faces_samples.png (and prints timings)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from repfusion.data.faces import faces, save_face_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "faces_samples.png")
    args = parser.parse_args()
    for size, n in ((64, 1000), (args.image_size, args.count)):
        start = time.perf_counter()
        data = faces(True, n, size)
        print(f"{n} faces at {size}x{size}: {time.perf_counter() - start:.2f} s")
    print(save_face_samples(data, args.out, args.count))


if __name__ == "__main__":
    main()
