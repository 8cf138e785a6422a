"""Generated face-like images with 19-class part masks and 98 WFLW-layout landmarks: dense data without a download.

Each face is drawn from a few dozen random numbers (pose, proportions, colours, accessories) in a face frame
(u to the image's right, v down, one unit = half the face height, the face an ellipse u^2/a^2 + v^2 <= 1),
then placed in the image by a similarity transform (scale, roll rotation, offset). Masks and landmarks come
from the same geometry, so every landmark sits on the part it names:

- contour 0-32 on the lower face ellipse from the image's left to its right (16 = chin), brows 33-50,
  nose 51-59, eyes 60-75 (60-67 the eye on the image's left), mouth 76-95, pupils 96-97 (96 left);
- the `l_*` classes (`l_eye`, `l_brow`, `l_ear`) are the parts on the image's left, so a horizontal flip maps
  a face onto another face of the same distribution with `face_layout.PARSING_FLIP_SWAPS` and
  `WFLW_FLIP_PAIRS` exchanged (every random choice is left/right symmetric);
- labels are painted in the official CelebAMask-HQ order, a later class overwriting an earlier one, with
  regions shaped so that what a mask says is what the image shows (the neck stops at a necklace, hair
  stops at the hairline).

Difficulty comes from pose (roll up to 25 degrees, yaw by shifting the inner features and the chin), scale,
offsets, skin/hair/cloth colours, low-contrast parts (the nose and ears are skin-coloured, told apart only
by shading and shape), backgrounds (gradients, noise, skin-coloured clutter), glasses (`eye_g`), hats,
earrings (`ear_r`), necklaces (`neck_l`), lighting, blur and sensor noise.

Images are generated in fixed chunks, each from its own seeded generator, so the data depend only on the
seed and the image size, and a smaller split is the start of a larger one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import RepFusionError
from .face_layout import PARSING_CLASSES, WFLW_FLIP_PAIRS, WFLW_NUM_KEYPOINTS

CHUNK = 64
"""Faces per generator chunk; fixed so that the data do not depend on how many are asked for."""

LABEL = {name: i for i, name in enumerate(PARSING_CLASSES)}


class FaceDataset(Dataset):
    """Decoded faces in memory; items are (uint8 [3,S,S], {"mask", "keypoints", "attributes"})."""

    targets: tuple[str, ...] = ("mask", "keypoints", "attributes")
    num_keypoints: int = WFLW_NUM_KEYPOINTS

    def __init__(self, images: Tensor, masks: Tensor, keypoints: Tensor, attributes: Tensor) -> None:
        self.images, self.masks, self.keypoints, self.attributes = images, masks, keypoints, attributes
        self.classes: list[str] = list(PARSING_CLASSES)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        return self.images[index], {"mask": self.masks[index], "keypoints": self.keypoints[index],
                                    "attributes": self.attributes[index]}


def faces(train: bool, size: int = 1000, image_size: int = 64, seed: int = 0) -> FaceDataset:
    """`size` generated faces at `image_size` pixels; the train and test splits use disjoint seeds.

    Args:
        train (`bool`): the training split (else the test split).
        size (`int`, defaults to 1000): number of faces.
        image_size (`int`, defaults to 64): side of the square images, at least 16.
        seed (`int`, defaults to 0): a different seed gives a different dataset.
    """
    if isinstance(size, bool) or int(size) != size or size < 1:
        raise RepFusionError(f"The number of generated faces must be a positive whole number, not {size}.")
    if isinstance(image_size, bool) or int(image_size) != image_size or image_size < 16:
        raise RepFusionError(f"Generated faces need data.image_size >= 16 pixels, not {image_size}.")
    parts = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small element-wise ops: extra threads only contend (10x slower on 2 busy cores)
    try:
        for chunk in range(math.ceil(size / CHUNK)):
            g = torch.Generator().manual_seed(((seed * 2 + (0 if train else 1)) * 1_000_003 + chunk) % (2**63))
            parts.append(_generate(CHUNK, int(image_size), g))
    finally:
        torch.set_num_threads(threads)
    images, masks, points, attrs = (torch.cat(x)[:size].contiguous() for x in zip(*parts))
    return FaceDataset(images, masks, points, attrs)


def _u(g: torch.Generator, n: int, low: float, high: float) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def _flag(g: torch.Generator, n: int, p: float) -> Tensor:
    return torch.rand(n, generator=g) < p


def _params(n: int, g: torch.Generator) -> dict[str, Tensor]:
    """The random numbers behind one face each (all [n]); every left/right choice is symmetric."""
    p: dict[str, Tensor] = {}
    p["a"] = _u(g, n, 0.68, 0.84)
    p["yaw"] = _u(g, n, -0.3, 0.3)
    p["roll"] = _u(g, n, -25.0, 25.0) * math.pi / 180
    p["scale"] = _u(g, n, 0.22, 0.3)        # face half-height as a fraction of the image side
    p["cx"] = _u(g, n, 0.38, 0.62)
    p["cy"] = _u(g, n, 0.36, 0.52)
    p["eye_y"] = _u(g, n, -0.2, -0.08)
    p["eye_dx"] = _u(g, n, 0.28, 0.36)
    p["eye_w"] = _u(g, n, 0.11, 0.15)
    p["eye_h"] = p["eye_w"] * _u(g, n, 0.35, 0.6)
    p["gaze_x"], p["gaze_y"] = _u(g, n, -1, 1), _u(g, n, -1, 1)
    p["brow_y"] = p["eye_y"] - _u(g, n, 0.12, 0.19)
    p["brow_w"] = p["eye_w"] * _u(g, n, 1.2, 1.5)
    p["brow_t"] = _u(g, n, 0.04, 0.07)
    p["brow_arch"] = _u(g, n, 0.01, 0.06)
    p["nose_tip"] = _u(g, n, 0.22, 0.32)
    p["nose_w"] = _u(g, n, 0.08, 0.13)
    p["mouth_y"] = _u(g, n, 0.5, 0.62)
    p["mouth_w"] = _u(g, n, 0.2, 0.3)
    p["lip_h"] = _u(g, n, 0.035, 0.065)
    p["open"] = _u(g, n, 0.02, 0.12) * _flag(g, n, 0.4)
    p["ear_y"] = _u(g, n, -0.18, 0.0)
    p["ear_h"] = _u(g, n, 0.17, 0.24)
    p["ear_w"] = _u(g, n, 0.09, 0.13)
    p["hair_t"] = _u(g, n, 0.08, 0.25)
    p["long_hair"] = _flag(g, n, 0.4)
    p["hairline"] = torch.minimum(_u(g, n, -0.8, -0.5), p["brow_y"] - p["brow_arch"] - 0.12)
    p["neck_w"] = _u(g, n, 0.32, 0.42)
    p["collar"] = _u(g, n, 0.0, 0.35)
    p["glasses"] = _flag(g, n, 0.25)
    p["hat"] = _flag(g, n, 0.2)
    p["earrings"] = _flag(g, n, 0.25)
    p["necklace"] = _flag(g, n, 0.2)
    p["makeup"] = _flag(g, n, 0.3)
    p["blur"] = _flag(g, n, 0.25)
    p["light"] = _u(g, n, 0.0, 0.8)
    p["light_dir"] = _u(g, n, 0.0, 2 * math.pi)
    p["noise"] = _u(g, n, 2.0, 12.0) / 255
    return p


def _feature_shift(p: dict[str, Tensor]) -> Tensor:
    """Yaw moves the inner features towards the side the face turns to (nose tip a little further)."""
    return 0.2 * p["yaw"]


def _face_points(p: dict[str, Tensor]) -> Tensor:
    """The 98 WFLW landmarks in face coordinates, [n, 98, 2], on the same curves the masks use.

    Brows, eyes and mouth are placed on the image's left (and the midline) and mirrored about the shifted
    face axis u = f through `WFLW_FLIP_PAIRS`, so the right-hand points are the flip partners by construction.
    """
    n = len(p["a"])
    pts = torch.full((n, WFLW_NUM_KEYPOINTS, 2), float("nan"))
    f = _feature_shift(p)

    def put(k: int, u: Tensor, v: Tensor) -> None:
        pts[:, k, 0], pts[:, k, 1] = u, v

    # contour 0-32: the lower face ellipse from the image's left (just above eye level) to its right;
    # yaw slides the points (and the chin, 16) along the ellipse towards the turned side
    t = torch.linspace(0, 1, 33)[None]
    tw = t + p["yaw"][:, None] * 0.3 * torch.sin(math.pi * t)
    delta = 0.2
    phi = (math.pi + delta) - (math.pi + 2 * delta) * tw
    pts[:, 0:33, 0], pts[:, 0:33, 1] = p["a"][:, None] * torch.cos(phi), torch.sin(phi)
    # left brow: top edge 33-37 outer -> inner, bottom edge 38-41 inner -> outer
    bx = -(p["eye_dx"] + 0.02) + f
    for k, tt in zip(range(33, 38), (-1.0, -0.5, 0.0, 0.5, 1.0)):
        put(k, *_brow_top(p, bx, tt))
    for k, tt in zip(range(38, 42), (1.0, 0.5, 0.0, -0.5)):
        u, v = _brow_top(p, bx, tt)
        put(k, u, v + _brow_thickness(p, tt))
    # nose: bridge 51-54 top to tip, lower edge 55-59 left to right
    top, tip, w = p["eye_y"], p["nose_tip"], p["nose_w"]
    for k, s in zip(range(51, 55), (0.0, 1 / 3, 2 / 3, 1.0)):
        put(k, _nose_centre(p, torch.full_like(top, s)), top + (tip - top) * s)
    for k, du in zip(range(55, 60), (-1.0, -0.5, 0.0, 0.5, 1.0)):
        put(k, _nose_centre(p, torch.ones_like(top)) + du * w,
            tip + _NOSE_BASE_H * math.sqrt(max(0.0, 1 - (du / _NOSE_BASE_W) ** 2)))
    # left eye: 60 outer corner, 61-63 upper lid, 64 inner corner, 65-67 lower lid; pupils 96 (left), 97
    ecx = -p["eye_dx"] + f
    for k, tt, lid in ((60, -1.0, 0), (61, -0.5, -1), (62, 0.0, -1), (63, 0.5, -1), (64, 1.0, 0),
                       (65, 0.5, 1), (66, 0.0, 1), (67, -0.5, 1)):
        put(k, ecx + tt * p["eye_w"], p["eye_y"] + lid * p["eye_h"] * (1 - tt**2))
    for k, centre in ((96, ecx), (97, p["eye_dx"] + f)):
        put(k, centre + p["gaze_x"] * p["eye_w"] * 0.35, p["eye_y"] + p["gaze_y"] * p["eye_h"] * 0.2)
    # mouth: outer 76 left corner, 77-79 upper lip, 85-87 lower lip; inner 88 corner, 89-90 upper, 94-95 lower
    curves = _lip_curves(p)
    mw = p["mouth_w"]
    for k, tt, curve in ((76, -1.0, "uo"), (77, -0.6, "uo"), (78, -0.3, "uo"), (79, 0.0, "uo"),
                         (85, 0.0, "lo"), (86, -0.3, "lo"), (87, -0.6, "lo"), (88, -0.9, "mid"),
                         (89, -0.45, "ui"), (90, 0.0, "ui"), (94, 0.0, "li"), (95, -0.45, "li")):
        put(k, f + tt * mw, p["mouth_y"] if curve == "mid" else curves[curve](tt))
    # the right-hand partners: mirror about the feature axis u = f
    for a, b in WFLW_FLIP_PAIRS:
        if a < 33 or a in (55, 56, 96):
            continue  # contour, nose base and pupils are placed directly
        src, dst = (a, b) if not torch.isnan(pts[0, a, 0]) else (b, a)
        put(dst, 2 * f - pts[:, src, 0], pts[:, src, 1])
    return pts


_NOSE_BASE_W, _NOSE_BASE_H = 1.15, 0.07  # nostril ellipse: half-width in nose widths, half-height in face units


def _brow_top(p: dict[str, Tensor], bx: Tensor, t: float | Tensor) -> tuple[Tensor, Tensor]:
    return bx + t * p["brow_w"], p["brow_y"] - p["brow_arch"] * (1 - t**2)


def _brow_thickness(p: dict[str, Tensor], t: float | Tensor) -> Tensor:
    return p["brow_t"] * (1 - 0.4 * t**2)


def _nose_centre(p: dict[str, Tensor], s: Tensor) -> Tensor:
    """Midline of the nose at fraction s from the bridge top (0) to the tip (1)."""
    return _feature_shift(p) + 0.12 * p["yaw"] * s


def _lip_curves(p: dict[str, Tensor]) -> dict[str, Callable[[float], Tensor]]:
    """v of the four lip curves at t in [-1, 1] along the mouth (all meet at the corners)."""
    my, op, lh = p["mouth_y"], p["open"], p["lip_h"]
    return {
        "uo": lambda t: my - op / 2 - lh * (1 - t**2),
        "ui": lambda t: my - op / 2 * (1 - t**2),
        "li": lambda t: my + op / 2 * (1 - t**2),
        "lo": lambda t: my + op / 2 + 1.2 * lh * (1 - t**2),
    }


def _to_pixels(p: dict[str, Tensor], pts: Tensor, size: int) -> Tensor:
    """Face frame -> pixel (x, y), pixel centres at integers."""
    b = (p["scale"] * size)[:, None]
    c, s = torch.cos(p["roll"])[:, None], torch.sin(p["roll"])[:, None]
    u, v = pts[..., 0], pts[..., 1]
    x = (p["cx"] * (size - 1))[:, None] + b * (c * u - s * v)
    y = (p["cy"] * (size - 1))[:, None] + b * (s * u + c * v)
    return torch.stack([x, y], -1)


def _face_grid(p: dict[str, Tensor], size: int) -> tuple[Tensor, Tensor]:
    """Face coordinates (u, v) of every pixel centre, each [n, S, S]."""
    r = torch.arange(size, dtype=torch.float32)
    ys, xs = torch.meshgrid(r, r, indexing="ij")
    view = lambda x: x.view(-1, 1, 1)  # noqa: E731
    b = view(p["scale"] * size)
    dx, dy = xs[None] - view(p["cx"] * (size - 1)), ys[None] - view(p["cy"] * (size - 1))
    c, s = view(torch.cos(p["roll"])), view(torch.sin(p["roll"]))
    return (c * dx + s * dy) / b, (-s * dx + c * dy) / b


def _regions(p: dict[str, Tensor], u: Tensor, v: Tensor) -> dict[str, Tensor]:
    """Boolean [n, S, S] region of each part (before the order-based overwrite)."""
    P = {k: x.view(-1, 1, 1) for k, x in p.items()}
    f = _feature_shift(p).view(-1, 1, 1)
    face = (u / P["a"]) ** 2 + v**2 <= 1
    R: dict[str, Tensor] = {"skin": face}
    # nose: a bridge widening towards the tip, and the nostril ellipse
    top, tip, w = P["eye_y"], P["nose_tip"], P["nose_w"]
    s = ((v - top) / (tip - top)).clamp(0, 1)
    bridge = (v >= top) & (v <= tip) & ((u - _nose_centre(p, torch.zeros(1)).view(-1, 1, 1) - 0.12 * P["yaw"] * s).abs()
                                        <= w * (0.25 + 0.55 * s))
    base_c = _nose_centre(p, torch.ones(1)).view(-1, 1, 1)
    nostrils = ((u - base_c) / (_NOSE_BASE_W * w)) ** 2 + ((v - tip) / _NOSE_BASE_H) ** 2 <= 1
    R["nose"] = bridge | nostrils
    # eyes: parabolic lids meeting at the corners; glasses: a lens around each eye and a bridge
    eyes, lenses = [], torch.zeros_like(face)
    for side in (-1, 1):
        ecx = side * P["eye_dx"] + f
        t = (u - ecx) / P["eye_w"]
        eyes.append((t.abs() <= 1) & ((v - P["eye_y"]).abs() <= P["eye_h"] * (1 - t**2)))
        lenses |= ((u - ecx).abs() <= P["eye_w"] * 1.45) & ((v - P["eye_y"]).abs() <= 0.11)
    bridge_band = ((u - f).abs() <= P["eye_dx"] - P["eye_w"] * 1.4) & ((v - P["eye_y"] + 0.08).abs() <= 0.02)
    R["eye_g"] = (lenses | bridge_band) & P["glasses"]
    R["l_eye"], R["r_eye"] = eyes
    # brows
    for side, name in ((-1, "l_brow"), (1, "r_brow")):
        bx = side * (P["eye_dx"] + 0.02) + f  # the same axis as _face_points
        t = (u - bx) / P["brow_w"]
        upper = P["brow_y"] - P["brow_arch"] * (1 - t**2)
        R[name] = (t.abs() <= 1) & (v >= upper) & (v <= upper + P["brow_t"] * (1 - 0.4 * t**2))
    # ears: outside the face ellipse; the one on the side the face turns away from shows more
    for side, name in ((-1, "l_ear"), (1, "r_ear")):
        grow = (1 - side * 2.0 * P["yaw"]).clamp(0.3, 1.6)
        ex = side * (P["a"] + 0.02)
        R[name] = (((u - ex) / (P["ear_w"] * grow)) ** 2 + ((v - P["ear_y"]) / P["ear_h"]) ** 2 <= 1) & ~face
    # mouth and lips
    t = (u - f) / P["mouth_w"]
    inside = t.abs() <= 1
    my, op, lh = P["mouth_y"], P["open"], P["lip_h"]
    uo, ui = my - op / 2 - lh * (1 - t**2), my - op / 2 * (1 - t**2)
    li, lo = my + op / 2 * (1 - t**2), my + op / 2 + 1.2 * lh * (1 - t**2)
    R["mouth"] = inside & (v > ui) & (v < li)
    R["u_lip"] = inside & (v >= uo) & (v <= ui)
    R["l_lip"] = inside & (v >= li) & (v <= lo)
    # hair: a cap behind the head (long hair down the sides), never below the hairline inside the face
    a_h, hair_t = P["a"] + P["hair_t"], P["hair_t"]
    cap = ((u / a_h) ** 2 + ((v + 0.05) / (1 + 0.8 * hair_t)) ** 2 <= 1) & (v <= P["ear_y"] - 0.5 * P["ear_h"])
    sides = P["long_hair"] & (u.abs() <= a_h) & (v > -0.2) & (v <= 1.35)
    hairline = P["hairline"] + 0.12 * (u / P["a"]) ** 2
    R["hair"] = (cap | sides) & ~(face & (v > hairline))
    # hat: crown and brim over the top of the head
    crown = ((u / (P["a"] + 0.12)) ** 2 + ((v + 0.8) / 0.5) ** 2 <= 1) & (v <= -0.6)
    brim = (u.abs() <= P["a"] + 0.38) & (v >= -0.7) & (v <= -0.6)
    R["hat"] = (crown | brim) & P["hat"]
    # earrings below each ear lobe
    rings = torch.zeros_like(face)
    for side in (-1, 1):
        ex = side * (P["a"] + 0.02)
        rings |= (u - ex) ** 2 + (v - P["ear_y"] - P["ear_h"] - 0.03) ** 2 <= 0.05**2
    R["ear_r"] = rings & P["earrings"]
    # neck, a necklace across it, clothes with a collar
    nw = P["neck_w"]
    neck_shape = (u.abs() <= nw) & (v > 0.5) & ~face
    chain_v = 1.05 + 0.2 * (1 - (u / nw) ** 2)
    R["neck_l"] = neck_shape & ((v - chain_v).abs() <= 0.03) & P["necklace"]
    R["neck"] = neck_shape & ~R["neck_l"]
    shoulder = 1.2 + 0.3 * (u.abs() - 0.3).clamp(min=0) ** 2
    collar = 1.2 + P["collar"] * (1 - u.abs() / nw).clamp(min=0)
    R["cloth"] = (v > shoulder) & (v > collar)
    return R


def _generate(n: int, size: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    p = _params(n, g)
    points = _to_pixels(p, _face_points(p), size).float()
    u, v = _face_grid(p, size)
    regions = _regions(p, u, v)
    mask = torch.zeros(n, size, size, dtype=torch.long)
    for k, name in enumerate(PARSING_CLASSES[1:], start=1):  # official order: a later class overwrites
        mask[regions[name]] = k
    image = _paint(p, mask, u, v, regions, g)
    attributes = torch.stack([
        (p["roll"].abs() > 18 * math.pi / 180) | (p["yaw"].abs() > 0.2),  # pose
        p["open"] > 0.05,                                                   # expression
        p["light"] > 0.6,                                                   # illumination
        p["makeup"],                                                        # make-up
        p["glasses"] | p["hat"],                                            # occlusion
        p["blur"],                                                          # blur
    ], 1).to(torch.uint8)                                                   # the WFLW_ATTRIBUTES columns
    return image, mask.to(torch.uint8), points, attributes


def _smooth_noise(n: int, channels: int, size: int, cells: int, g: torch.Generator) -> Tensor:
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled bilinearly."""
    coarse = torch.rand(n, channels, cells, cells, generator=g) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def _paint(p: dict[str, Tensor], mask: Tensor, u: Tensor, v: Tensor, R: dict[str, Tensor],
           g: torch.Generator) -> Tensor:
    n, size = mask.shape[0], mask.shape[-1]
    rand3 = lambda: torch.rand(n, 3, generator=g)  # noqa: E731
    tone = torch.rand(n, 1, generator=g)
    skin = (torch.tensor([0.96, 0.82, 0.70]) * (1 - tone) + torch.tensor([0.36, 0.23, 0.16]) * tone
            + (rand3() - 0.5) * 0.08)
    hair_base = torch.tensor([[0.08, 0.06, 0.05], [0.35, 0.22, 0.12], [0.85, 0.72, 0.45], [0.6, 0.25, 0.1],
                              [0.7, 0.7, 0.7]])
    hair = hair_base[torch.randint(0, 5, (n,), generator=g)] + (rand3() - 0.5) * 0.1
    lips = torch.where(p["makeup"][:, None], torch.tensor([0.75, 0.08, 0.25]) + (rand3() - 0.5) * 0.3,
                       skin * torch.tensor([0.85, 0.6, 0.6]))
    metal = torch.where(torch.rand(n, 1, generator=g) < 0.5, torch.tensor([0.9, 0.75, 0.25]),
                        torch.tensor([0.85, 0.85, 0.9]))
    colours = torch.stack([
        rand3(),                                       # background (replaced by the backdrop below)
        skin,                                          # skin
        skin * 0.9,                                    # nose: skin-coloured, found by shading and shape
        skin * 0.6 + torch.tensor([0.1, 0.12, 0.15]),  # eye_g lens tint
        torch.tensor([0.93, 0.92, 0.9]).expand(n, 3),  # l_eye
        torch.tensor([0.93, 0.92, 0.9]).expand(n, 3),  # r_eye
        hair * 0.8,                                    # l_brow
        hair * 0.8,                                    # r_brow
        skin * 0.93,                                   # l_ear
        skin * 0.93,                                   # r_ear
        torch.tensor([0.3, 0.06, 0.08]).expand(n, 3),  # mouth
        lips * 0.9,                                    # u_lip
        lips,                                          # l_lip
        hair,                                          # hair
        rand3(),                                       # hat
        metal,                                         # ear_r
        metal,                                         # neck_l
        skin * 0.85,                                   # neck
        rand3(),                                       # cloth
    ], 1).clamp(0, 1)                                  # [n, 19, 3]
    img = colours.gather(1, mask.view(n, -1, 1).expand(-1, -1, 3)).view(n, size, size, 3).permute(0, 3, 1, 2)
    img = img.contiguous()
    # backdrop: a gradient between two colours plus noise, and a few clutter blobs (some skin-coloured)
    r = torch.linspace(0, 1, size)
    ys, xs = torch.meshgrid(r, r, indexing="ij")
    angle = torch.rand(n, generator=g) * 2 * math.pi
    ramp = (xs[None] * torch.cos(angle).view(-1, 1, 1) + ys[None] * torch.sin(angle).view(-1, 1, 1))
    low, high = ramp.amin((1, 2), keepdim=True), ramp.amax((1, 2), keepdim=True)
    ramp = (ramp - low) / (high - low)
    c0, c1 = rand3(), rand3()
    back = c0.view(n, 3, 1, 1) * (1 - ramp[:, None]) + c1.view(n, 3, 1, 1) * ramp[:, None]
    back = back + 0.15 * _smooth_noise(n, 3, size, 6, g) * torch.rand(n, 1, 1, 1, generator=g)
    for _ in range(3):
        centre = torch.rand(n, 2, 1, 1, generator=g)
        radius = 0.05 + 0.2 * torch.rand(n, 2, 1, 1, generator=g)
        blob = ((xs[None] - centre[:, 0]) / radius[:, 0]) ** 2 + ((ys[None] - centre[:, 1]) / radius[:, 1]) ** 2 <= 1
        use_skin = torch.rand(n, 1, generator=g) < 0.3
        colour = torch.where(use_skin, skin + (rand3() - 0.5) * 0.15, rand3())
        back = torch.where(blob[:, None], colour.view(n, 3, 1, 1), back)
    img = torch.where((mask == 0)[:, None], back, img)
    # details that do not change the labels: pupils, glasses frames, hair strands, cloth stripes
    points = _face_points(p)
    for side, name in ((96, "l_eye"), (97, "r_eye")):
        pts = points[:, side]
        d2 = (u - pts[:, 0].view(-1, 1, 1)) ** 2 + (v - pts[:, 1].view(-1, 1, 1)) ** 2
        iris = R[name] & (mask == LABEL[name]) & (d2 <= (p["eye_h"].view(-1, 1, 1) * 0.95) ** 2)
        img = torch.where(iris[:, None], (hair * 0.5).view(n, 3, 1, 1), img)
    eye_g = mask == LABEL["eye_g"]
    frame = eye_g & ~_erode(eye_g)
    img = torch.where(frame[:, None], torch.tensor([0.05, 0.05, 0.07]).view(1, 3, 1, 1), img)
    freq = 25 + 20 * torch.rand(n, 1, 1, generator=g)
    strands = 1 + 0.15 * torch.sin(freq * (u + 0.3 * v))
    hairy = (mask == LABEL["hair"]) | (mask == LABEL["l_brow"]) | (mask == LABEL["r_brow"])
    img = torch.where(hairy[:, None], img * strands[:, None], img)
    stripes = 1 + 0.2 * torch.sign(torch.sin(freq * 0.6 * v)) * (torch.rand(n, 1, 1, generator=g) < 0.5)
    img = torch.where((mask == LABEL["cloth"])[:, None], img * stripes[:, None], img)
    # light from one side over the person, texture, sensor noise, optional blur
    d = p["light_dir"].view(-1, 1, 1)
    shade = 1 + 0.35 * p["light"].view(-1, 1, 1) * (torch.cos(d) * u / 1.5 + torch.sin(d) * v / 1.5).clamp(-1, 1)
    person = (mask != 0)[:, None]
    img = torch.where(person, img * shade[:, None], img)
    img = img * (1 + 0.08 * _smooth_noise(n, 1, size, 8, g))
    img = img + p["noise"].view(-1, 1, 1, 1) * torch.randn(img.shape, generator=g)
    sigma = 0.9 * size / 64
    blurred = _gaussian_blur(img, sigma)
    img = torch.where(p["blur"].view(-1, 1, 1, 1), blurred, img)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def _erode(region: Tensor) -> Tensor:
    """A region without its one-pixel border (3x3 minimum)."""
    return -F.max_pool2d(-region[:, None].float(), 3, 1, 1)[:, 0] > 0.5


