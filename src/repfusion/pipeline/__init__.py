"""`repfusion pretrain`: one command from a folder of images (and optionally a teacher and labels) to a
distilled backbone and an honest report against its baselines."""

from .config import DistillBudget, FinetuneBudget, LayerChoice, PretrainRun, StageBudget, StudentChoice, TeacherChoice
from .run import check_pretrain, run_pretrain

__all__ = ["DistillBudget", "FinetuneBudget", "LayerChoice", "PretrainRun", "StageBudget", "StudentChoice", "TeacherChoice",
           "check_pretrain",
           "run_pretrain"]
