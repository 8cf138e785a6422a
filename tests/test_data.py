import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_cifar_batch
from repfusion.data import Augment, BatchAugment, DataConfig, ImageDataModule, cifar, digits, image_folder
from repfusion.errors import RepFusionError

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-subset"


def test_cifar_reader_keeps_plane_order_and_accepts_both_key_types(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    image = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    image[0, 0, 1, 0], image[0, 2, 3, 1], image[0, 4, 5, 2] = 10, 20, 30  # R at (0,1), G at (2,3), B at (4,5)
    for i, name in enumerate(["data_batch_1", "test_batch"]):
        write_cifar_batch(root / name, image, [7], bytes_keys=(i == 0))
    train, test = cifar(tmp_path, train=True), cifar(root, train=False)
    for ds in (train, test):
        img, label = ds[0]
        assert img.shape == (3, 32, 32) and img.dtype == torch.uint8 and label == 7
        assert (img[0, 0, 1], img[1, 2, 3], img[2, 4, 5]) == (10, 20, 30)
        assert int(img.sum()) == 60


def test_cifar_fixture_splits(cifar_dir):
    train, test = cifar(cifar_dir, True), cifar(cifar_dir, False)
    assert len(train) == 30 and len(test) == 6
    assert train.classes[0] == "airplane" and len(train.classes) == 10


def test_cifar100_keys(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    rng = np.random.default_rng(1)
    for name in ("train", "test"):
        batch = {"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), "fine_labels": [0, 1, 2, 99]}
        (root / name).write_bytes(pickle.dumps(batch))
    (root / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))
    ds = cifar(tmp_path, train=True)
    assert len(ds) == 4 and len(ds.classes) == 100 and ds[3][1] == 99


def test_cifar_wrong_format_is_one_sentence(tmp_path):
    (tmp_path / "data_batch_1").write_text("this is not a pickle")
    with pytest.raises(RepFusionError, match="not a CIFAR python-format batch"):
        cifar(tmp_path, train=True)
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}))
    with pytest.raises(RepFusionError, match="not N x 3072"):
        cifar(tmp_path, train=True)


@pytest.mark.skipif(not SHARED_CIFAR.exists(), reason="../shared/data is not present")
def test_reads_the_real_cifar_subset():
    train, test = cifar(SHARED_CIFAR, True), cifar(SHARED_CIFAR, False)
    assert len(train) == 5085 and len(test) == 1017 and train.classes[-1] == "truck"


def test_image_folder_reader_and_errors(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(np.full((20, 24, 3), 40 * i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    ds = image_folder(tmp_path, image_size=16)
    assert ds.classes == ["cat", "dog"] and len(ds) == 4
    assert ds[3][0].shape == (3, 16, 16) and ds[3][1] == 1
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    ds = image_folder(tmp_path, image_size=16)
    with pytest.raises(RepFusionError, match="broken.jpg is corrupt or truncated"):
        [ds[i] for i in range(len(ds))]
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    with pytest.raises(RepFusionError, match="holds no images"):
        image_folder(empty)
    with pytest.raises(RepFusionError, match="does not exist"):
        image_folder(tmp_path / "nope")


def test_digits_are_embedded_rgb_images():
    train, test = digits(True, 16), digits(False, 16)
    assert len(train) + len(test) == 1797
    img, label = train[0]
    assert img.shape == (3, 16, 16) and img.dtype == torch.uint8 and 0 <= label < 10
    assert torch.equal(img[0], img[1]) and img.max() > 200


def test_datamodule_holdout_and_loaders():
    dm = ImageDataModule(DataConfig(source="digits", batch_size=32, val_fraction=0.1))
    dm.setup()
    assert dm.num_classes == 10 and dm.sample_shape() == (3, 16, 16)
    assert len(dm.train_set) + len(dm.val_set) == len(digits(True, 16))
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (32, 3, 16, 16) and images.dtype == torch.uint8


def test_batch_augment_on_device():
    aug = BatchAugment(Augment(16, crop_padding=4, flip=True))
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    plain = aug(x, train=False)
    assert plain.dtype == torch.float32 and torch.allclose(plain, x.float() / 255)
    torch.manual_seed(0)
    out = aug(x, train=True)
    assert out.shape == plain.shape and 0 <= out.min() and out.max() <= 1
    assert not torch.allclose(out, plain)
