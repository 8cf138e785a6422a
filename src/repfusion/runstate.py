"""Moved to the `repfusion.run` package (one module per concept); this alias goes once nothing imports it."""

from .run import *  # noqa: F401,F403
from .run import __all__  # noqa: F401
