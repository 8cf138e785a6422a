"""Issue 24 item 1: every config section checks its own values when it is built (`repfusion.section`).

The sections name themselves in messages by their `KEY`, so every run schema must keep each section under that
key; building a section any way (the parser, `replace`, the Python API) checks it, so no runner checks again.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import get_type_hints

import pytest

from repfusion.config import config_parser, parse_config
from repfusion.data import DataConfig
from repfusion.distill.run import DistillRun, LossSection
from repfusion.distill.timesteps import TimestepConfig
from repfusion.errors import RepFusionError
from repfusion.pipeline.config import PretrainRun
from repfusion.section import Section
from repfusion.tasks.finetune import FinetuneRun
from repfusion.teachers.train import TeacherRun
from repfusion.training import OptimConfig, TrainerConfig

RUN_SCHEMAS = (TeacherRun, DistillRun, FinetuneRun, PretrainRun)


@pytest.mark.parametrize("schema", RUN_SCHEMAS, ids=lambda s: s.__name__)
def test_every_section_sits_under_the_key_its_messages_name(schema):
    hints = get_type_hints(schema)
    sections = {f.name: hints[f.name] for f in fields(schema)
                if isinstance(hints[f.name], type) and issubclass(hints[f.name], Section)}
    assert sections, schema  # every run schema has sections, so the walk found them
    for name, section in sections.items():
        assert name == section.KEY, f"{schema.__name__}.{name} holds a {section.__name__}, whose messages say " \
                                    f"{section.KEY}.*"


@pytest.mark.parametrize("build,message", [
    (lambda: OptimConfig(lr=0), "optim.lr must be a positive learning rate"),
    (lambda: replace(OptimConfig(), milestones=[0]), "optim.milestones must be epochs >= 1"),
    (lambda: TrainerConfig(max_epochs=0), "trainer.max_epochs must be at least 1"),
    (lambda: TrainerConfig(seed=2**32), "trainer.seed must be a whole number in [0, 4294967295]"),
    (lambda: TrainerConfig(extra={"min_epochs": -1}), "trainer.extra's min_epochs must be a whole number >= 0"),
    (lambda: replace(DataConfig(), batch_size=0), "data.batch_size must be at least 1"),
    (lambda: DataConfig(split_seed=-1), "data.split_seed must be a whole number >= 0"),
    (lambda: TimestepConfig(baseline_momentum=1.0), "timesteps.baseline_momentum must be in [0, 1)"),
    (lambda: LossSection(kd_weight=float("nan")), "loss.kd_weight must be a number >= 0"),
])
def test_a_section_built_from_python_checks_itself(build, message):
    with pytest.raises(RepFusionError) as caught:
        build()
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_parser_passes_a_section_s_sentence_through_unchanged():
    parser = config_parser("repfusion finetune", FinetuneRun, "test")
    with pytest.raises(RepFusionError, match=r"^optim\.weight_decay must be 0 or more, not -1\.0\.$"):
        parse_config(parser, FinetuneRun, ["--optim.weight_decay", "-1"])


def test_values_left_null_for_a_budget_are_accepted():
    """pretrain's budget fills epochs and width later (`pipeline.budget.apply_budget`): null is valid when built."""
    cfg = PretrainRun()
    assert cfg.teacher.epochs is None and cfg.distill.epochs is None and cfg.student.width is None
    parser = config_parser("repfusion pretrain", PretrainRun, "test")
    parsed = parse_config(parser, PretrainRun, ["--data.root", "x"]).config
    assert parsed.finetune.epochs is None and parsed.data.root == "x"
