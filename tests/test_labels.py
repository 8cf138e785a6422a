"""Label fractions for fine-tuning: stratified, seeded, nested, disjoint from validation, finetune only."""

from __future__ import annotations

import numpy as np
import pytest

from repfusion.data import DataConfig, ImageDataModule
from repfusion.data.labels import dataset_labels, stratified_subset
from repfusion.errors import RepFusionError


def counts(labels: np.ndarray) -> np.ndarray:
    return np.bincount(labels, minlength=10)


def test_subset_is_stratified_with_at_least_one_per_class():
    labels = np.repeat(np.arange(10), [100, 50, 20, 10, 5, 3, 2, 1, 200, 9])
    keep = stratified_subset(labels, label_fraction=0.1, seed=0)
    np.testing.assert_array_equal(counts(labels[keep]), [10, 5, 2, 1, 1, 1, 1, 1, 20, 1])
    per_class = stratified_subset(labels, labels_per_class=4, seed=0)
    np.testing.assert_array_equal(counts(labels[per_class]), [4, 4, 4, 4, 4, 3, 2, 1, 4, 4])


def test_subset_is_seeded_and_nested():
    labels = np.random.default_rng(0).integers(0, 10, 1000)
    assert stratified_subset(labels, 0.2, seed=3) == stratified_subset(labels, 0.2, seed=3)
    assert stratified_subset(labels, 0.2, seed=3) != stratified_subset(labels, 0.2, seed=4)
    assert set(stratified_subset(labels, 0.1, seed=3)) <= set(stratified_subset(labels, 0.5, seed=3))
    assert stratified_subset(labels, 1.0) == list(range(1000))


@pytest.mark.parametrize(("fraction", "per_class", "message"), [
    (0.0, None, "label_fraction must lie in"), (1.5, None, "label_fraction must lie in"),
    (-0.1, None, "label_fraction must lie in"), (1.0, 0, "labels_per_class must be a positive"),
    (0.5, 10, "not both"),
])
def test_bad_budgets_are_one_sentence(fraction, per_class, message):
    with pytest.raises(RepFusionError, match=message):
        DataConfig(label_fraction=fraction, labels_per_class=per_class)


def test_finetune_data_is_cut_after_the_validation_holdout_and_other_stages_are_not():
    cfg = DataConfig(val_fraction=0.2, label_fraction=0.1, split_seed=1)
    full = ImageDataModule(cfg)
    full.setup()
    labelled = ImageDataModule(cfg, labelled_only=True)
    labelled.setup()
    assert len(full.val_set) == len(labelled.val_set) and full.val_set.indices == labelled.val_set.indices
    assert len(labelled.train_set) < 0.11 * len(full.train_set)
    # indices into the digits training split: the labelled images lie inside the training part, never in val
    train_ids = {full.train_set.indices[i] for i in labelled.train_set.indices}
    assert train_ids <= set(full.train_set.indices) and not train_ids & set(full.val_set.indices)
    train_counts = counts(dataset_labels(full.train_set))
    got = counts(dataset_labels(labelled.train_set))
    np.testing.assert_array_equal(got, np.maximum(1, np.round(train_counts * 0.1)))
    assert len(labelled.test_set) == len(full.test_set)


def test_labels_per_class_in_the_cli_config(tmp_path, capsys):
    from repfusion.cli import main

    args = ["finetune", "--run-dir", str(tmp_path), "--data.labels_per_class", "3", "--student.width", "0.125",
            "--trainer.max_epochs", "1", "--trainer.progress", "false", "--trainer.ema_decay", "null",
            "--trainer.limit_val_batches", "1"]
    assert main(args) == 0
    import json

    assert json.loads((tmp_path / "results.json").read_text())["train_images"] == 30
    capsys.readouterr()
    assert main(["finetune", "--run-dir", str(tmp_path / "bad"), "--data.label_fraction", "2"]) == 1
    assert "data.label_fraction must lie in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "checkpoints").exists()