def _gaussian_blur(img: Tensor, sigma: float) -> Tensor:
    import kornia.filters as KF

    k = 2 * math.ceil(2 * sigma) + 1
    return KF.gaussian_blur2d(img, (k, k), (sigma, sigma), border_type="replicate")


def save_face_samples(dataset: Dataset, path: str | Path, count: int = 8) -> Path:
    """A grid of faces: the image, its mask overlaid, and its 98 landmarks (contour, brows, ... coloured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import save_figure

    count = min(count, len(dataset))  # type: ignore[arg-type]
    fig, axes = plt.subplots(2, count, figsize=(1.6 * count, 3.4), squeeze=False)
    cmap = plt.get_cmap("tab20", 20)
    groups = ((0, 33), (33, 51), (51, 60), (60, 76), (76, 96), (96, 98))
    for i in range(count):
        image, target = dataset[i]
        rgb = image.permute(1, 2, 0).numpy()
        axes[0, i].imshow(rgb)
        axes[0, i].imshow(target["mask"].numpy(), cmap=cmap, vmin=0, vmax=19, alpha=0.45, interpolation="nearest")
        axes[1, i].imshow(rgb)
        pts = target["keypoints"].numpy()
        for k, (lo, hi) in enumerate(groups):
            axes[1, i].scatter(pts[lo:hi, 0], pts[lo:hi, 1], s=3, color=plt.get_cmap("tab10")(k))
        for ax in axes[:, i]:
            ax.set_xlim(-0.5, rgb.shape[1] - 0.5)
            ax.set_ylim(rgb.shape[0] - 0.5, -0.5)
            ax.axis("off")
    axes[0, 0].set_title("masks", fontsize=8, loc="left")
    axes[1, 0].set_title("98 landmarks", fontsize=8, loc="left")
    fig.tight_layout()
    out = save_figure(fig, path)
    plt.close(fig)
    return out
