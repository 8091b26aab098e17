"""The curriculum of a run: what every epoch draws and why, an object a reader can follow without the Trainer.

[`Curriculum`] owns the run's record (every epoch's draws, the zones, the score history), the learnability guard and
the training passes' statistics, and calls the pure epoch composition (selection.py). The trainer
(`ZPDTrainerMixin`) only translates the Trainer's hooks into calls on it:

    train start       Curriculum(...)             the run's facts: sizes, seeds, labels, the steps it will take
    epoch start       curriculum.begin_epoch(e)   plans epoch e if nothing did (the first epoch, or after a resume)
    each batch        curriculum.observe(...)     what this step taught us: the batch's per-example statistics
    epoch end         curriculum.end_epoch(e)     plans epoch e + 1, when one will train
    the sampler       curriculum.plan_for(e)      what epoch e draws
    checkpoints       curriculum.record, curriculum.training_pass_state()
    train end         curriculum.finish()         keeps the training passes of an epoch the run ended inside

What needs the model or the other processes comes in as functions: `score_pool(indices)` runs the scoring pass over
those training examples (collective), `merge(training_pass)` gathers the training passes' statistics of every
process (collective), and `log(metrics)` logs. Every process holds the same curriculum and calls them together.

Scores are taken only where they can change a draw: a scoring pass runs when a later epoch is composed from it,
never after the last epoch, in a run that ends inside its uniform first epoch, or when a recorded curriculum is
replayed. The learnability guard's first comparison needs a loss from before the first pass; it comes from the first
epoch's own training passes, not from an extra pass before training (unless `score_before_training`).

Every epoch's training passes (each example's statistics when the epoch drew it, before the step that trained on it,
and a classifier's class probabilities) go into the record at the epoch's end, at no extra forward: they are the
training-pass scores (`score_source="training_pass"`), the guard's first baseline, and the label audit's and the data
map's input (label_errors.py, data_map.py).

Epochs are numbered as the Trainer logs them: the first epoch is epoch 1. A scoring pass's boundary is the number of
epochs trained before it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
from transformers.utils import logging

from .band import band_around_level, log_difficulty
from .label_errors import audit_from_probabilities
from .record import CurriculumRecord, EpochDraw
from .reference import check_reference_fits
from .sampler import uniform_plan
from .scoring import SCORE_COLUMNS, ScoreTable, TrainingPassScores
from .selection import EpochPlan, anneal_samples, compose_epoch, guard_flags, high_loss_flags
from .statistics import ExampleStatistics

logger = logging.get_logger(__name__)


class Curriculum:
    """Plans every epoch of one run from the scores: uniform before any scores, then composed around the zone.

    Args:
        args ([`ZPDArguments`]): the curriculum's settings (a [`ZPDConfig`] or any config with those fields).
        record ([`CurriculumRecord`]): the run's record, with its settings; the curriculum fills its epochs and
            history.
        num_samples (`int`): N, the fixed length of every epoch.
        total_samples (`int`): the samples of the whole run (the annealing counts its last share).
        global_batch_size (`int`): the samples of one optimizer step over every process (the smallest zone).
        seed (`int`): the seed of the composition's random choices (`data_seed`, else `seed`).
        shuffle_seed (`int`): the seed of the plain Trainer's shuffle, which uniform epochs follow.
        labels (`np.ndarray` of int, *optional*): each example's class, for class balance.
        scoring_pool_size (`int`, *optional*): how many examples each scoring pass scores (not yet drawn first);
            `None` scores the whole set.
        prune_draws (`int`, *optional*, defaults to 0): the draws every composed epoch without annealing leaves out
            of the mastered region (`prune_fraction`; see [`~hf_zpd.selection.compose_epoch`]).
        reference (`ScoreTable`, *optional*): a reference model's scores of the training set (RHO-LOSS's holdout
            model), for `difficulty_mode="reducible"` and `out_of_reach="reference"`.
        score_pool (`Callable[[np.ndarray], tuple[ScoreTable, float]]`): scores those training examples, returns
            the table and its seconds. Collective.
        merge (`Callable[[TrainingPassScores], None]`): gathers every process's training-pass rows into the table.
            Collective.
        log (`Callable[[dict[str, float]], None]`): logs an epoch's `zpd/*` metrics.

    Example:

    ```python
    >>> curriculum = Curriculum(ZPDArguments(), record, num_samples=64, total_samples=192, global_batch_size=8,
    ...     seed=42, shuffle_seed=42, labels=None, score_pool=score, merge=merge, log=print)  # doctest: +SKIP
    >>> curriculum.begin_epoch(1)  # uniform: the plain Trainer's order  # doctest: +SKIP
    >>> curriculum.end_epoch(1, more_to_train=True)  # scores the pool, composes epoch 2 around the zone  # doctest: +SKIP
    >>> curriculum.plan_for(2).counts  # doctest: +SKIP

    ```
    """

    def __init__(
        self,
        args,
        record: CurriculumRecord,
        *,
        num_samples: int,
        total_samples: int,
        global_batch_size: int,
        seed: int,
        shuffle_seed: int,
        labels: np.ndarray | None,
        scoring_pool_size: int | None = None,
        prune_draws: int = 0,
        reference: ScoreTable | None = None,
        score_pool: Callable[[np.ndarray], tuple[ScoreTable, float]],
        merge: Callable[[TrainingPassScores], None],
        log: Callable[[dict[str, float]], None],
    ):
        self.args = args
        self.record = record
        self.num_samples = num_samples
        self.total_samples = total_samples
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.shuffle_seed = shuffle_seed
        self.labels = labels
        self.scoring_pool_size = scoring_pool_size
        self.prune_draws = prune_draws
        self.reference = reference
        self._score_pool = score_pool
        self._merge = merge
        self._log = log
        self.replaying = False
        self._reference_checked = False
        self._warned_label_errors = False
        self.epoch = 1  # the epoch being trained: its training passes are collected into `training_pass`
        self.training_pass: TrainingPassScores | None = TrainingPassScores(self.dataset_size)

    @property
    def dataset_size(self) -> int:
        return self.record.dataset_size

    @property
    def first_zone_epoch(self) -> int:
        """The first epoch drawn around a zone: 1 with `score_before_training`, else 2."""
        return 1 if self.args.score_before_training else 2

    # ---- what the sampler asks ----

    def plan_for(self, epoch: int) -> EpochPlan:
        """What `epoch` draws: its recorded draw, or uniform before it is planned (for the sampler's length checks).

        An epoch drawn uniformly is drawn in the plain Trainer's order, recomputed from the shuffle seed (the record
        keeps counts, not orders).
        """
        draw = self.record.epochs.get(epoch)
        if draw is None or draw.zone is None:
            uniform = uniform_plan(self.dataset_size, self.num_samples, self.shuffle_seed, epoch)
            if draw is None or np.array_equal(draw.counts, uniform.counts):
                return uniform
        return EpochPlan(
            draw.counts, draw.anneal_counts, draw.zone, draw.in_band, draw.out_of_reach, loss_weights=draw.loss_weights
        )

    def loss_weights(self, epoch: int) -> np.ndarray | None:
        """Each example's loss weight in `epoch` (pruning), or `None` when every weight is 1."""
        draw = self.record.epochs.get(epoch)
        return None if draw is None else draw.loss_weights

    # ---- the Trainer's moments ----

    def warn_if_inactive(self, last_epoch: int, max_steps: int, steps_per_epoch: int) -> None:
        """One log line when the run ends before any epoch can be drawn around a zone: then it trains as the plain
        Trainer does, and scores nothing."""
        if self.replaying or last_epoch >= self.first_zone_epoch:
            return
        logger.warning(
            f"ZPDTrainer: this run trains {max_steps} optimizer steps, and its first epoch ({steps_per_epoch} steps) "
            "is drawn uniformly because nothing is scored yet, so the curriculum does not act: the run trains as the "
            "plain Trainer does, in its order, and scores nothing. epoch_fraction=None would split a budget under one "
            "pass into 4 epochs and compose the last 3, but in hf_zpd's study that did worse than the plain Trainer "
            "(README, Results); score_before_training=True draws the first epoch around a zone."
        )

    def begin_epoch(self, epoch: int, running_ppl: float | None = None) -> None:
        """Plans `epoch` when no earlier moment did (the first epoch, or a resume before its plan)."""
        if self.epoch < epoch:  # resumed from a save on an earlier epoch's last step: that epoch's passes are whole
            self._close_training_pass()
        self.epoch = epoch
        if epoch not in self.record.epochs:
            self._plan_epoch(epoch, running_ppl)

    def end_epoch(self, epoch: int, more_to_train: bool, running_ppl: float | None = None) -> None:
        """Keeps the epoch's training passes in the record, then plans epoch `epoch + 1` from scores taken now, if it
        will train. Collective."""
        self.epoch = epoch
        self._close_training_pass()
        self.epoch = epoch + 1
        if more_to_train and epoch + 1 not in self.record.epochs:
            self._plan_epoch(epoch + 1, running_ppl)

    def finish(self) -> None:
        """At the end of training: keeps the training passes of an epoch the run ended inside (`max_steps`).
        Collective."""
        self._close_training_pass()

    def _close_training_pass(self) -> None:
        """Merges the current epoch's training passes over the processes into `record.training_passes` (collective)
        and starts the next epoch's."""
        if self.training_pass is None:
            return
        self._merge(self.training_pass)
        if self.training_pass.num_scored() > 0:
            self.record.training_passes[self.epoch] = (self.training_pass.table, self.training_pass.step)
        self.training_pass = TrainingPassScores(self.dataset_size)

    def observe(self, index, step: int, stats: ExampleStatistics) -> None:
        """Keeps a training batch's per-example statistics, where a later draw can use them (no host sync)."""
        if self.reference is not None and index is not None and not self._reference_checked:
            # The first batch (before any optimizer step): the reference must have scored these very examples.
            check_reference_fits(
                self.reference, np.asarray(index.cpu()), stats.num_tokens.cpu().numpy(), stats.vocab_size
            )
            self._reference_checked = True
        if self.training_pass is not None and index is not None:
            self.training_pass.add(index, step, stats)

    def training_pass_state(self) -> tuple[ScoreTable, np.ndarray, int] | None:
        """The current epoch's training passes so far for a checkpoint (merged over processes: collective), with the
        epoch; `None` when none are collected (a replay)."""
        if self.training_pass is None:
            return None
        self._merge(self.training_pass)
        return self.training_pass.table, self.training_pass.step, self.epoch

    # ---- resume and replay ----

    def restore(
        self, record: CurriculumRecord, training_pass: tuple[ScoreTable, np.ndarray, int | None] | None
    ) -> None:
        """Continues from a checkpoint's record (draws, zones, scoring passes, finished epochs' training passes) and
        the training passes of the epoch it was saved in."""
        self.record.epochs, self.record.history = record.epochs, record.history
        self.record.training_passes = record.training_passes
        self.training_pass = TrainingPassScores(self.dataset_size)
        if training_pass is not None:
            self.training_pass.table, self.training_pass.step, epoch = training_pass
            if epoch is not None:
                self.epoch = epoch

    def replay(self, record: CurriculumRecord, epochs: list[int], resumed_from: str | None) -> None:
        """Draws every epoch as `record` drew it, with no scoring pass (`replay_curriculum`).

        Raises:
            `ValueError`: the record does not fit this run (see [`CurriculumRecord.check_replay`]), or the
                checkpoint resumed from drew an epoch differently.
        """
        for epoch, draw in self.record.epochs.items():  # restored from a checkpoint of an earlier replay
            if not np.array_equal(draw.counts, record.epochs[epoch].counts):
                raise ValueError(
                    f"The checkpoint {resumed_from} drew epoch {epoch} differently from the replayed curriculum "
                    f"{record.source}: resume it with the replay_curriculum it was trained with."
                )
        self.record.epochs = dict(record.epochs)
        self.record.history = record.history
        self.record.settings = dict(record.settings, replayed_from=self.args.replay_curriculum)
        self.replaying = True
        self.training_pass = None  # the replayed record is the run's record; nothing new is collected
        logger.info(f"Replaying the curriculum {record.source}: epochs {sorted(record.epochs)} draw as recorded.")

    # ---- planning ----

    def _is_scoring_boundary(self, epoch: int) -> bool:
        """Scoring passes run before the first zone epoch and every `rescore_every` epochs after it."""
        first = self.first_zone_epoch
        return epoch >= first and (epoch - first) % self.args.rescore_every == 0

    def _plan_epoch(self, epoch: int, running_ppl: float | None) -> None:
        """Decides what `epoch` draws: uniformly before any scores, else the composition around the zone."""
        record, boundary = self.record, epoch - 1
        metrics: dict[str, float] = {"zpd/epoch": float(epoch)}
        if epoch < self.first_zone_epoch:
            plan = uniform_plan(self.dataset_size, self.num_samples, self.shuffle_seed, epoch)
            metrics.update({"zpd/uniform": 1.0, "zpd/num_skipped": float((plan.counts == 0).sum())})
            record.epochs[epoch] = EpochDraw(epoch, plan.counts, plan.anneal_counts, metrics=metrics)
            self._log(dict(metrics))
            return
        latest = record.history.latest(before=epoch)
        rescored = self._is_scoring_boundary(epoch) or latest is None
        guard_baseline = None
        if rescored:
            if not self._is_scoring_boundary(epoch):
                logger.warning(f"No scores to reuse for epoch {epoch}: scoring the pool now.")
            table, seconds, guard_baseline = self._scores_for_zone(boundary)
            previous = record.history.latest(before=boundary + 1)
            record.history.tables[boundary] = table
            metrics["zpd/scoring_seconds"] = seconds
            if previous is not None:
                metrics.update(learning_progress(previous[1], table, record.epochs.get(epoch - 1)))
            latest = (boundary, table)
        scored_at, table = latest
        plan = self.compose(epoch, scored_at, table, guard_baseline)
        metrics.update(self._pool_metrics(table, plan, running_ppl))
        metrics["zpd/rescored"] = float(rescored)
        bands = {
            -1 if group.label is None else group.label: tuple(
                math.exp(v) for v in (group.log_level, group.log_lower, group.log_upper)
            )
            for group in plan.groups
        }
        record.epochs[epoch] = EpochDraw(
            epoch,
            plan.counts,
            plan.anneal_counts,
            zone=plan.zone,
            in_band=plan.in_band,
            out_of_reach=plan.out_of_reach,
            scored_at=scored_at,
            bands=bands,
            metrics=metrics,
            loss_weights=plan.loss_weights,
        )
        self._log(dict(metrics))

    def _scores_for_zone(self, boundary: int) -> tuple[ScoreTable, float, ScoreTable | None]:
        """The scores behind a zone, their seconds, and the guard's baseline when it comes from the training passes.

        A scoring pass over the pool, or (`score_source="training_pass"`) the training passes of the epochs trained
        since the latest scores, laid over them. With the scoring-pass source, the first pass's guard baseline is the
        loss each example had when the training passes before it drew it.
        """
        start = time.perf_counter()
        previous = self.record.history.latest(before=boundary + 1)
        since = -1 if previous is None else previous[0]
        passes = self.training_passes_between(since, boundary)
        if self.args.score_source == "training_pass" and passes is not None:
            table = ScoreTable.empty(self.dataset_size) if previous is None else previous[1].copy()
            fresh = ~np.isnan(passes.num_tokens)
            for column in SCORE_COLUMNS:
                getattr(table, column)[fresh] = getattr(passes, column)[fresh]
            if passes.probabilities is not None:
                if table.probabilities is None or table.probabilities.shape != passes.probabilities.shape:
                    table.probabilities = np.full(passes.probabilities.shape, np.nan)
                table.probabilities[fresh] = passes.probabilities[fresh]
            table.vocab_size = passes.vocab_size
            return table, time.perf_counter() - start, None
        table, seconds = self._score_pool(self.pool_indices(boundary))
        baseline = passes if previous is None and self.args.score_source == "scoring_pass" else None
        return table, seconds, baseline

    def training_passes_between(self, after: int, boundary: int) -> ScoreTable | None:
        """The training passes of epochs `after + 1, ..., boundary` laid over each other (a later epoch's row wins),
        or `None` when none of them drew anything."""
        epochs = [epoch for epoch in range(after + 1, boundary + 1) if epoch in self.record.training_passes]
        if not epochs:
            return None
        merged = ScoreTable.empty(self.dataset_size)
        for epoch in epochs:
            table, _ = self.record.training_passes[epoch]
            drawn = ~np.isnan(table.num_tokens)
            for column in SCORE_COLUMNS:
                getattr(merged, column)[drawn] = getattr(table, column)[drawn]
            if table.probabilities is not None:
                if merged.probabilities is None:
                    merged.probabilities = np.full(table.probabilities.shape, np.nan)
                merged.probabilities[drawn] = table.probabilities[drawn]
            merged.vocab_size = table.vocab_size
        return merged

    def pool_indices(self, boundary: int) -> np.ndarray:
        """The training examples the pass at `boundary` scores: all, or `scoring_pool_size` of them, those not drawn
        by the epochs before it first (a seeded random choice among them), then a seeded random choice of the rest."""
        size = self.dataset_size
        pool_size = self.scoring_pool_size
        if pool_size is None or pool_size >= size:
            return np.arange(size, dtype=np.int64)
        drawn = np.zeros(size, dtype=bool)
        for epoch, draw in self.record.epochs.items():
            if epoch <= boundary:
                drawn |= draw.counts > 0
        rng = np.random.default_rng([self.seed, boundary, 1])
        fresh, seen = np.flatnonzero(~drawn), np.flatnonzero(drawn)
        if fresh.size >= pool_size:
            chosen = rng.choice(fresh, size=pool_size, replace=False)
        else:
            chosen = np.concatenate([fresh, rng.choice(seen, size=pool_size - fresh.size, replace=False)])
        return np.sort(chosen).astype(np.int64)

    def progress(self, epoch: int) -> float:
        """How far training is when `epoch` starts, from 0 (the start) to 1 (where annealing begins): the clock of
        `pacing="rising"` and `composition="easy_first"`."""
        composed = self.total_samples * (1.0 - self.args.anneal_fraction)
        return min(max((epoch - 1) * self.num_samples / composed, 0.0), 1.0) if composed > 0 else 1.0

    def log_difficulty(self, table: ScoreTable) -> np.ndarray:
        """log d_i: log V (1 - k_i) from the competence, or the reducible loss (learner minus reference)."""
        if self.args.difficulty_mode == "reducible":
            return table.loss - self.reference.loss
        return log_difficulty(table.competence(self.args.effective_competence_weights), table.vocab_size)

    def compose(
        self, epoch: int, scored_at: int, table: ScoreTable, guard_baseline: ScoreTable | None = None
    ) -> EpochPlan:
        """The epoch's draw counts from the pass at `scored_at` (selection.py), with the guard's flags."""
        drawable = table.finite() & (table.num_tokens > 0)
        if not drawable.any():
            pool = int((~np.isnan(table.num_tokens)).sum())
            no_targets = int((table.num_tokens == 0).sum())
            raise RuntimeError(
                f"None of the {pool} scored examples has finite statistics ({no_targets} have no supervised "
                "token, the rest gave NaN or inf logits). If the labels are all -100, check the collator and the "
                "label column; if the model diverged, lower the learning rate, set max_grad_norm, or use bf16 "
                "instead of fp16. The last checkpoint is intact."
            )
        args = self.args
        num_anneal = 0
        if args.composition == "zone_and_fill":
            num_anneal = anneal_samples(epoch, self.num_samples, self.total_samples, args.anneal_fraction)
        out_of_reach, capped = self.out_of_reach(scored_at, table, guard_baseline)
        listed = self.listed_label_errors(table, drawable)
        if listed is not None:
            out_of_reach = listed if out_of_reach is None else out_of_reach | listed
        plan = compose_epoch(
            args.composition_policy(self.global_batch_size, self.progress(epoch)),
            self.num_samples,
            self.log_difficulty(table),
            drawable,
            seed=self.seed,
            epoch=epoch,
            labels=self.labels,
            out_of_reach=out_of_reach,
            num_anneal=num_anneal,
            prune_draws=self.prune_draws,
        )
        if args.out_of_reach in ("high_loss", "reference"):
            plan.metrics["zpd/num_out_of_reach_capped"] = float(capped)
        if listed is not None:
            self._note_label_errors(epoch, listed, plan)
        if plan.metrics["zpd/num_widened"]:
            logger.info(
                f"Epoch {epoch}: the ZPD band held {int(plan.metrics['zpd/num_in_band'])} drawable examples, fewer "
                f"than the minimum: widened by the {int(plan.metrics['zpd/num_widened'])} nearest (zpd/num_widened)."
            )
        return plan

    def listed_label_errors(self, table: ScoreTable, drawable: np.ndarray) -> np.ndarray | None:
        """The label audit's list at the scores behind a zone (`exclude_label_errors`): the drawable examples whose
        predicted class is not their label; `None` where there is no audit (a language model, no class
        probabilities, or the setting off)."""
        labels = self.record.labels
        if not self.args.exclude_label_errors or labels is None or table.probabilities is None:
            return None
        if self.args.composition == "zone_only":  # the seed's literal rule draws only the zone: nothing to move
            return None
        if self.args.out_of_reach in ("high_loss", "reference"):  # their own flags leave the epoch altogether
            return None
        audit = audit_from_probabilities(table.probabilities, labels)
        return audit.listed & drawable

    def _note_label_errors(self, epoch: int, listed: np.ndarray, plan: EpochPlan) -> None:
        """The audit's metrics, and one log line the first time its list holds most of the band."""
        in_band = np.zeros(listed.size, dtype=bool)
        for group in plan.groups:  # every member inside its group's band, whatever the out-of-reach rules say
            in_band[group.members[group.distance == 0.0]] = True
        share = float((in_band & listed).sum() / in_band.sum()) if in_band.any() else 0.0
        plan.metrics["zpd/num_label_errors"] = float(listed.sum())
        plan.metrics["zpd/band_label_error_share"] = share
        if share > 0.5 and not self._warned_label_errors:
            self._warned_label_errors = True
            logger.warning(
                f"Epoch {epoch}: {share:.0%} of the examples in the ZPD band are on the label audit's list (the model "
                "predicts another class than their label), so the zone is dominated by likely label errors (on clean data: "
                "by the examples it has not learnt yet, the hardest ones). They are "
                "not repeated: the zone keeps the rest, and the epoch is near the plain Trainer's draw "
                f"({int(listed.sum())} examples listed in the pool). hf_zpd.likely_label_errors(trainer.curriculum) "
                "ranks them for a person to check; exclude_label_errors=False repeats them."
            )

    def out_of_reach(
        self, boundary: int, table: ScoreTable, baseline: ScoreTable | None = None
    ) -> tuple[np.ndarray | None, int]:
        """The out-of-reach flags for an epoch composed from the pass at `boundary` (its `table`), by
        `out_of_reach`, and how many more examples the bound kept out (`"high_loss"`, `"reference"`)."""
        rule = self.args.out_of_reach
        if rule == "none" or self.args.composition == "zone_only":
            return None, 0
        drawable = table.finite() & (table.num_tokens > 0)
        if rule == "learnability_guard":
            return self.learnability_guard(boundary, baseline), 0
        losses = table.loss if rule == "high_loss" else self.reference.loss
        return high_loss_flags(losses, drawable, self.labels, self.args.max_out_of_reach_fraction)

    def learnability_guard(self, boundary: int, baseline: ScoreTable | None = None) -> np.ndarray:
        """The learnability guard's flags after the pass at `boundary`: from that pass and the one before it, or,
        for the first pass, from `baseline` (the losses the first epoch's training passes measured)."""
        record = self.record
        size = self.dataset_size
        flagged = np.zeros(size, dtype=bool)
        for draw in record.epochs.values():
            if draw.scored_at == boundary:  # an earlier epoch composed from this pass: the flags it set
                flagged[draw.out_of_reach] = True
                return flagged
        previous = record.history.latest(before=boundary)
        if previous is not None:
            previous_boundary, before = previous
            for draw in record.epochs.values():
                if draw.scored_at == previous_boundary:  # the flags the previous pass set
                    flagged[draw.out_of_reach] = True
                    break
        elif baseline is not None:
            previous_boundary, before = 0, baseline
        else:
            return flagged
        # The epochs trained between the two measurements: previous_boundary + 1, ..., boundary.
        drawn = np.zeros(size, dtype=bool)
        for epoch in range(previous_boundary + 1, boundary + 1):
            if epoch in record.epochs:
                drawn |= record.epochs[epoch].counts > 0
        after = record.history.tables[boundary]
        return guard_flags(
            flagged,
            before.loss,
            after.loss,
            drawn,
            self.log_difficulty(after),
            after.finite() & (after.num_tokens > 0),
            self.labels if self.args.class_balance else None,
        )

    def _pool_metrics(self, table: ScoreTable, plan: EpochPlan, running_ppl: float | None) -> dict[str, float]:
        """The pool's and the zone's statistics for the log, and the draw's own metrics."""
        weights = self.args.effective_competence_weights
        pool = np.flatnonzero(~np.isnan(table.num_tokens))
        finite = table.finite()
        no_targets = table.num_tokens[pool] == 0
        log_level, log_lower, log_upper = band_around_level(
            self.log_difficulty(table)[pool], self.args.band_lower, self.args.band_upper, finite[pool]
        )
        metrics = {
            "zpd/ppl": float(np.exp(table.loss[pool][finite[pool]].mean())),
            "zpd/level": math.exp(log_level),
            "zpd/band_lower": math.exp(log_lower),
            "zpd/band_upper": math.exp(log_upper),
            "zpd/zone_fraction": plan.metrics["zpd/num_in_band"] / pool.size,
            "zpd/num_scored": float(pool.size),
            "zpd/num_nonfinite": float((~finite[pool] & ~no_targets).sum()),
            "zpd/num_no_targets": float(no_targets.sum()),
        }
        if running_ppl is not None and math.isfinite(running_ppl):  # none before the first training step
            metrics["zpd/running_ppl"] = running_ppl
        example_competence = table.competence(weights)
        for group, members in (("pool", pool[finite[pool]]), ("selected", plan.zone)):
            for name, values in (
                ("loss", table.loss),
                ("confidence", table.confidence),
                ("entropy", table.entropy),
                ("competence", example_competence),
            ):
                metrics[f"zpd/{group}_{name}"] = float(values[members].mean()) if members.size else math.nan
        metrics.update(plan.metrics)
        return metrics


def learning_progress(before: ScoreTable, after: ScoreTable, trained: EpochDraw | None) -> dict[str, float]:
    """How much the loss of the zone that was just trained on fell, against the rest of the pool (the hit rate)."""
    if trained is None or trained.zone is None:
        return {}
    both = before.finite() & after.finite()
    selected = np.zeros(len(after), dtype=bool)
    selected[trained.zone] = True
    drop = before.loss - after.loss
    in_zone, others = drop[both & selected], drop[both & ~selected]
    if in_zone.size == 0 or others.size == 0:
        return {}
    return {
        "zpd/selected_loss_drop": float(in_zone.mean()),
        "zpd/other_loss_drop": float(others.mean()),
        "zpd/hit_rate": float((in_zone > others.mean()).mean()),
    }
