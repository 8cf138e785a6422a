"""Plain JSON data: the type of every free-form config field (trainer.extra, loss.options, ADM flags).

Never `Any`, for which jsonargparse would instantiate a `class_path` it is given. Its own module, so the
config reader and the sections it reads (training's TrainerConfig, ...) both import it without importing
each other.
"""

from __future__ import annotations

from typing import Union

JSONScalar = Union[bool, int, float, str, None]
JSONValue = Union[JSONScalar, list[JSONScalar], dict[str, JSONScalar]]
