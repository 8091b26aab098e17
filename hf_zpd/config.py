"""`ZPDConfig`: the Trainer's `TrainingArguments` plus the ZPD curriculum's settings."""

import dataclasses
import math
import os
from dataclasses import dataclass, field

from transformers import TrainingArguments

from .statistics import COMPOSITE_WEIGHTS, LOSS_ONLY_WEIGHTS

DIFFICULTY_MODES = ("composite", "loss")
SCORE_SOURCES = ("scoring_pass", "training_pass")


@dataclass
class ZPDConfig(TrainingArguments):
    r"""
    Configuration for [`ZPDTrainer`]: every [`~transformers.TrainingArguments`] field, plus the fields below. Every
    field is also a command-line flag through [`~transformers.HfArgumentParser`].

    > Band

    band_lower (`float`, *optional*, defaults to `1.1`):
        Lower edge of the zone relative to the model's level D: an example is in the zone when
        `band_lower * D <= difficulty <= band_upper * D`.
    band_upper (`float`, *optional*, defaults to `1.3`):
        Upper edge of the zone relative to D.
    difficulty_mode (`str`, *optional*, defaults to `"composite"`):
        `"composite"` scores difficulty from the competence `0.4 loss + 0.35 confidence + 0.25 entropy` (weights set
        by `competence_weights`); `"loss"` uses the loss alone (ablation A1), which makes difficulty the example's
        perplexity.
    competence_weights (`list[float]`, *optional*, defaults to `[0.4, 0.35, 0.25]`):
        The (loss, confidence, entropy) weights of the composite competence; non-negative, summing to 1. Ignored in
        `"loss"` mode.

    > Selection

    min_zone_fraction (`float`, *optional*, defaults to `0.05`):
        The smallest zone, as a fraction of the scored pool; never below one global batch. A smaller zone is widened
        to the examples nearest to the band, and the widening is logged.
    replay_fraction (`float`, *optional*, defaults to `0.0`):
        Share of each epoch drawn uniformly from the whole training set, against forgetting. In [0, 1).
    epoch_fraction (`float`, *optional*, defaults to `1.0`):
        Every epoch draws `ceil(len(train_dataset) * epoch_fraction)` samples; below 1.0 trades data for compute.

    > Scoring pass

    scoring_pool_size (`int` or `None`, *optional*, defaults to `None`):
        Score a random pool of this many training examples at each scoring pass instead of the whole set.
    rescore_every (`int`, *optional*, defaults to `1`):
        Run the scoring pass every this many epochs; epochs in between re-draw from the latest zone.
    score_before_training (`bool`, *optional*, defaults to `False`):
        Score the pool before the first epoch, so that epoch 0 already trains in the zone (useful when fine-tuning a
        pretrained model). Otherwise epoch 0 draws from the whole set.
    score_source (`str`, *optional*, defaults to `"scoring_pass"`):
        Where the scores behind each zone come from. `"scoring_pass"` runs a forward pass over the pool in eval mode
        at each scoring boundary. `"training_pass"` re-uses the statistics that the training forward passes computed
        since the last zone (train mode, so with dropout; taken during the epoch, so up to one epoch stale), and runs
        no extra pass; examples not drawn since keep their latest score. A pass still runs when there is nothing to
        re-use (before the first epoch with `score_before_training`).
    scoring_batch_size (`int` or `None`, *optional*, defaults to `None`):
        Per-device batch size of the scoring pass; defaults to `per_device_eval_batch_size`.
    statistics_chunk_size (`int`, *optional*, defaults to `128`):
        Supervised positions projected to fp32 at once when computing the per-example statistics. Bounds the extra
        memory at `statistics_chunk_size x vocab` floats.
    fused_cross_entropy (`bool`, *optional*, defaults to `False`):
        Causal LMs only (GPT-2, Llama, Mistral, Qwen2/3, SmolLM3): compute the training loss, its gradient and the
        statistics from the last hidden states, `statistics_chunk_size` supervised rows at a time, so the full
        `[batch, seq, vocab]` logits never exist (the technique of Liger-Kernel's fused linear cross-entropy). The
        loss equals the standard path's to float rounding. Refused, with the reason, for other models, with label
        smoothing or a `compute_loss_func`. Evaluation and the scoring pass keep the standard path.
    running_ppl_decay (`float`, *optional*, defaults to `0.9`):
        Decay of the exponential moving average of the training loss behind `zpd/running_ppl`.

    > Curriculum record

    replay_curriculum (`str` or `None`, *optional*, defaults to `None`):
        Train by following a saved curriculum exactly, with no scoring pass: a record file (`.parquet`), a folder
        holding `zpd_curriculum.parquet` (a run's `output_dir` or a checkpoint), or a Hub dataset repo id pushed with
        [`ZPDTrainer.push_curriculum_to_hub`]. Every epoch draws from the recorded zone, so on the same training set
        and with the same `seed` (or `data_seed`), `epoch_fraction`, `replay_fraction` and `score_before_training`
        the run makes the same draws as the recorded one; a different training set (size or ids) or any of those
        settings changed is refused at train start. The band settings are then unused.
    """

    band_lower: float = field(
        default=1.1,
        metadata={"help": "Lower edge of the zone relative to the model's level D (zone: lower*D <= d_i <= upper*D)."},
    )
    band_upper: float = field(
        default=1.3, metadata={"help": "Upper edge of the zone relative to the model's level D."}
    )
    difficulty_mode: str = field(
        default="composite",
        metadata={
            "help": "'composite': difficulty from the competence (loss, confidence, entropy); "
            "'loss': from the loss alone (ablation A1).",
            "choices": list(DIFFICULTY_MODES),
        },
    )
    competence_weights: list[float] = field(
        default_factory=lambda: list(COMPOSITE_WEIGHTS),
        metadata={"help": "Weights (loss, confidence, entropy) of the composite competence; non-negative, sum 1."},
    )
    min_zone_fraction: float = field(
        default=0.05,
        metadata={
            "help": "Smallest zone as a fraction of the scored pool, never below one global batch; "
            "a smaller zone is widened to the nearest examples (logged)."
        },
    )
    replay_fraction: float = field(
        default=0.0,
        metadata={"help": "Share of each epoch drawn uniformly from the whole training set, in [0, 1)."},
    )
    epoch_fraction: float = field(
        default=1.0,
        metadata={"help": "Each epoch draws ceil(len(train_dataset) * epoch_fraction) samples, in (0, 1]."},
    )
    scoring_pool_size: int | None = field(
        default=None,
        metadata={"help": "Score a random pool of this many training examples instead of the whole set."},
    )
    rescore_every: int = field(
        default=1, metadata={"help": "Run the scoring pass every this many epochs (epochs in between re-draw)."}
    )
    score_before_training: bool = field(
        default=False,
        metadata={"help": "Score the pool before the first epoch, so that epoch 0 already trains in the zone."},
    )
    score_source: str = field(
        default="scoring_pass",
        metadata={
            "help": "'scoring_pass': score the pool in eval mode at each boundary; 'training_pass': re-use the "
            "training forward passes' statistics (no extra pass, up to one epoch stale).",
            "choices": list(SCORE_SOURCES),
        },
    )
    scoring_batch_size: int | None = field(
        default=None,
        metadata={"help": "Per-device batch size of the scoring pass (default: per_device_eval_batch_size)."},
    )
    statistics_chunk_size: int = field(
        default=128,
        metadata={"help": "Supervised positions projected to fp32 at once for the per-example statistics."},
    )
    fused_cross_entropy: bool = field(
        default=False,
        metadata={
            "help": "Causal LMs only: compute the training loss and statistics chunk by chunk from the hidden states, "
            "never materialising the full logits (Liger-style fused linear cross-entropy)."
        },
    )
    running_ppl_decay: float = field(
        default=0.9,
        metadata={"help": "Decay of the moving average of training losses behind zpd/running_ppl, in [0, 1)."},
    )
    replay_curriculum: str | None = field(
        default=None,
        metadata={
            "help": "Follow a saved curriculum exactly, with no scoring pass: a record file, a folder holding "
            "zpd_curriculum.parquet, or a Hub dataset repo id. The training set, seed, epoch_fraction, "
            "replay_fraction and score_before_training must match the record's."
        },
    )

    def __post_init__(self):
        self._validate_zpd_fields()
        super().__post_init__()

    def _validate_zpd_fields(self) -> None:
        def fail(name: str, problem: str, fix: str) -> None:
            raise ValueError(f"ZPDConfig.{name}: {problem}. {fix}")

        if not (math.isfinite(self.band_lower) and self.band_lower > 0):
            fail("band_lower", f"must be a positive number, got {self.band_lower}", "The default is 1.1.")
        if not (math.isfinite(self.band_upper) and self.band_upper > self.band_lower):
            fail(
                "band_upper",
                f"must be greater than band_lower={self.band_lower}, got {self.band_upper}",
                "The defaults are band_lower=1.1, band_upper=1.3.",
            )
        if self.difficulty_mode not in DIFFICULTY_MODES:
            fail("difficulty_mode", f"got {self.difficulty_mode!r}", f"Use one of {DIFFICULTY_MODES}.")
        if self.score_source not in SCORE_SOURCES:
            fail("score_source", f"got {self.score_source!r}", f"Use one of {SCORE_SOURCES}.")
        weights = list(self.competence_weights)
        if len(weights) != 3:
            fail(
                "competence_weights",
                f"needs 3 numbers (loss, confidence, entropy), got {weights}",
                "E.g. 0.4 0.35 0.25.",
            )
        if any(not math.isfinite(w) or w < 0 for w in weights):
            fail("competence_weights", f"must be non-negative, got {weights}", "E.g. 0.4 0.35 0.25.")
        if abs(sum(weights) - 1.0) > 1e-6:
            fail("competence_weights", f"must sum to 1, got {weights} (sum {sum(weights)})", "E.g. 0.4 0.35 0.25.")
        for name in ("min_zone_fraction", "epoch_fraction"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                fail(name, f"must be in (0, 1], got {value}", "It is a fraction of the training set.")
        if not 0 <= self.replay_fraction < 1:
            fail(
                "replay_fraction",
                f"must be in [0, 1), got {self.replay_fraction}",
                "1.0 would draw every epoch uniformly: use the plain Trainer for that.",
            )
        for name in ("scoring_pool_size", "scoring_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                fail(name, f"must be a positive integer or None, got {value}", "Leave it unset for the default.")
        if self.rescore_every < 1:
            fail("rescore_every", f"must be at least 1, got {self.rescore_every}", "1 rescores at every epoch end.")
        if self.statistics_chunk_size < 1:
            fail(
                "statistics_chunk_size", f"must be at least 1, got {self.statistics_chunk_size}", "The default is 128."
            )
        if not 0 <= self.running_ppl_decay < 1:
            fail("running_ppl_decay", f"must be in [0, 1), got {self.running_ppl_decay}", "The default is 0.9.")
        if self.replay_curriculum is not None:
            if not isinstance(self.replay_curriculum, (str, os.PathLike)) or not str(self.replay_curriculum).strip():
                fail(
                    "replay_curriculum",
                    f"must be a path or a Hub dataset repo id, got {self.replay_curriculum!r}",
                    "Leave it unset to choose zones by scoring.",
                )
            self.replay_curriculum = os.fspath(self.replay_curriculum)

    @property
    def effective_competence_weights(self) -> tuple[float, float, float]:
        """The weights the competence uses: `competence_weights`, or (1, 0, 0) in `"loss"` mode."""
        return LOSS_ONLY_WEIGHTS if self.difficulty_mode == "loss" else tuple(self.competence_weights)

    @classmethod
    def from_training_arguments(cls, args: TrainingArguments) -> "ZPDConfig":
        """A `ZPDConfig` with every field of `args` and the ZPD defaults."""
        if isinstance(args, cls):
            return args
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainingArguments) if f.init}
        return cls(**values)
