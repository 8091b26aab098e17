"""The GRPO curriculum: which prompts each generation round draws, from the groups' rewards (pure numpy).

GRPO samples G completions per prompt and normalises their rewards within the group, so a prompt whose G completions
all pass, or all fail, has zero advantage: no gradient, full generation cost. [`PromptCurriculum`] draws each round's
prompts where the next group is likely to be *mixed* (METHOD.md, "The zone in reinforcement learning"):

    round k's prompts   B of the pool, without replacement, with probability proportional to max(score_i ** k, floor)
    score_i             A1 (`zone_signal="pass_rate"`): w_i P_hist,i(mixed) + (1 - w_i) P_pop(mixed)
                        (pass_rate.PassRateBeliefs.zone_scores, w_i = g_i / (g_i + kappa));
                        composite (`"composite"`, the default): a logistic regression of the mixed outcome on everything
                        known of the prompt when it is drawn (`FEATURE_NAMES`): the policy's confidence and entropy at
                        its first answer token and its length in tokens (one forward over a candidate set of
                        `candidates_per_round` x B prompts, drawn by the A1 score), and its own history (P_hist, its
                        pass-rate belief, how many groups back it and how long ago); refitted on the recent groups, so
                        it learns how far a stale history still holds while the policy moves
    P_hist              from the prompt's own groups: a Beta belief of its pass rate (binary rewards), or of its share of
                        mixed groups (other rewards: the zone follows the reward variance of the group), decayed as the
                        policy moves (half-life: one pass over the pool by default)
    P_pop               the population's recent share of mixed groups (a prompt never drawn)
    k                   `zone_sharpness`: 1 draws in proportion to P(mixed); larger k concentrates the draw on the
                        prompts most likely to give a mixed group (the band narrows)
    floor               mastered and out-of-reach prompts keep weight `zone_floor` (against about 1 in the zone), so
                        they are revisited: forgetting is measured, and what is out of reach today can enter later

In the seed's terms, the zone is a band of pass rates around the middle that moves as the policy learns; a prompt's
competence is its pass rate (A1), or that and the policy's confidence and entropy on it (the composite).

**The lag.** TRL and accelerate draw the next rounds before the current one is scored (the Trainer takes
`gradient_accumulation_steps` batches at once, accelerate prefetches one more; see [`RoundSchedule`]). So round k is
planned from the groups of the rounds scored when the pipeline draws it (its cutoff: k - 2 with TRL's defaults), and
of no later one: a plan is then a pure function of (those groups, the seed, k, and for the composite the policy when k
is drawn), whatever the timing, and identical on every process. A round whose groups are needed but not yet observed means the pipeline draws
further ahead than its settings say (a `RuntimeError` names them). Plans are kept, so a resumed run draws every round
it had drawn as it drew it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .pass_rate import (
    BeliefConfig,
    GroupOutcomes,
    MixedGroupPredictor,
    PassRateBeliefs,
    group_outcomes,
    importance_weights,
    inclusion_probabilities,
    rank_auc,
    weighted_sample,
)

ZONE_SIGNALS = ("composite", "pass_rate")
SELECTIONS = ("zone", "random", "uniform")
# What the trainer's features function gives for a prompt: the policy's confidence (max probability) and normalised
# entropy at its first answer token, and the prompt's length in tokens.
POLICY_FEATURE_NAMES = ("confidence", "entropy", "prompt_tokens")
# The composite's regressors: the policy's features (the length as its log and squared log, as the chance of a mixed
# group rises, then falls, with difficulty) and the prompt's own history when drawn (0 for a prompt never seen).
FEATURE_NAMES = (
    "confidence",
    "entropy",
    "log_prompt_tokens",
    "log_prompt_tokens_squared",
    "history_mixed",
    "pass_rate_logit",
    "log1p_groups",
    "log1p_rounds_since_seen",
)


@dataclass(frozen=True)
class RoundSchedule:
    """When the data pipeline draws each round, and so which rounds are scored by then (its cutoff).

    Measured with TRL 1.16 and accelerate 1.15 (tests/test_grpo.py checks it on real runs): each optimizer step
    starts by taking `gradient_accumulation_steps` (GA) dataloader batches (transformers 5.24 `get_batch_samples`), and
    accelerate's `DataLoaderShard` fetches one batch ahead of the one it yields, plus `worker_batches`
    (`prefetch_factor x dataloader_num_workers`) primed by torch's workers. A round spans R = `steps_per_generation x
    num_iterations` batches and is generated and scored at its first. Within an epoch, round k's first batch (k R) is
    fetched at the start of step t_k = max(0, ceil((k R - GA - w) / GA)), when the rounds generated at the
    micro-steps before t_k GA are scored: rounds up to ceil(t_k GA / R) - 1. Each epoch's iterator is new, so its first
    rounds are drawn after every round of the epochs before is scored.

    Args:
        rounds_per_epoch (`int`), repeat_count (`int`), gradient_accumulation_steps (`int`), worker_batches (`int`).
    """

    rounds_per_epoch: int
    repeat_count: int = 1
    gradient_accumulation_steps: int = 1
    worker_batches: int = 0

    def cutoff(self, round: int) -> int:
        """The last round whose groups are scored when `round` is drawn (-1: none)."""
        epoch, local = divmod(round, self.rounds_per_epoch)
        accumulation, repeat = self.gradient_accumulation_steps, self.repeat_count
        step = max(0, -(-(local * repeat - accumulation - self.worker_batches) // accumulation))
        scored_in_epoch = -(-(step * accumulation) // repeat)  # rounds generated before that step's micro-steps
        return epoch * self.rounds_per_epoch + scored_in_epoch - 1

    def lag(self, round: int) -> int:
        """Rounds drawn between the last scored one and `round`, exclusive."""
        return round - 1 - self.cutoff(round)


@dataclass
class RoundPlan:
    """What one round draws, and what the curriculum knew when it drew it.

    Args:
        round (`int`): the round (0 = the first generation batch of the run).
        prompts (`np.ndarray` of int64, shape `(B,)`): the prompts, in the order drawn.
        scores (`np.ndarray`): the zone score each was drawn with (before the floor).
        history_prediction (`np.ndarray`): A1's P(mixed) of each (its history blended with the population share).
        feature_prediction (`np.ndarray`): the composite's P(mixed) (NaN where not computed).
        pass_rate (`np.ndarray`): the belief's mean pass rate (scaled reward) of each.
        evidence (`np.ndarray`): the decayed number of groups behind each belief.
        weights (`np.ndarray`): the importance weight of each prompt's loss (1 without `importance_weighting`).
        cutoff (`int`): the last round whose groups the plan used (-1: none).
        features (`np.ndarray` of shape `(B, d)`, *optional*): the composite's features of each.
    """

    round: int
    prompts: np.ndarray
    scores: np.ndarray
    history_prediction: np.ndarray
    feature_prediction: np.ndarray
    pass_rate: np.ndarray
    evidence: np.ndarray
    weights: np.ndarray
    cutoff: int
    features: np.ndarray | None = None


@dataclass
class RoundOutcome:
    """What one round's groups gave: per group (one per drawn prompt, in the plan's order).

    Args:
        round (`int`), prompts (`np.ndarray` of int64, `(B,)`).
        rewards (`np.ndarray` of shape `(B, G)`): each completion's total reward as TRL sums it (NaN: unscorable).
        tokens (`np.ndarray` of shape `(B,)`): the completion tokens the group generated.
        step (`int`): the optimizer step the round was generated at.
    """

    round: int
    prompts: np.ndarray
    rewards: np.ndarray
    tokens: np.ndarray
    step: int
    summary: GroupOutcomes = field(init=False)

    def __post_init__(self):
        # Own contiguous copies: the arrays may be strided views of a torch tensor (a column of the groups), which a
        # checkpoint file would write from the wrong memory.
        self.prompts = np.array(self.prompts, dtype=np.int64, copy=True)
        self.rewards = np.array(self.rewards, dtype=np.float64, copy=True)
        self.tokens = np.array(self.tokens, dtype=np.float64, copy=True)
        self.summary = group_outcomes(self.rewards)


class PromptCurriculum:
    """Plans every generation round of a GRPO run from the rewards of the rounds before it.

    Args:
        num_prompts (`int`): the prompt pool's size.
        prompts_per_round (`int`): B, the distinct prompts of one generation batch.
        group_size (`int`): G, the completions per prompt.
        seed (`int`): the draws' seed; every random choice is a function of it and of the round.
        zone_signal (`str`, *optional*, defaults to `"composite"`): `"composite"` or `"pass_rate"` (A1).
        selection (`str`, *optional*, defaults to `"zone"`): `"zone"`; `"random"`, the random control (the A1 zone's
            weights, permuted across the pool each round: the same concentration on random prompts); or
            `"uniform"` (B prompts uniformly, no repeat within a round).
        zone_floor (`float`, *optional*, defaults to 0.05): the smallest weight of a prompt.
        zone_sharpness (`float`, *optional*, defaults to 1.0): k, the power of the score in a prompt's weight (>= 1).
        half_life (`float`, *optional*): rounds for an observation's weight to halve; default one pass over the pool
            (num_prompts / B rounds).
        prior_strength (`float`, *optional*, defaults to 1.0): kappa, in groups.
        candidates_per_round (`int`, *optional*, defaults to 4): the composite scores this many times B candidates.
        importance_weighting (`bool`, *optional*, defaults to `False`): weigh each prompt's loss by
            (B / N) / pi_i (self-normalised, clipped at `max_importance_weight`) so that the objective is the uniform
            draw's in expectation.
        max_importance_weight (`float`, *optional*, defaults to 10.0).
        reward_range (`tuple[float, float]`, *optional*): rewards' (lo, hi) for the pass rate; default learnt.
        schedule ([`RoundSchedule`] or `int`, *optional*, defaults to 1): when the pipeline draws each round (the
            trainer's), or a fixed lag: round k is then drawn once round k - 1 - lag is scored.
        features (`Callable[[np.ndarray], np.ndarray]`, *optional*): prompt indices -> `(n, 3)` features, in the
            order of `POLICY_FEATURE_NAMES` (the composite needs it; collective with several processes).
    """

    def __init__(
        self,
        num_prompts: int,
        prompts_per_round: int,
        group_size: int,
        seed: int,
        *,
        zone_signal: str = "composite",
        selection: str = "zone",
        zone_floor: float = 0.05,
        zone_sharpness: float = 1.0,
        half_life: float | None = None,
        prior_strength: float = 1.0,
        candidates_per_round: int = 4,
        importance_weighting: bool = False,
        max_importance_weight: float = 10.0,
        reward_range: tuple[float, float] | None = None,
        schedule: RoundSchedule | int = 1,
        features: Callable[[np.ndarray], np.ndarray] | None = None,
    ):
        if zone_signal not in ZONE_SIGNALS:
            raise ValueError(f"zone_signal must be one of {ZONE_SIGNALS}, got {zone_signal!r}.")
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}.")
        if prompts_per_round > num_prompts:
            raise ValueError(
                f"A round draws {prompts_per_round} distinct prompts, but the prompt dataset has {num_prompts}: give "
                "it more prompts, or lower generation_batch_size / num_generations."
            )
        self.num_prompts = num_prompts
        self.prompts_per_round = prompts_per_round
        self.group_size = group_size
        self.seed = seed
        self.zone_signal = zone_signal
        self.selection = selection
        self.zone_floor = zone_floor
        if not (math.isfinite(zone_sharpness) and zone_sharpness >= 1.0):
            raise ValueError(f"zone_sharpness must be a finite number >= 1, got {zone_sharpness}.")
        self.zone_sharpness = float(zone_sharpness)
        self.half_life = half_life if half_life is not None else max(num_prompts / prompts_per_round, 1.0)
        self.prior_strength = prior_strength
        self.candidates_per_round = candidates_per_round
        self.importance_weighting = importance_weighting
        self.max_importance_weight = max_importance_weight
        self.schedule = schedule
        self.features = features
        self.config = BeliefConfig(group_size, self.half_life, prior_strength, reward_range)
        self.beliefs = PassRateBeliefs(num_prompts, self.config)
        self.predictor = MixedGroupPredictor(len(FEATURE_NAMES))
        self.plans: dict[int, RoundPlan] = {}
        self.outcomes: dict[int, RoundOutcome] = {}
        self.refills: dict[int, list[RoundOutcome]] = {}  # extra generations of a round (the zero-variance filter)
        self.replayed: dict[int, np.ndarray] | None = None  # round -> prompts, when replaying a record
        self.applied = -1  # the last round whose groups the beliefs and the predictor hold

    @property
    def uses_features(self) -> bool:
        return self.selection == "zone" and self.zone_signal == "composite"

    # ---- planning ----

    def plan(self, round: int) -> RoundPlan:
        """Round `round`'s draw: the kept plan, or a new one from the groups of rounds up to `round - 1 - lag`.

        Raises:
            `RuntimeError`: a round the plan needs was drawn but its groups were never observed (the pipeline draws
                further ahead than `lag` rounds).
        """
        if round in self.plans:
            return self.plans[round]
        if self.replayed is not None:
            return self._replayed_plan(round)
        cutoff = self.cutoff(round)
        self._apply_up_to(cutoff, round)
        plan = self._draw(round, cutoff)
        self.plans[round] = plan
        return plan

    def replay(self, rounds: dict[int, np.ndarray], source: str) -> None:
        """Draws every round as a recorded run drew it (`replay_curriculum`): the same prompts, in the same order.

        Raises:
            `ValueError`: a recorded prompt index outside this prompt dataset, or a round of another size.
        """
        for round, prompts in rounds.items():
            if prompts.size != self.prompts_per_round or (prompts >= self.num_prompts).any():
                raise ValueError(
                    f"Cannot replay {source}: its round {round} drew {prompts.size} prompts (indices up to "
                    f"{prompts.max()}), but this run draws {self.prompts_per_round} per round from {self.num_prompts} "
                    "prompts. Replay it with the prompt dataset and batch settings it was recorded with."
                )
        self.replayed = dict(rounds)
        self.replay_source = source

    def _replayed_plan(self, round: int) -> RoundPlan:
        if round not in self.replayed:
            raise ValueError(
                f"The run draws round {round}, but the replayed curriculum {self.replay_source} has rounds "
                f"0..{max(self.replayed)} only: train at most as many steps as the recorded run."
            )
        prompts = self.replayed[round]
        nan = np.full(prompts.size, np.nan)
        plan = RoundPlan(round, prompts.copy(), nan, nan, nan, nan, nan, np.ones(prompts.size), cutoff=-1)
        self.plans[round] = plan
        return plan

    def cutoff(self, round: int) -> int:
        """The last round whose groups the plan of `round` reads."""
        if isinstance(self.schedule, RoundSchedule):
            return self.schedule.cutoff(round)
        return round - 1 - int(self.schedule)

    @property
    def lag(self) -> int:
        """The most rounds drawn between the last scored one and the one drawn (the first epoch's steady state)."""
        if isinstance(self.schedule, RoundSchedule):
            return max(self.schedule.lag(r) for r in range(min(self.schedule.rounds_per_epoch, 64)))
        return int(self.schedule)

    def _apply_up_to(self, cutoff: int, drawing: int | None = None) -> None:
        """Folds the groups of rounds `applied + 1 .. cutoff` into the beliefs and the predictor, in order."""
        for round in range(self.applied + 1, cutoff + 1):
            outcome = self.outcomes.get(round)
            if outcome is None:
                if round in self.plans:
                    raise RuntimeError(
                        f"Round {drawing} is being drawn before the rewards of round {round} exist: the data pipeline "
                        "draws further ahead than hf_zpd's schedule of TRL's pipeline says. Use "
                        "dataloader_num_workers=0, or report the settings (gradient_accumulation_steps, "
                        "steps_per_generation, num_iterations) that cause it."
                    )
                continue  # never drawn (a resumed run's rounds before its first plan): nothing to learn from
            self.beliefs.observe(round, outcome.prompts, outcome.rewards)
            plan = self.plans.get(round)
            if plan is not None and plan.features is not None:
                self.predictor.add(plan.features, outcome.summary.mixed)
            for refill in self.refills.get(round, []):  # the filter's extra groups are observations too
                self.beliefs.observe(round, refill.prompts, refill.rewards)
            self.applied = round
        if self.uses_features and self.applied >= 0:
            self.predictor.fit()

    def _rng(self, round: int, purpose: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, round, purpose])

    def _weights(self, scores: np.ndarray) -> np.ndarray:
        """max(score ** k, floor): the draw's weight of each score."""
        return np.maximum(scores**self.zone_sharpness, self.zone_floor)

    def _history_features(self, now: int, prompts: np.ndarray) -> np.ndarray:
        """The prompts' own history at round `now`, as the composite reads it: `(n, 4)` in the order of the last four
        `FEATURE_NAMES`, zeros for a prompt never seen."""
        if self.beliefs.round < 0:
            return np.zeros((prompts.size, 4))
        seen = self.beliefs.visits[prompts] > 0
        rate = np.clip(self.beliefs.pass_rate(now)[prompts], 1e-3, 1.0 - 1e-3)
        groups = self.beliefs.decayed(now)["groups"][prompts]
        since = np.where(seen, now - self.beliefs.last_round[prompts], 0.0)
        history = self.beliefs.history_mixed_probability(now)[prompts]
        return np.column_stack(
            [np.where(seen, history, 0.0), np.where(seen, np.log(rate / (1.0 - rate)), 0.0), np.log1p(groups),
             np.log1p(since)]
        )  # fmt: skip

    def composite_features(self, now: int, prompts: np.ndarray, policy: np.ndarray) -> np.ndarray:
        """The composite's regressors (`FEATURE_NAMES`) of `prompts` at round `now`, from the policy's features
        `(n, 3)` (`POLICY_FEATURE_NAMES`)."""
        policy = np.asarray(policy, dtype=np.float64)
        if policy.shape != (prompts.size, len(POLICY_FEATURE_NAMES)) or not np.isfinite(policy).all():
            raise ValueError(
                f"The features function must return finite ({prompts.size}, {len(POLICY_FEATURE_NAMES)}) values "
                f"({', '.join(POLICY_FEATURE_NAMES)}), got shape {policy.shape}."
            )
        log_tokens = np.log(np.maximum(policy[:, 2], 1.0))
        return np.column_stack([policy[:, :2], log_tokens, log_tokens**2, self._history_features(now, prompts)])

    def _draw(self, round: int, cutoff: int) -> RoundPlan:
        size = self.prompts_per_round
        now = max(round, self.beliefs.round)
        share = self.beliefs.population_mixed_share(now)
        history = self.beliefs.zone_scores(now, share)  # A1's score of every prompt
        pass_rate = self.beliefs.pass_rate(now)
        evidence = self.beliefs.decayed(now)["groups"]
        weights = self._weights(history)
        feature_prediction = np.full(self.num_prompts, np.nan)
        features = None
        if self.selection == "uniform":
            weights = np.ones(self.num_prompts)
            chosen = weighted_sample(weights, size, self._rng(round, 0))
            inclusion = np.full(self.num_prompts, size / self.num_prompts)
            scores = history
        elif self.selection == "random":
            weights = self._rng(round, 1).permutation(weights)
            chosen = weighted_sample(weights, size, self._rng(round, 0))
            inclusion = inclusion_probabilities(weights, size)
            scores = history
        elif not self.uses_features:
            chosen = weighted_sample(weights, size, self._rng(round, 0))
            inclusion = inclusion_probabilities(weights, size)
            scores = history
        else:
            # Two stages: candidates by the A1 score (no forward), then the composite's prediction among them.
            count = min(self.num_prompts, max(size, self.candidates_per_round * size))
            first_weights = np.maximum(history, self.zone_floor)
            candidates = weighted_sample(first_weights, count, self._rng(round, 2))
            first = inclusion_probabilities(first_weights, count)
            if self.features is None:
                raise ValueError("zone_signal='composite' needs a features function (the trainer provides one).")
            candidate_features = self.composite_features(now, candidates, self.features(candidates))  # (C, d)
            predicted = self.predictor.predict(candidate_features)
            scores = history.copy()
            feature_prediction[candidates] = predicted
            scores[candidates] = predicted
            second_weights = self._weights(predicted)
            picked = weighted_sample(second_weights, size, self._rng(round, 3))
            chosen = candidates[picked]
            inclusion = np.zeros(self.num_prompts)
            inclusion[candidates] = first[candidates] * inclusion_probabilities(second_weights, size)
            features = candidate_features[picked]
        weights_of_loss = np.ones(size)
        if self.importance_weighting:
            weights_of_loss = importance_weights(inclusion, chosen, self.num_prompts, self.max_importance_weight)
        return RoundPlan(
            round=round,
            prompts=chosen.astype(np.int64),
            scores=scores[chosen],
            history_prediction=history[chosen],
            feature_prediction=feature_prediction[chosen],
            pass_rate=pass_rate[chosen],
            evidence=evidence[chosen],
            weights=weights_of_loss,
            cutoff=cutoff,
            features=features,
        )

    # ---- observing ----

    def next_unobserved_round(self) -> int | None:
        """The first planned round whose groups have not been observed, or `None`."""
        waiting = [round for round in self.plans if round not in self.outcomes]
        return min(waiting) if waiting else None

    def observe(self, prompts: np.ndarray, rewards: np.ndarray, tokens: np.ndarray, step: int) -> RoundOutcome | None:
        """Records the groups of the next planned round; `None` for a round observed again (a resume that
        regenerates the round it stopped in: TRL does not checkpoint its buffered generations).

        Args:
            prompts (`np.ndarray` of int, `(B,)`): each group's prompt, in generation order.
            rewards (`np.ndarray`, `(B, G)`): each completion's total reward.
            tokens (`np.ndarray`, `(B,)`): each group's generated completion tokens.
            step (`int`): the optimizer step.

        Raises:
            `RuntimeError`: the groups are not those of any planned round (the sampler was bypassed).
        """
        prompts = np.asarray(prompts, dtype=np.int64)
        round = self.next_unobserved_round()
        if round is not None and np.array_equal(self.plans[round].prompts, prompts):
            outcome = RoundOutcome(
                round, prompts, np.asarray(rewards, np.float64), np.asarray(tokens, np.float64), step
            )
            self.outcomes[round] = outcome
            return outcome
        last = max(self.outcomes) if self.outcomes else None
        if last is not None and np.array_equal(self.outcomes[last].prompts, prompts):
            return None
        raise RuntimeError(
            f"The generation batch's prompts {prompts[:8].tolist()}... are not those the curriculum drew for round "
            f"{round}: the train dataloader does not use ZPDGRPOTrainer's sampler (a custom get_train_dataloader?)."
        )

    def refill_prompts(self, round: int, attempt: int) -> np.ndarray:
        """The prompts of the zero-variance filter's `attempt`-th extra generation of `round` (DAPO's dynamic
        sampling): B prompts drawn uniformly among those the round has not generated yet, seeded by (round, attempt)."""
        used = set(self.plans[round].prompts.tolist())
        for refill in self.refills.get(round, []):
            used.update(refill.prompts.tolist())
        free = np.setdiff1d(np.arange(self.num_prompts), np.fromiter(used, dtype=np.int64))
        if free.size == 0:
            return np.zeros(0, dtype=np.int64)
        rng = self._rng(round, 100 + attempt)
        return np.sort(rng.choice(free, size=min(self.prompts_per_round, free.size), replace=False)).astype(np.int64)

    def observe_refill(
        self, round: int, prompts: np.ndarray, rewards: np.ndarray, tokens: np.ndarray, step: int
    ) -> RoundOutcome:
        """Records the groups of one of the filter's extra generations of `round`."""
        outcome = RoundOutcome(round, np.asarray(prompts, np.int64), np.asarray(rewards, np.float64),
                               np.asarray(tokens, np.float64), step)  # fmt: skip
        self.refills.setdefault(round, []).append(outcome)
        return outcome

    # ---- reporting ----

    def round_metrics(self, outcome: RoundOutcome) -> dict[str, float]:
        """The `zpd/*` metrics of an observed round."""
        plan = self.plans[outcome.round]
        summary = outcome.summary
        metrics = {
            "zpd/frac_zero_variance": float(1.0 - summary.mixed.mean()),
            "zpd/predicted_mixed": float(plan.scores.mean()),
            "zpd/pass_rate": float(np.nanmean(summary.mean)) if np.isfinite(summary.mean).any() else math.nan,
            "zpd/completion_tokens": float(outcome.tokens.sum()),
            "zpd/rollouts": float(summary.count.size * self.group_size),
            "zpd/seen_prompts": float((self.beliefs.visits > 0).sum()),
            "zpd/importance_weight_max": float(plan.weights.max()),
        }
        refills = self.refills.get(outcome.round, [])
        if refills:
            metrics["zpd/filter_generations"] = float(len(refills))
            metrics["zpd/completion_tokens"] += float(sum(refill.tokens.sum() for refill in refills))
            metrics["zpd/rollouts"] += float(sum(refill.summary.count.size for refill in refills) * self.group_size)
        window = [self.outcomes[r] for r in sorted(self.outcomes)[-64:]]
        labels = np.concatenate([o.summary.mixed for o in window])
        for name, attribute in (("history", "history_prediction"), ("features", "feature_prediction")):
            scores = np.concatenate([getattr(self.plans[o.round], attribute) for o in window])
            auc = rank_auc(scores, labels)
            if math.isfinite(auc):
                metrics[f"zpd/auc_{name}"] = auc
        return metrics

    # ---- checkpoints ----

    def state_arrays(self) -> tuple[dict[str, np.ndarray], dict]:
        """Every array of the state (float64 / int64) and the JSON rest, for a checkpoint file."""
        arrays: dict[str, np.ndarray] = {}
        meta: dict = {"applied": self.applied, "plans": sorted(self.plans), "outcomes": sorted(self.outcomes)}
        beliefs = self.beliefs.state_dict()
        for key, value in beliefs.items():
            if isinstance(value, np.ndarray):
                arrays[f"beliefs.{key}"] = value
            else:
                meta.setdefault("beliefs", {})[key] = value
        predictor = self.predictor.state_dict()
        for key, value in predictor.items():
            if isinstance(value, np.ndarray):
                arrays[f"predictor.{key}"] = value
            else:
                meta.setdefault("predictor", {})[key] = value
        for round, plan in self.plans.items():
            for name in ("prompts", "scores", "history_prediction", "feature_prediction", "pass_rate", "evidence",
                         "weights"):  # fmt: skip
                arrays[f"plan.{round}.{name}"] = getattr(plan, name)
            if plan.features is not None:
                arrays[f"plan.{round}.features"] = plan.features
            meta.setdefault("cutoffs", {})[str(round)] = plan.cutoff
        for round, outcome in self.outcomes.items():
            arrays[f"outcome.{round}.prompts"] = outcome.prompts
            arrays[f"outcome.{round}.rewards"] = outcome.rewards
            arrays[f"outcome.{round}.tokens"] = outcome.tokens
            meta.setdefault("steps", {})[str(round)] = outcome.step
        for round, refills in self.refills.items():
            meta.setdefault("refills", {})[str(round)] = [refill.step for refill in refills]
            for attempt, refill in enumerate(refills):
                arrays[f"refill.{round}.{attempt}.prompts"] = refill.prompts
                arrays[f"refill.{round}.{attempt}.rewards"] = refill.rewards
                arrays[f"refill.{round}.{attempt}.tokens"] = refill.tokens
        return {key: np.ascontiguousarray(value) for key, value in arrays.items()}, meta

    def load_state_arrays(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        """Restores what [`state_arrays`] saved, bitwise."""
        beliefs = {key.split(".", 1)[1]: value for key, value in arrays.items() if key.startswith("beliefs.")}
        beliefs.update(meta.get("beliefs", {}))
        self.beliefs = PassRateBeliefs.from_state_dict(beliefs, self.config)
        predictor = {key.split(".", 1)[1]: value for key, value in arrays.items() if key.startswith("predictor.")}
        predictor.update(meta.get("predictor", {}))
        self.predictor = MixedGroupPredictor.from_state_dict(predictor)
        if self.predictor.num_features != len(FEATURE_NAMES):
            raise ValueError(
                f"This curriculum state's composite has {self.predictor.num_features} features, this hf_zpd's has "
                f"{len(FEATURE_NAMES)} ({', '.join(FEATURE_NAMES)}): it was saved by another version (hf_zpd 0.4 had "
                "2). Resume it with the version that saved it, or start the run again."
            )
        self.plans = {}
        for round in meta["plans"]:
            prefix = f"plan.{round}."
            self.plans[round] = RoundPlan(
                round=round,
                cutoff=int(meta["cutoffs"][str(round)]),
                features=arrays.get(prefix + "features"),
                **{name: arrays[prefix + name] for name in ("prompts", "scores", "history_prediction",
                                                             "feature_prediction", "pass_rate", "evidence", "weights")},
            )  # fmt: skip
        self.outcomes = {}
        for round in meta["outcomes"]:
            prefix = f"outcome.{round}."
            self.outcomes[round] = RoundOutcome(
                round, arrays[prefix + "prompts"], arrays[prefix + "rewards"], arrays[prefix + "tokens"],
                int(meta["steps"][str(round)]),
            )  # fmt: skip
        self.refills = {}
        for round, steps in meta.get("refills", {}).items():
            prefix = f"refill.{round}."
            self.refills[int(round)] = [
                RoundOutcome(int(round), arrays[f"{prefix}{a}.prompts"], arrays[f"{prefix}{a}.rewards"],
                             arrays[f"{prefix}{a}.tokens"], int(step))
                for a, step in enumerate(steps)
            ]  # fmt: skip
        self.applied = int(meta["applied"])
