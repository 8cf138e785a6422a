"""With no labels, or too few to score a layer, the choice is the decoder's first block (pipeline.choice): the
variance-share score it replaces picked the first encoder block on digits, the layer closest to a random teacher
(benchmarks/results/choice_label_free_digits.md)."""

from __future__ import annotations

from repfusion.pipeline.choice import decoder_start


def test_the_decoder_start_is_the_lowest_numbered_up_or_output_block():
    assert decoder_start(["down_blocks.2", "mid_block", "up_blocks.1", "up_blocks.0"]) == "up_blocks.0"
    assert decoder_start(["input_blocks.11", "middle_block", "output_blocks.1", "output_blocks.0"]) == "output_blocks.0"
    assert decoder_start(["up_blocks.10", "up_blocks.2"]) == "up_blocks.2"  # by number, not by name


def test_a_teacher_without_a_decoder_has_no_decoder_start():
    assert decoder_start(["transformer_blocks.5", "transformer_blocks.6"]) is None
    assert decoder_start(["mid_block", "up_blocks.0.resnets.1"]) is None  # sub-layers are not blocks


def test_the_probe_gap_scores_both_teachers_on_the_same_images_and_noise():
    """probe_gap (the labelled choice's score and the layer benchmarks'): a teacher against itself has no gap at
    any layer, noised input included (both draw the same noise), and its features are the trained teacher's."""
    import numpy as np
    import torch
    from torch.utils.data import TensorDataset

    from repfusion.analysis.probe import pooled_features, probe_gap
    from repfusion.teachers import load_teacher

    torch.manual_seed(0)
    images, labels = torch.randint(0, 256, (24, 3, 16, 16), dtype=torch.uint8), torch.arange(24) % 2
    train, val = TensorDataset(images[:16], labels[:16]), TensorDataset(images[16:], labels[16:])
    teacher = load_teacher("tiny-16", init="random", init_seed=0)
    layers = ["down_blocks.0", "up_blocks.0"]
    probed = probe_gap(teacher, load_teacher("tiny-16", init="random", init_seed=0), train, val, 100, "noised", layers)
    assert all(probed.gap(layer) == 0 for layer in layers) and set(probed.trained) == set(layers)
    direct, _ = pooled_features(teacher, train, 100, "noised", layers, 256, 0)
    assert all(np.array_equal(probed.features[layer], direct[layer]) for layer in layers)
    other = probe_gap(teacher, load_teacher("tiny-16", init="random", init_seed=1), train, val, 0, "clean", layers)
    assert not np.array_equal(other.features["up_blocks.0"], other.random_features["up_blocks.0"])
