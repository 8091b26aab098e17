"""`ZPDConfig`: the Trainer's `TrainingArguments` plus the ZPD curriculum's settings.

The curriculum's own fields live in [`ZPDArguments`], so that every trainer config hf_zpd extends (the Trainer's
`TrainingArguments` here, TRL's `SFTConfig` in `sft.py`) gets the same fields, docs and checks.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

from transformers import TrainingArguments

from .alignment import LABEL_ALIGNMENTS
from .selection import COMPOSITIONS, FILL_RULES, OUT_OF_REACH_FILL_PLACES, CompositionPolicy
from .statistics import COMPOSITE_WEIGHTS, LOSS_ONLY_WEIGHTS

DIFFICULTY_MODES = ("composite", "loss", "reducible")
OUT_OF_REACH_RULES = ("learnability_guard", "high_loss", "reference", "none")
PACINGS = ("fixed", "rising")
# `pacing="rising"`: the band's edges start at this share of the seed's, below the level (Wu et al.'s easy first).
RISING_BAND_START = 2 / 3
# `composition="easy_first"`: the share of each class, easiest first, that the first composed epoch cycles through.
EASY_FIRST_START = 0.5
SCORE_SOURCES = ("scoring_pass", "training_pass")


def _flag(default, help: str, choices=None):
    """A dataclass field that `HfArgumentParser` makes a documented flag (with its choices, when it has some)."""
    metadata = {"help": help} if choices is None else {"help": help, "choices": list(choices)}
    return field(default=default, metadata=metadata)


def _config_docstring(intro: str) -> str:
    """A config class's docstring: its own intro, then the curriculum fields' documentation of [`ZPDArguments`]."""
    return f"\n    {intro}\n" + ZPDArguments.__doc__.split("\n", 3)[3]


@dataclass
class ZPDArguments:
    r"""
    The ZPD curriculum's settings, shared by [`ZPDConfig`] and [`ZPDSFTConfig`]. Every field is also a command-line
    flag through [`~transformers.HfArgumentParser`].

    > Band

    band_lower (`float`, *optional*, defaults to `1.1`):
        Lower edge of the zone relative to the model's level D: an example is in the zone when
        `band_lower * D <= difficulty <= band_upper * D`.
    band_upper (`float`, *optional*, defaults to `1.3`):
        Upper edge of the zone relative to D.
    difficulty_mode (`str`, *optional*, defaults to `"composite"`):
        `"composite"` scores difficulty from the competence `0.4 loss + 0.35 confidence + 0.25 entropy` (weights set
        by `competence_weights`); `"loss"` uses the loss alone (ablation A1), which makes difficulty the example's
        perplexity; `"reducible"` uses the reducible loss of RHO-LOSS, the learner's loss minus a reference model's
        (`reference_scores` or the trainer's `reference_model`), so that difficulty is exp(learner - reference loss).
    pacing (`str`, *optional*, defaults to `"fixed"`):
        Where the band sits over training. `"fixed"`: at `[band_lower, band_upper] x D` in every epoch (the seed's
        band). `"rising"`: below the level early, rising with training: both edges are multiplied by a factor that
        grows linearly from 2/3 at the start of training to 1 where annealing begins.
    competence_weights (`list[float]`, *optional*, defaults to `[0.4, 0.35, 0.25]`):
        The (loss, confidence, entropy) weights of the composite competence; non-negative, summing to 1. Ignored in
        `"loss"` mode.

    > Epoch composition (how the zone becomes an epoch)

    composition (`str`, *optional*, defaults to `"zone_and_fill"`):
        `"zone_and_fill"`: each zone example is drawn up to `zone_repeats` times and the rest of the epoch is filled
        from outside the zone (`fill`), with `class_balance`, `out_of_reach` and `anneal_fraction`.
        `"zone_only"`: the seed's literal rule, every sample of the epoch cycles through the zone (plus
        `replay_fraction`); the composition fields below are then unused. `"easy_first"`: the easy-to-hard pacing
        of Wu, Dyer and Neyshabur (ICLR 2021), no band: each epoch cycles through the easiest share of each class,
        a share that grows linearly from 1/2 at the start of training to all of it where annealing begins.
    zone_repeats (`int`, *optional*, defaults to `2`):
        k, the most times a zone example is drawn in one epoch. With the epoch as large as the pool, k = 1 is uniform
        sampling; k > 1 emphasises the zone and skips the examples farthest from the model's level.
    fill (`str`, *optional*, defaults to `"nearest"`):
        How the rest of the epoch is drawn from outside the zone: `"nearest"` (nearest to the band first, in
        log-difficulty), `"weighted"` (sampled with weight exp(-distance / `fill_temperature`)) or `"uniform"`. Each
        example is drawn once before any is drawn twice.
    fill_temperature (`float`, *optional*, defaults to `0.25`):
        Temperature of the `"weighted"` fill, in log-difficulty (nats): lower keeps the fill nearer the band.
    class_balance (`bool`, *optional*, defaults to `True`):
        Classification only: the level D, the band and the minimum zone per class, and each class's share of the
        epoch kept at its share of the pool, so the zone never starves a class. Ignored when examples carry no single
        class label (causal LM, seq2seq).
    out_of_reach (`str`, *optional*, defaults to `"learnability_guard"`):
        Which examples are out of reach: never in the zone, however near the band. `"learnability_guard"`: an example
        that was drawn and trained on but whose loss did not fall between two measurements, and that is not below the
        model's level; it comes last in the fill (the first measurement is free: the loss each example had when the
        first epoch's training passes drew it, compared with the scoring pass after that epoch; later ones compare
        consecutive passes; with `score_before_training`, the pass before training is the first). `"high_loss"`: the
        small-loss criterion of Co-teaching and DivideMix, from the learner's own loss at each pass: in each class
        whose losses form two separate modes (a 2-component mixture, Ashman's D >= 2), the high-loss mode, likely
        mislabelled. `"reference"`: the same rule on a reference model's losses (`reference_scores` or the trainer's
        `reference_model`). Examples flagged by `"high_loss"` or `"reference"` leave the zone, the fill, replay and
        annealing while flagged. `"none"`: no example is out of reach.
    exclude_label_errors (`bool`, *optional*, defaults to `True`):
        Classifiers: the examples on the label audit's list when an epoch is composed (the class the model predicts
        at the scores behind the zone is not their label) are out of reach as well: never in the zone, so never
        repeated, and last in the fill (`out_of_reach_in_fill`). Under heavy label noise the band just above the model's level fills with
        flipped labels (51-56% of the zone under 40% flipped labels in hf_zpd's study); repeating them cost 3 points
        of accuracy against the plain Trainer. The more of the band the list holds, the smaller the zone and the
        nearer the epoch is to the plain Trainer's draw; the first time the list holds most of the band, one log line
        says so. No effect on language models, or with `out_of_reach="high_loss"` or `"reference"` (whose flags
        leave the epoch altogether).
    out_of_reach_in_fill (`str`, *optional*, defaults to `"last"`):
        Where the fill draws the out-of-reach examples of the learnability guard and the label audit: `"last"`
        (after every other candidate, so an epoch that repeats its zone skips them first) or `"anywhere"` (ranked by
        `fill` like any other candidate: they only stay out of the zone).
    max_out_of_reach_fraction (`float`, *optional*, defaults to `0.5`):
        The most of each class (or of the pool) that `"high_loss"` and `"reference"` may flag; the highest losses are
        kept, and `zpd/num_out_of_reach_capped` logs how many more the rule would have flagged. In (0, 1).
    anneal_fraction (`float`, *optional*, defaults to `0.125`):
        The last share of all training samples is drawn uniformly from the whole set, so the final steps see the whole
        distribution. In [0, 1).
    min_zone_fraction (`float`, *optional*, defaults to `0.05`):
        The smallest zone, as a fraction of the scored pool (of each class with class balance); never below one
        global batch (its class share). A smaller zone is widened to the examples nearest to the band, and the
        widening is logged.
    replay_fraction (`float`, *optional*, defaults to `0.0`):
        Share of each zone epoch drawn uniformly from the whole training set, against forgetting. In [0, 1).
    prune_fraction (`float`, *optional*, defaults to `0.0`):
        InfoBatch's unbiased pruning (Qin et al., ICLR 2024): every composed epoch leaves out a share r of the draws
        of mastered examples (below the level D of their class, not in the zone), at random, and weighs the loss of
        the mastered examples kept by 1 / (1 - r), so that the expected gradient is the unpruned epoch's; epochs with
        annealing draws are not pruned. Epochs are `1 - prune_fraction / 2` of their unpruned length (about half the
        pool is below the level), fixed before training, so `max_steps` and the schedule are known; the realised
        share is logged (`zpd/prune_rate`). The loss is then the weighted one, not the Trainer's. For classifiers,
        and causal LMs on the fused head; refused elsewhere, and with label smoothing or `compute_loss_func`. In [0, 1).
    token_selection_fraction (`float` or `None`, *optional*, defaults to `None`):
        Causal LMs, opt-in: Rho-1's selective language modelling (Lin et al., NeurIPS 2024). The training loss of each
        batch covers only this share of its supervised tokens, those with the highest excess loss (the learner's
        token loss minus a reference model's, the trainer's `reference_model`, run on every training batch without
        gradient), weighed so that the loss is their mean; the statistics and the curriculum still cover every
        token. Needs the fused head (a causal LM that `fused_cross_entropy` supports) for the model and the
        reference. In (0, 1].
    epoch_fraction (`float` or `None`, *optional*, defaults to `1.0`):
        Every epoch, the first included, draws `ceil(len(train_dataset) * epoch_fraction)` samples; below 1.0 trades
        data for compute. The Trainer fixes one epoch length for the whole run, so `max_steps` and the schedule are
        known before the first step. `None` is the budget mode: 1.0 when the run trains at least one pass over the
        training set, and under one pass (`max_steps` below one epoch, or `num_train_epochs` under 1) the budget split
        into 4 epochs of a quarter of it each, so that the curriculum acts within it (a `num_train_epochs` budget is
        kept as the same `max_steps`, and a log line says so). It is not the default: in hf_zpd's study, acting within a
        budget under one pass did worse than the plain Trainer on every task measured (README, Results).

    > Scoring pass

    scoring_pool_size (`int` or `None`, *optional*, defaults to `None`):
        Score a pool of this many training examples at each scoring pass instead of the whole set, examples not yet
        drawn in the run first (the rest at random, seeded). The zone and the fill come from the scored pool only
        (`replay_fraction` and annealing draw from the whole set). `None` scores the whole set when epochs are whole
        passes, and twice an epoch's samples when they are smaller (`epoch_fraction` < 1), so that each epoch is
        chosen from fresh candidates at a cost of about two forward passes per example trained.
    rescore_every (`int`, *optional*, defaults to `1`):
        Run the scoring pass every this many epochs; epochs in between recompose from the latest scores.
    score_before_training (`bool`, *optional*, defaults to `False`):
        Score the pool before the first epoch, so that the first epoch is already drawn around a zone (useful when
        fine-tuning a pretrained model with its own head, e.g. a causal LM). Otherwise the first epoch draws uniformly.
    score_source (`str`, *optional*, defaults to `"scoring_pass"`):
        Where the scores behind each zone come from. `"scoring_pass"` runs a forward pass over the pool in eval mode
        at each scoring boundary. `"training_pass"` re-uses the statistics that the training forward passes computed
        since the last zone (train mode, so with dropout; taken during the epoch, so up to one epoch stale), and runs
        no extra pass; examples not drawn since keep their latest score. A pass still runs when there is nothing to
        re-use, for `score_before_training`. Either way, nothing is scored that no later epoch is drawn from.
    scoring_batch_size (`int` or `None`, *optional*, defaults to `None`):
        Per-device batch size of the scoring pass; defaults to `per_device_eval_batch_size`.
    statistics_chunk_size (`int`, *optional*, defaults to `128`):
        Supervised positions projected to fp32 at once when computing the per-example statistics. Bounds the extra
        memory at `statistics_chunk_size x vocab` floats.
    label_alignment (`str`, *optional*, defaults to `"auto"`):
        How the model's logits line up with its labels for the statistics: `"auto"` decides once from the model (its
        config and class, unwrapped from peft; else its own loss on the first batch), `"shifted"` (position t
        predicts label t + 1: causal LMs) or `"aligned"` (classifiers, token classifiers, encoder-decoders).
    fused_cross_entropy (`bool` or `None`, *optional*, defaults to `None`):
        Causal LMs (GPT-2, Llama, Mistral, Qwen2/3, SmolLM3): compute the training loss, its gradient and the
        statistics from the last hidden states, `statistics_chunk_size` supervised rows at a time, so the full
        `[batch, seq, vocab]` logits never exist (the technique of Liger-Kernel's fused linear cross-entropy); it trains
        faster than the standard path and than the plain Trainer. The loss equals the Trainer's to float rounding
        (about 1e-6 relative), not bitwise. `None` turns it on where it applies (those classes with a plain `lm_head`,
        no label smoothing or `compute_loss_func`, no `torch_compile`, FSDP or DeepSpeed) and keeps the standard path
        elsewhere; `False` always takes the standard path, whose loss is bitwise the Trainer's; `True` where it does
        not apply is an error naming the reason. The scoring pass takes the same path as training (without gradient);
        evaluation keeps the model's own forward.
    running_ppl_decay (`float`, *optional*, defaults to `0.9`):
        Decay of the exponential moving average of the training loss behind `zpd/running_ppl`.

    > Curriculum record

    reference_scores (`str` or `None`, *optional*, defaults to `None`):
        A reference model's scores of the training set, computed once (`hf-zpd score --output FILE.parquet`, sharded
        under `accelerate launch`) and reused: the "more knowledgeable other" of RHO-LOSS. Used by
        `difficulty_mode="reducible"` and `out_of_reach="reference"`. The file's rows are matched by its id column
        when both have one, else by `zpd_example_index`; a file of another size, other ids, other labels or another
        vocabulary is refused at train start. The trainer's `reference_model` argument computes the same scores at
        train start instead.
    replay_curriculum (`str` or `None`, *optional*, defaults to `None`):
        Train by following a saved curriculum exactly, with no scoring pass: a record file (`.parquet`), a folder
        holding `zpd_curriculum.parquet` (a run's `output_dir` or a checkpoint), or a Hub dataset repo id pushed with
        [`ZPDTrainer.push_curriculum_to_hub`]. Every epoch draws the recorded counts, so on the same training set and
        with the same `seed` (or `data_seed`) and `epoch_fraction` the run makes the same draws as the recorded one; a
        different training set (size or ids), seed or epoch length is refused at train start. The band and
        composition settings are then unused.
    """

    band_lower: float = _flag(
        1.1, "Lower edge of the zone relative to the model's level D (lower*D <= d_i <= upper*D)."
    )
    band_upper: float = _flag(1.3, "Upper edge of the zone relative to the model's level D.")
    difficulty_mode: str = _flag(
        "composite", "'composite': difficulty from the competence; 'loss': the loss alone (A1).", DIFFICULTY_MODES
    )
    competence_weights: list[float] = field(
        default_factory=lambda: list(COMPOSITE_WEIGHTS),
        metadata={"help": "Weights (loss, confidence, entropy) of the composite competence; non-negative, sum 1."},
    )
    pacing: str = _flag(
        "fixed", "'fixed': the seed's band in every epoch; 'rising': below the level early, rising to it.", PACINGS
    )
    composition: str = _flag(
        "zone_and_fill",
        "'zone_and_fill': zone examples up to zone_repeats times, the rest filled nearest the band; 'zone_only': the "
        "seed's literal rule (the whole epoch cycles through the zone); 'easy_first': a growing easiest share.",
        COMPOSITIONS,
    )
    zone_repeats: int = _flag(2, "k: the most times a zone example is drawn in one epoch (zone_and_fill).")
    fill: str = _flag(
        "nearest", "How the rest of the epoch is drawn: nearest the band first, weighted, uniform.", FILL_RULES
    )
    fill_temperature: float = _flag(0.25, "Temperature of the weighted fill, in log-difficulty (nats).")
    class_balance: bool = _flag(
        True, "Classification: band per class, each class's epoch share kept at its pool share."
    )
    out_of_reach: str = _flag(
        "learnability_guard",
        "Out-of-reach rule: 'learnability_guard' (loss did not fall), 'high_loss' (the high mode of the learner's loss "
        "mixture), 'reference' (that of a reference model), 'none'.",
        OUT_OF_REACH_RULES,
    )
    exclude_label_errors: bool = _flag(
        True, "Classifiers: examples the label audit lists (the model predicts another class) are out of reach too."
    )
    out_of_reach_in_fill: str = _flag(
        "last",
        "Where the fill draws out-of-reach examples (the guard's and the label audit's): 'last', or 'anywhere' (they "
        "only stay out of the zone).",
        OUT_OF_REACH_FILL_PLACES,
    )
    max_out_of_reach_fraction: float = _flag(
        0.5, "The most of each class that 'high_loss' or 'reference' may flag, in (0, 1)."
    )
    anneal_fraction: float = _flag(0.125, "The last share of all training samples is drawn uniformly, in [0, 1).")
    min_zone_fraction: float = _flag(
        0.05, "Smallest zone as a fraction of the pool (per class), never below one global batch; widened if smaller."
    )
    replay_fraction: float = _flag(
        0.0, "Share of each zone epoch drawn uniformly from the whole training set, in [0, 1)."
    )
    prune_fraction: float = _flag(
        0.0, "InfoBatch: leave out this share of the mastered examples' draws, weigh the kept ones 1/(1-r), in [0, 1)."
    )
    token_selection_fraction: float | None = _flag(
        None, "Causal LMs: train on this share of tokens, highest excess loss over reference_model first (Rho-1)."
    )
    epoch_fraction: float | None = _flag(
        1.0,
        "Every epoch draws ceil(len(train_dataset) * epoch_fraction) samples, in (0, 1]. None: the budget mode (4 "
        "epochs over a budget under one pass).",
    )
    scoring_pool_size: int | None = _flag(
        None,
        "Score a pool of this many training examples (not yet drawn first), not the whole set. Default: the whole set, "
        "or twice an epoch when epochs are smaller than the set.",
    )
    rescore_every: int = _flag(1, "Run the scoring pass every this many epochs (epochs in between recompose).")
    score_before_training: bool = _flag(False, "Score before the first epoch, so that it is drawn around a zone.")
    score_source: str = _flag(
        "scoring_pass",
        "'scoring_pass': score the pool in eval mode at each boundary; 'training_pass': re-use the training passes' "
        "statistics (no extra pass, up to one epoch stale).",
        SCORE_SOURCES,
    )
    scoring_batch_size: int | None = _flag(
        None, "Per-device batch size of the scoring pass (default: the eval batch)."
    )
    statistics_chunk_size: int = _flag(128, "Supervised positions projected to fp32 at once for the statistics.")
    label_alignment: str = _flag(
        "auto",
        "How logits line up with labels: 'auto' (from the model), 'shifted' (causal LM), 'aligned'.",
        LABEL_ALIGNMENTS,
    )
    fused_cross_entropy: bool | None = _flag(
        None,
        "Causal LMs: loss and statistics chunk by chunk from the hidden states, never the full logits. Default: on "
        "where it applies; false: the standard path (loss bitwise the Trainer's).",
    )
    running_ppl_decay: float = _flag(0.9, "Decay of the moving average behind zpd/running_ppl, in [0, 1).")
    reference_scores: str | None = _flag(
        None, "A reference model's scores of the training set (hf-zpd score), for 'reducible' and 'reference'."
    )
    replay_curriculum: str | None = _flag(
        None,
        "Follow a saved curriculum exactly, with no scoring pass: a record file, a folder holding "
        "zpd_curriculum.parquet, or a Hub dataset repo id. The training set, seed and epoch_fraction must match.",
    )

    _argument_group_name = "the ZPD curriculum (ZPDConfig's own fields)"

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
        choices = {
            "difficulty_mode": DIFFICULTY_MODES,
            "out_of_reach": OUT_OF_REACH_RULES,
            "pacing": PACINGS,
            "composition": COMPOSITIONS,
            "fill": FILL_RULES,
            "out_of_reach_in_fill": OUT_OF_REACH_FILL_PLACES,
            "label_alignment": LABEL_ALIGNMENTS,
            "score_source": SCORE_SOURCES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                fail(name, f"got {getattr(self, name)!r}", f"Use one of {allowed}.")
        if isinstance(self.zone_repeats, bool) or not isinstance(self.zone_repeats, int) or self.zone_repeats < 1:
            fail("zone_repeats", f"must be an integer of at least 1, got {self.zone_repeats!r}", "The default is 2.")
        if not (math.isfinite(self.fill_temperature) and self.fill_temperature > 0):
            fail("fill_temperature", f"must be a positive number, got {self.fill_temperature}", "The default is 0.25.")
        if not 0 <= self.anneal_fraction < 1:
            fail(
                "anneal_fraction",
                f"must be in [0, 1), got {self.anneal_fraction}",
                "0 turns annealing off; 1.0 would draw all of training uniformly: use the plain Trainer for that.",
            )
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
            if value is not None and not 0 < value <= 1:
                fail(name, f"must be in (0, 1], got {value}", "It is a fraction of the training set.")
        if self.token_selection_fraction is not None and not 0 < self.token_selection_fraction <= 1:
            fail(
                "token_selection_fraction",
                f"must be in (0, 1], got {self.token_selection_fraction}",
                "It is the share of each batch's supervised tokens the loss keeps (Rho-1 used 0.6); None turns it off.",
            )
        if not 0 <= self.prune_fraction < 1:
            fail(
                "prune_fraction",
                f"must be in [0, 1), got {self.prune_fraction}",
                "It is the share of the mastered examples' draws each epoch leaves out; 0 turns pruning off.",
            )
        if not 0 < self.max_out_of_reach_fraction < 1:
            fail(
                "max_out_of_reach_fraction",
                f"must be in (0, 1), got {self.max_out_of_reach_fraction}",
                "It bounds the share of each class that may be flagged; the default is 0.5.",
            )
        if self.reference_scores is not None:
            self.reference_scores = os.fspath(self.reference_scores)
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

    def composition_policy(self, global_batch_size: int, progress: float = 1.0) -> CompositionPolicy:
        """The [`~hf_zpd.selection.CompositionPolicy`] these settings describe, at `progress` in [0, 1] (how far
        training is from its start to where annealing begins), which moves the band (`pacing="rising"`) and the easy
        share (`composition="easy_first"`)."""
        progress = min(max(progress, 0.0), 1.0)
        factor = 1.0 if self.pacing == "fixed" else RISING_BAND_START + (1 - RISING_BAND_START) * progress
        return CompositionPolicy(
            composition=self.composition,
            band_lower=self.band_lower * factor,
            band_upper=self.band_upper * factor,
            min_zone_fraction=self.min_zone_fraction,
            global_batch_size=global_batch_size,
            zone_repeats=self.zone_repeats,
            fill=self.fill,
            fill_temperature=self.fill_temperature,
            class_balance=self.class_balance,
            replay_fraction=self.replay_fraction,
            exclude_out_of_reach=self.out_of_reach in ("high_loss", "reference"),
            out_of_reach_in_fill=self.out_of_reach_in_fill,
            easy_fraction=EASY_FIRST_START + (1 - EASY_FIRST_START) * progress,
        )

    @property
    def uses_learnability_guard(self) -> bool:
        return self.out_of_reach == "learnability_guard" and self.composition != "zone_only"

    @property
    def needs_reference(self) -> bool:
        """Whether these settings read a reference model's scores."""
        return self.difficulty_mode == "reducible" or self.out_of_reach == "reference"

    @classmethod
    def from_training_arguments(cls, args: TrainingArguments):
        """This config class with every field of `args` that it has, and the ZPD defaults for the rest."""
        if isinstance(args, cls):
            return args
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init and f.name in names}
        return cls(**values)


@dataclass
class ZPDConfig(ZPDArguments, TrainingArguments):
    __doc__ = _config_docstring(
        "Configuration for [`ZPDTrainer`]: every [`~transformers.TrainingArguments`] field, plus the ZPD curriculum's\n"
        "    fields below (those of [`ZPDArguments`])."
    )

    _argument_group_name = "TrainingArguments and the ZPD curriculum (ZPDConfig)"

    def __post_init__(self):
        self._validate_zpd_fields()
        super().__post_init__()
