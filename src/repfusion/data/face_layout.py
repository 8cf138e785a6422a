"""Face-task constants in one place: the 19 parsing classes, the 98 WFLW points, and their flip swaps.

Sources (see docs/datasets.md): the class order is CelebAMask-HQ's official one
(switchablenorms/CelebAMask-HQ `face_parsing/g_mask.py`); the flip pairs are mmpose's
`configs/_base_/datasets/wflw.py` (the same as HRNet's facial-landmark code).

WFLW numbers its points by image side: the contour runs from the image's left (point 0) to its right
(point 32), and 60-67 / 96 belong to the eye on the image's left. The generated faces (`faces.py`) put
the `l_*` parts on the image's left too. Nothing depends on which side a dataset calls "left": a
horizontal flip exchanges the two sides of every pair below, which is all the swaps rely on.
"""

from __future__ import annotations

from ..errors import RepFusionError

PARSING_CLASSES: list[str] = [
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
]
"""The official CelebAMask-HQ order; masks are merged in this order, a later class overwriting an earlier one."""

IGNORE_INDEX = 255
"""Mask value of pixels without a label (e.g. brought in from outside the image by a rotation)."""

PARSING_FLIP_SWAPS: tuple[tuple[int, int], ...] = ((4, 5), (6, 7), (8, 9))
"""Class pairs exchanged by a horizontal flip: l_eye/r_eye, l_brow/r_brow, l_ear/r_ear."""

WFLW_NUM_KEYPOINTS = 98

WFLW_FLIP_PAIRS: tuple[tuple[int, int], ...] = (
    (0, 32), (1, 31), (2, 30), (3, 29), (4, 28), (5, 27), (6, 26), (7, 25), (8, 24), (9, 23), (10, 22),
    (11, 21), (12, 20), (13, 19), (14, 18), (15, 17),                      # contour; 16 is the chin
    (33, 46), (34, 45), (35, 44), (36, 43), (37, 42), (38, 50), (39, 49), (40, 48), (41, 47),  # brows
    (55, 59), (56, 58),                                                    # nostrils; 51-54, 57 on the midline
    (60, 72), (61, 71), (62, 70), (63, 69), (64, 68), (65, 75), (66, 74), (67, 73),  # eyes
    (76, 82), (77, 81), (78, 80), (83, 87), (84, 86), (88, 92), (89, 91), (93, 95),  # mouth; 79, 85, 90, 94 mid
    (96, 97),                                                              # pupils
)
"""0-based WFLW landmark pairs exchanged by a horizontal flip; every other point maps to itself."""

WFLW_EYE_CORNERS: tuple[int, int] = (60, 72)
"""Outer eye corners: their distance normalises the NME (mmpose `NME`, HRNet)."""

WFLW_ATTRIBUTES: tuple[str, ...] = ("pose", "expression", "illumination", "make-up", "occlusion", "blur")
"""The six 0/1 attribute columns of a WFLW annotation line, in file order."""


def flip_permutation(pairs: tuple[tuple[int, int], ...] | list[tuple[int, int]], size: int) -> list[int]:
    """Index list p with p[i] = the partner of i (or i itself): `values[p]` swaps every pair."""
    perm = list(range(size))
    for a, b in pairs:
        if not (0 <= a < size and 0 <= b < size):
            raise RepFusionError(f"Flip pair ({a}, {b}) names a point outside the {size} keypoints; give flip pairs "
                                 "for this keypoint layout.")
        perm[a], perm[b] = b, a
    return perm
