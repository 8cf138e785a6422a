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
