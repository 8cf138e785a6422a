"""RepFusion: diffusion models as teachers for recognition networks."""

__version__ = "0.1.0"
