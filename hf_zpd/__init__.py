"""hf_zpd: a Zone-of-Proximal-Development curriculum for the Hugging Face Trainer.

Swap `Trainer` for `ZPDTrainer`; every epoch after the first then trains on the examples the model is about to
learn. See METHOD in the README for the formulas.
"""

from .band import ZoneSelection, select_zone
from .config import ZPDConfig
from .curriculum import CurriculumState
from .record import CurriculumRecord, load_curriculum
from .sampler import ZPDSampler, draw_epoch, samples_per_epoch
from .scoring import ScoreTable
from .statistics import ExampleStatistics, competence, per_example_statistics
from .trainer import ZPDTrainer

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
