"""hf_zpd: a Zone-of-Proximal-Development curriculum for the Hugging Face Trainer.

Swap `Trainer` for `ZPDTrainer` (or TRL's `SFTTrainer` for `ZPDSFTTrainer`); every epoch after the first is then
drawn around the examples the model is about to learn. Swap TRL's `GRPOTrainer` for `ZPDGRPOTrainer`, and every
generation round draws the prompts whose groups are likely to be mixed, where GRPO's gradient is. The README's "How it works" has the formulas and the rules.
"""

import importlib
from typing import TYPE_CHECKING

# Where each public name lives. They are imported on first use (PEP 562), so that `hf-zpd --help` and the pure-numpy
# modules do not pay for importing transformers.
_EXPORTS = {
    "ZoneSelection": "band",
    "select_zone": "band",
    "ZPDArguments": "config",
    "ZPDConfig": "config",
    "CurriculumRecord": "record",
    "EpochDraw": "record",
    "load_curriculum": "hub",
    "likely_label_errors": "label_errors",
    "Curriculum": "curriculum",
    "push_curriculum": "hub",
    "ZPDSampler": "sampler",
    "samples_per_epoch": "sampler",
    "CompositionPolicy": "selection",
    "EpochPlan": "selection",
    "compose_epoch": "selection",
    "ScoreTable": "scoring",
    "ExampleStatistics": "statistics",
    "competence": "statistics",
    "per_example_statistics": "statistics",
    "ZPDTrainer": "trainer",
    "ZPDTrainerMixin": "trainer",
    "ZPDSFTConfig": "sft",
    "ZPDSFTTrainer": "sft",
    "ZPDGRPOConfig": "grpo",
    "ZPDGRPOTrainer": "grpo",
    "PromptCurriculum": "grpo_curriculum",
    "PromptRecord": "grpo_record",
}

if TYPE_CHECKING:
    from .band import ZoneSelection, select_zone
    from .config import ZPDArguments, ZPDConfig
    from .curriculum import Curriculum
    from .grpo import ZPDGRPOConfig, ZPDGRPOTrainer
    from .grpo_curriculum import PromptCurriculum
    from .grpo_record import PromptRecord
    from .hub import load_curriculum, push_curriculum
    from .label_errors import likely_label_errors
    from .record import CurriculumRecord, EpochDraw
    from .sampler import ZPDSampler, samples_per_epoch
    from .scoring import ScoreTable
    from .selection import CompositionPolicy, EpochPlan, compose_epoch
    from .sft import ZPDSFTConfig, ZPDSFTTrainer
    from .statistics import ExampleStatistics, competence, per_example_statistics
    from .trainer import ZPDTrainer, ZPDTrainerMixin


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__version__ = "0.5.0"

__all__ = [
    "CompositionPolicy",
    "Curriculum",
    "CurriculumRecord",
    "EpochDraw",
    "EpochPlan",
    "ExampleStatistics",
    "PromptCurriculum",
    "PromptRecord",
    "ScoreTable",
    "ZPDArguments",
    "ZPDConfig",
    "ZPDGRPOConfig",
    "ZPDGRPOTrainer",
    "ZPDSFTConfig",
    "ZPDSFTTrainer",
    "ZPDSampler",
    "ZPDTrainer",
    "ZPDTrainerMixin",
    "ZoneSelection",
    "competence",
    "compose_epoch",
    "likely_label_errors",
    "load_curriculum",
    "per_example_statistics",
    "push_curriculum",
    "samples_per_epoch",
    "select_zone",
]
