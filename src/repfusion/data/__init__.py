"""Dataset readers, the embedded digits data, and on-device augmentation."""

from .augment import BatchAugment, Normalize
from .cifar import cifar
from .datamodule import DataConfig, ImageDataModule, build_split
from .datasets import TensorImageDataset, image_folder
from .digits import digits
from .tiny_imagenet import tiny_imagenet

__all__ = [
    "BatchAugment", "DataConfig", "ImageDataModule", "Normalize", "TensorImageDataset",
    "build_split", "cifar", "digits", "image_folder", "tiny_imagenet",
]
