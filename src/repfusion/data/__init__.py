"""Dataset readers (classification and dense: CelebAMask-HQ, WFLW), embedded data (digits, generated faces),
and on-device augmentation (images alone, or with masks and keypoints)."""

from .augment import Augment, BatchAugment, Normalize
from .celebamask import celebamask
from .cifar import cifar
from .datamodule import DataConfig, ImageDataModule, build_split, train_test_split
from .datasets import TensorImageDataset, image_folder
from .digits import digits
from .face_layout import PARSING_CLASSES, PARSING_FLIP_SWAPS, WFLW_ATTRIBUTES, WFLW_EYE_CORNERS, WFLW_FLIP_PAIRS
from .faces import faces
from .joint_augment import JointAugment
from .tiny_imagenet import tiny_imagenet
from .wflw import wflw

__all__ = [
    "PARSING_CLASSES", "PARSING_FLIP_SWAPS", "WFLW_ATTRIBUTES", "WFLW_EYE_CORNERS", "WFLW_FLIP_PAIRS",
    "Augment", "BatchAugment", "DataConfig", "ImageDataModule", "JointAugment", "Normalize", "TensorImageDataset",
    "build_split", "celebamask", "cifar", "digits", "faces", "image_folder", "tiny_imagenet", "train_test_split",
    "wflw",
]
