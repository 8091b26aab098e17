"""hf_zpd: a Zone-of-Proximal-Development curriculum for the Hugging Face Trainer.

Swap `Trainer` for `ZPDTrainer`; every epoch after the first then trains on the examples the model is about to
learn. See METHOD in the README for the formulas.
"""

import importlib
from typing import TYPE_CHECKING

# Where each public name lives. They are imported on first use (PEP 562), so that `hf-zpd --help` and the pure-numpy
# modules do not pay for importing transformers.
_EXPORTS = {
    "ZoneSelection": "band",
    "select_zone": "band",
    "ZPDConfig": "config",
    "CurriculumState": "curriculum",
    "CurriculumRecord": "record",
    "load_curriculum": "record",
    "ZPDSampler": "sampler",
    "draw_epoch": "sampler",
    "samples_per_epoch": "sampler",
    "ScoreTable": "scoring",
    "ExampleStatistics": "statistics",
    "competence": "statistics",
    "per_example_statistics": "statistics",
    "ZPDTrainer": "trainer",
}

if TYPE_CHECKING:
    from .band import ZoneSelection, select_zone
    from .config import ZPDConfig
    from .curriculum import CurriculumState
    from .record import CurriculumRecord, load_curriculum
    from .sampler import ZPDSampler, draw_epoch, samples_per_epoch
    from .scoring import ScoreTable
    from .statistics import ExampleStatistics, competence, per_example_statistics
    from .trainer import ZPDTrainer


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__version__ = "0.1.0"

__all__ = [
    "CurriculumRecord",
    "CurriculumState",
    "ExampleStatistics",
    "ScoreTable",
    "ZPDConfig",
    "ZPDSampler",
    "ZPDTrainer",
    "ZoneSelection",
    "competence",
    "draw_epoch",
    "load_curriculum",
    "per_example_statistics",
    "samples_per_epoch",
    "select_zone",
]
