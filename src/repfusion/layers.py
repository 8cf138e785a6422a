"""`repfusion layers`: every hookable module of a teacher or student with its output shape."""

from __future__ import annotations

import torch

from .errors import RepFusionError
from .features import output_shapes


def format_table(rows: list[tuple[str, str, tuple[int, ...] | None]]) -> str:
    width = max(len(name) for name, _, _ in rows)
    kinds = max(len(kind) for _, kind, _ in rows)
    lines = [f"{'layer':<{width}}  {'type':<{kinds}}  output shape", "-" * (width + kinds + 16)]
    for name, kind, shape in rows:
        if shape is None and kind in ("ModuleList", "ModuleDict", "Sequential"):
            continue
        shown = "x".join(map(str, shape)) if shape else "(not called)"
        lines.append(f"{name:<{width}}  {kind:<{kinds}}  {shown}")
    return "\n".join(lines)


def mid_block_note(names: list[str], kind: str) -> str:
    """Which name is the mid block's output (a UNet's `*.conv2` is the residual branch before the skip is added)."""
    resnets = [n for n in names if n.startswith("mid_block.resnets.") and n.count(".") == 2]
    if not resnets:
        return ""
    last = max(resnets, key=lambda n: int(n.rsplit(".", 1)[1]))
    note = f"\nmid block output: {last} (the same tensor as mid_block)"
    if kind == "adm":
        index = 2 * int(last.rsplit(".", 1)[1])
        note += (f", ADM's middle_block output; {last}.conv2 is ADM's middle_block.{index}.out_layers.3, the "
                 "residual branch before the skip connection is added")
    else:
        note += f"; {last}.conv2 is the residual branch before the skip connection is added"
    return note


def list_layers(teacher: str | None = None, student: str | None = None, image_size: int | None = None,
                width: float = 1.0, teacher_options: dict | None = None) -> str:
    """The table `repfusion layers` prints; `teacher_options` go to `load_teacher`."""
    if teacher is not None:
        from .teachers import load_teacher

        t = load_teacher(teacher, image_size=image_size, **(teacher_options or {}))
        size = image_size or t.sample_size
        rows = t.layer_rows(size)
        header = (f"teacher {teacher} ({t.kind}) at {size}x{size}, {t.num_timesteps} timesteps; "
                  f"default feature layer: {t.default_layer}")
        if t.kind == "dit":
            header += "; transformer tokens are listed as the (C, H, W) maps the teacher returns"
        header += mid_block_note([name for name, _, _ in rows], t.kind)
    elif student is not None:
        from .students import build_student

        s = build_student(student, width=width, num_classes=10)
        size = image_size or s.default_image_size
        rows = output_shapes(s, lambda: s(torch.zeros(2, 3, size, size)))
        header = f"student {student} (width {width}) at {size}x{size}; default feature layer: {s.feature_layer}"
    else:
        raise RepFusionError("Give --teacher or --student to list its layers.")
    return header + "\n" + format_table(rows)
