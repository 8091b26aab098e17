"""The pure numerics of the GRPO pass-rate curriculum: which prompts the next generation round should draw.

Pure numpy, no `torch` or `transformers` import. GRPO samples G completions per prompt and normalises the rewards
within the group; a group whose G rewards are all equal has zero advantage: no gradient, full generation cost
(METHOD.md, "The zone in reinforcement learning"). The curriculum draws the prompts whose next group is likely to be
*mixed*:

    P(mixed)        1 - p^G - (1 - p)^G                     for a known pass rate p (the plug-in)
                    E_{p ~ Beta(a, b)}[1 - p^G - (1 - p)^G]   for a belief Beta(a, b) about it
    belief          a = 0.5 + S_i, b = 0.5 + n_i - S_i        S_i, n_i: the decayed scaled reward sum and completions
    decay           an observation of round r weighs 0.5 ** ((now - r) / half_life) at round `now`
    zone score      w_i * history_i + (1 - w_i) * prediction_i,   w_i = g_i / (g_i + kappa)

g_i is the decayed number of groups of prompt i and kappa the prior strength: a prompt never seen (or not lately) is
judged by a prediction shared across prompts (the population's recent share of mixed groups, or a
[`MixedGroupPredictor`] on prompt features), one seen often by its own groups. Prompts are then drawn without
replacement with probability proportional to their scores ([`weighted_sample`]), and the loss of each drawn prompt
can be reweighted against a uniform draw ([`inclusion_probabilities`], [`importance_weights`]).

Every function here is deterministic given its inputs (and the generator for [`weighted_sample`]), and the state of
[`PassRateBeliefs`] and [`MixedGroupPredictor`] round-trips bitwise through `state_dict`, so a resumed run draws what
the uninterrupted run drew.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# The tolerances of torch.isclose's defaults, which TRL uses for `frac_reward_zero_std`: a group counts as mixed
# exactly when TRL would log it as having non-zero reward std.
_STD_ATOL, _STD_RTOL = 1e-8, 1e-5


def _check_group_size(group_size: int) -> int:
    if int(group_size) != group_size or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size}.")
    return int(group_size)


def mixed_probability(alpha: np.ndarray, beta: np.ndarray, group_size: int) -> np.ndarray:
    """P(mixed) = E_{p ~ Beta(alpha, beta)}[1 - p^G - (1 - p)^G],  E[p^G] = prod_{j<G} (alpha + j) / (alpha + beta + j).

    The chance that a group of G completions of a prompt is mixed (not all pass, not all fail) when its pass rate is
    only known through a Beta belief. Both moments are worked out in log space: log E[p^G] =
    -sum_{j<G} log1p(beta / (alpha + j)), so huge counts neither overflow nor lose the difference, and the complement
    of the larger moment is taken by `expm1`, so that a belief close to 0 or 1 keeps its small P(mixed). As
    alpha + beta grows with the mean held, the value tends to the plug-in [`plug_in_mixed_probability`] at the mean.

    Args:
        alpha (`np.ndarray` of float): the Beta's first parameter (pseudo-passes), > 0; broadcast against `beta`.
        beta (`np.ndarray` of float): the Beta's second parameter (pseudo-failures), > 0.
        group_size (`int`): G, the number of completions per prompt.

    Returns:
        `np.ndarray` of float64, the broadcast shape of `alpha` and `beta`: P(mixed), in [0, 1].

    Example:

    ```python
    >>> import numpy as np
    >>> # Beta(1, 1) (uniform), Beta(0.5, 0.5) (Jeffreys), and a sharp belief around 0.9
    >>> mixed_probability(np.array([1.0, 0.5, 900.0]), np.array([1.0, 0.5, 100.0]), 8).round(3)
    array([0.778, 0.607, 0.568])

    ```
    """
    group_size = _check_group_size(group_size)
    alpha, beta = np.broadcast_arrays(np.asarray(alpha, dtype=np.float64), np.asarray(beta, dtype=np.float64))
    if not (np.all(np.isfinite(alpha)) and np.all(np.isfinite(beta)) and np.all(alpha > 0) and np.all(beta > 0)):
        raise ValueError("mixed_probability needs finite alpha > 0 and beta > 0.")
    j = np.arange(group_size, dtype=np.float64)  # (G,)
    # log (a + j) / (a + b + j) = -log1p(b / (a + j)): no cancellation between two large logs.
    log_all_pass = -np.log1p(beta[..., None] / (alpha[..., None] + j)).sum(axis=-1)
    log_all_fail = -np.log1p(alpha[..., None] / (beta[..., None] + j)).sum(axis=-1)
    # 1 - E[p^G] - E[(1 - p)^G], with the larger moment's complement taken by expm1: when one moment is close to 1,
    # the small P(mixed) survives (1 - 0.999999998 would keep only 8 digits).
    larger, smaller = np.maximum(log_all_pass, log_all_fail), np.minimum(log_all_pass, log_all_fail)
    return np.clip(-np.expm1(larger) - np.exp(smaller), 0.0, 1.0)


def plug_in_mixed_probability(p: np.ndarray, group_size: int) -> np.ndarray:
    """P(mixed) = 1 - p^G - (1 - p)^G for known pass rates p.

    The oracle arm's score, and the value [`mixed_probability`] tends to as the belief sharpens. METHOD.md's worked
    values (G = 8): 0.57 at p = 0.1, 0.99 at p = 0.5, 0.57 at p = 0.9.

    Args:
        p (`np.ndarray` of float): pass rates in [0, 1]; NaN (unknown) gives NaN.
        group_size (`int`): G.

    Returns:
        `np.ndarray` of float64, the shape of `p`.

    Example:

    ```python
    >>> plug_in_mixed_probability(np.array([0.1, 0.5, 0.9]), 8).round(2)
    array([0.57, 0.99, 0.57])

    ```
    """
    group_size = _check_group_size(group_size)
    p = np.asarray(p, dtype=np.float64)
    if np.any((p < 0) | (p > 1)):
        raise ValueError("Pass rates must lie in [0, 1].")
    # 1 - (1 - p)^G by expm1(G log1p(-p)): exact near p = 0, where a group is mixed about G p of the time.
    with np.errstate(divide="ignore"):
        all_fail_complement = -np.expm1(group_size * np.log1p(-p))
    return np.clip(all_fail_complement - p**group_size, 0.0, 1.0)


def _check_weights(weights: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 1:
        raise ValueError(f"weights must be one-dimensional, got shape {weights.shape}.")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError("weights must be finite and non-negative.")
    if int(size) != size or size < 0:
        raise ValueError(f"size must be a non-negative integer, got {size}.")
    positive = np.flatnonzero(weights > 0)
    if size > positive.size:
        raise ValueError(
            f"Cannot draw {size} distinct items: only {positive.size} of the {weights.size} weights are positive."
        )
    return weights, positive


def inclusion_probabilities(weights: np.ndarray, size: int) -> np.ndarray:
    """pi_i = min(1, c * w_i), with c such that sum_i pi_i = size.

    c is found by iterative capping: every item with c * w_i >= 1 is set to 1 and c is recomputed over the rest as
    (size - number capped) / (sum of the rest's weights), until no item of the rest reaches 1 (c only grows, so a
    capped item stays capped). Zero weights give 0.

    These are the first-order inclusion probabilities of a proportional-to-size design: exact for a Poisson design
    (each item drawn independently with probability pi_i), and the standard approximation used for importance
    weights ([`importance_weights`]). They are *not* the exact inclusion probabilities of [`weighted_sample`]'s
    successive draws (Efraimidis-Spirakis), which have no closed form and are flatter than these.

    Args:
        weights (`np.ndarray` of float, shape `(N,)`): non-negative sampling weights.
        size (`int`): the number of items drawn; at most the number of positive weights.

    Returns:
        `np.ndarray` of float64, shape `(N,)`: values in [0, 1] summing to `size`.

    Example:

    ```python
    >>> inclusion_probabilities(np.array([8.0, 1.0, 1.0, 0.0]), 2)  # the large weight is capped at 1
    array([1. , 0.5, 0.5, 0. ])

    ```
    """
    weights, positive = _check_weights(weights, size)
    pi = np.zeros(weights.size)
    rest = positive
    remaining = float(size)
    while rest.size and remaining > 0:
        scaled = remaining / weights[rest].sum() * weights[rest]
        capped = scaled >= 1.0
        if not capped.any():
            pi[rest] = scaled
            break
        pi[rest[capped]] = 1.0
        remaining -= int(capped.sum())
        rest = rest[~capped]
    return pi


def weighted_sample(weights: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` distinct indices drawn without replacement with probability proportional to `weights`.

    Efraimidis and Spirakis (2006): every item with w_i > 0 gets the key log(u_i) / w_i, u_i ~ U(0, 1], and the
    `size` largest keys are drawn, ties to the lower index. This is the same law as drawing one item at a time with
    probability proportional to the weights left. One uniform is drawn per item (zero weights included), so the
    generator's state after the call depends only on `len(weights)`.

    Args:
        weights (`np.ndarray` of float, shape `(N,)`): non-negative weights; an item of weight 0 is never drawn.
        size (`int`): how many to draw; at most the number of positive weights.
        rng (`np.random.Generator`): the source of randomness.

    Returns:
        `np.ndarray` of int64, shape `(size,)`: the indices in the order drawn (largest key first).

    Example:

    ```python
    >>> picks = weighted_sample(np.array([0.0, 1.0, 5.0, 1.0]), 2, np.random.default_rng(0))
    >>> len(set(picks.tolist())) == 2 and 0 not in picks
    True

    ```
    """
    weights, positive = _check_weights(weights, size)
    # 1 - U[0, 1) is U(0, 1]: log(u) is finite, so every positive weight has a finite key.
    uniforms = 1.0 - rng.random(weights.size)
    keys = np.log(uniforms[positive]) / weights[positive]
    order = np.lexsort((positive, -keys))  # largest key first, ties to the lower index
    return positive[order[:size]].astype(np.int64)


def importance_weights(inclusion: np.ndarray, chosen: np.ndarray, num_prompts: int, max_weight: float) -> np.ndarray:
    """w_i = min((n / N) / pi_i, max_weight) / mean_j min((n / N) / pi_j, max_weight), for the n chosen prompts.

    The weight that makes a prompt drawn with inclusion probability pi_i count as in a uniform draw of the same size
    (inclusion n / N), clipped at `max_weight` so that one rarely drawn prompt cannot dominate a batch, then
    self-normalised to mean 1 so that the loss scale is the unweighted one. After the normalisation a weight may
    exceed `max_weight` slightly.

    Args:
        inclusion (`np.ndarray` of float, shape `(N,)`): the inclusion probabilities ([`inclusion_probabilities`]).
        chosen (`np.ndarray` of int, shape `(n,)`): the prompts drawn; each must have a positive inclusion.
        num_prompts (`int`): N, the size of the pool a uniform draw would draw from.
        max_weight (`float`): the clip, > 0.

    Returns:
        `np.ndarray` of float64, shape `(n,)`, with mean 1 (empty when nothing was chosen).

    Example:

    ```python
    >>> importance_weights(np.array([1.0, 0.5, 0.5, 0.0]), np.array([0, 1]), 4, max_weight=10.0).round(3)
    array([0.667, 1.333])

    ```
    """
    inclusion = np.asarray(inclusion, dtype=np.float64)
    chosen = np.asarray(chosen, dtype=np.int64)
    if not max_weight > 0:
        raise ValueError(f"max_weight must be positive, got {max_weight}.")
    if num_prompts < 1:
        raise ValueError(f"num_prompts must be positive, got {num_prompts}.")
    if chosen.size == 0:
        return np.zeros(0)
    if np.any(inclusion[chosen] <= 0):
        raise ValueError("Every chosen prompt needs a positive inclusion probability.")
    raw = np.minimum((chosen.size / num_prompts) / inclusion[chosen], max_weight)
    return raw / raw.mean()


def rank_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUC = (R_1 - n_1 (n_1 + 1) / 2) / (n_1 n_0), R_1 the sum of the positives' ranks among all scores.

    The ROC AUC by the Mann-Whitney U statistic, with tied scores given their average rank (a tied positive-negative
    pair counts 1/2). Items with a NaN score are dropped first.

    Args:
        scores (`np.ndarray` of float, shape `(n,)`): higher means more likely positive.
        labels (`np.ndarray` of bool or 0/1, shape `(n,)`).

    Returns:
        `float`: the AUC, NaN when one class is absent (after dropping NaN scores).

    Example:

    ```python
    >>> rank_auc(np.array([0.1, 0.4, 0.4, 0.9]), np.array([0, 0, 1, 1]))
    0.875

    ```
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D of the same length, got {scores.shape} and {labels.shape}.")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError("labels must be binary (bool or 0/1).")
    keep = ~np.isnan(scores)
    scores, positive = scores[keep], labels[keep].astype(bool)
    num_positive = int(positive.sum())
    num_negative = positive.size - num_positive
    if num_positive == 0 or num_negative == 0:
        return math.nan
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # A run of equal scores starting after `start` lower ones shares the ranks start + 1 .. start + count.
    start = np.cumsum(counts) - counts
    ranks = (start + (counts + 1) / 2.0)[inverse]
    u = ranks[positive].sum() - num_positive * (num_positive + 1) / 2.0
    return float(u / (num_positive * num_negative))


@dataclass(frozen=True)
class GroupOutcomes:
    """Per-group summaries of one round's rewards; every field has shape `(num_groups,)`.

    Args:
        count (`np.ndarray` of int64): the number of scored completions (non-NaN rewards).
        total (`np.ndarray` of float64): the sum of the scored rewards (0 with none).
        mean (`np.ndarray` of float64): total / count (NaN with none).
        std (`np.ndarray` of float64): the Bessel-corrected (ddof = 1) standard deviation of the scored rewards, NaN
            with fewer than 2.
        mixed (`np.ndarray` of bool): at least 2 scored and `std` not close to 0 (`np.isclose(std, 0, atol=1e-8,
            rtol=1e-5)` False): TRL's `frac_reward_zero_std` criterion, negated.
    """

    count: np.ndarray
    total: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    mixed: np.ndarray


def group_outcomes(rewards: np.ndarray) -> GroupOutcomes:
    """mean_g = total_g / count_g, std_g = sqrt(sum_{scored} (r - mean_g)^2 / (count_g - 1)), mixed_g = std_g > 1e-8.

    The outcome of each GRPO group: its rows are the G rewards of one prompt's completions, NaN where a completion has
    no reward (TRL turns a reward function's `None` into NaN; a completion whose every function returned `None` is
    left out of its group). Only scored completions count. A group is mixed when it would carry gradient: at least
    two scored rewards whose standard deviation is not close to 0, whatever the rewards' values (a constant
    `(0.5, 0.5, ...)` group is not mixed; `(0, 1)` is).

    Args:
        rewards (`np.ndarray` of float, shape `(num_groups, G)`).

    Returns:
        [`GroupOutcomes`]

    Example:

    ```python
    >>> outcomes = group_outcomes(np.array([[0.0, 1.0, 1.0], [0.5, 0.5, 0.5], [1.0, np.nan, np.nan]]))
    >>> outcomes.count.tolist(), outcomes.mixed.tolist()
    ([3, 3, 1], [True, False, False])

    ```
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.ndim != 2:
        raise ValueError(f"rewards must have shape (num_groups, G), got {rewards.shape}.")
    scored = ~np.isnan(rewards)
    count = scored.sum(axis=1).astype(np.int64)
    total = np.where(scored, rewards, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count  # 0 / 0: NaN for a group with no scored completion
        squares = np.where(scored, (rewards - mean[:, None]) ** 2, 0.0).sum(axis=1)
        std = np.where(count >= 2, np.sqrt(squares / (count - 1)), np.nan)
    mixed = (count >= 2) & ~np.isclose(std, 0.0, atol=_STD_ATOL, rtol=_STD_RTOL)
    return GroupOutcomes(count=count, total=total, mean=mean, std=std, mixed=mixed)


@dataclass
class BeliefConfig:
    """How [`PassRateBeliefs`] weighs the groups it has seen.

    Args:
        group_size (`int`):
            G, the number of completions per prompt in a group.
        half_life (`float`):
            The number of rounds after which an observation's weight is halved (> 0); `math.inf`: no decay. The
            policy moves as it trains, so old groups say less about the next one.
        prior_strength (`float`, *optional*, defaults to 1.0):
            kappa, in groups: how much a prompt's own (decayed) history must weigh before it outweighs the
            prediction shared across prompts; at g_i = kappa groups both count equally.
        reward_range (`tuple[float, float]`, *optional*):
            `(lo, hi)` mapping rewards to [0, 1] by (r - lo) / (hi - lo); rewards outside it are clipped to it.
            `None`: learnt as the smallest and largest reward seen so far.
    """

    group_size: int
    half_life: float
    prior_strength: float = 1.0
    reward_range: tuple[float, float] | None = None

    def __post_init__(self):
        _check_group_size(self.group_size)
        if not self.half_life > 0:  # math.inf passes; NaN does not
            raise ValueError(f"half_life must be positive (math.inf: no decay), got {self.half_life}.")
        if not (math.isfinite(self.prior_strength) and self.prior_strength > 0):
            raise ValueError(f"prior_strength must be a positive number of groups, got {self.prior_strength}.")
        if self.reward_range is not None:
            lo, hi = self.reward_range
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"reward_range must be (lo, hi) with finite lo < hi, got {self.reward_range}.")


# The decayed per-prompt counts, in the order `decayed` and `state_dict` list them.
_COUNTS = ("reward_sum", "completions", "groups", "mixed_groups")


class PassRateBeliefs:
    """Per-prompt belief of the pass rate, from every group of the prompt seen so far, decayed as the policy moves.

    State per prompt i, float64 arrays of length `num_prompts` decayed lazily (a count observed at round r weighs
    0.5 ** ((now - r) / half_life) at round `now`; each prompt's counts are kept as of `last_round[i]`):
    `reward_sum` (sum of raw rewards of scored completions), `completions` (number of scored completions), `groups`
    (number of groups), `mixed_groups` (number of mixed groups), `last_round` (-1: never seen); and `visits`, the
    number of groups of the prompt ever observed (int64, not decayed). Besides: the range of the rewards seen, whether
    every reward seen so far took one of at most two values (binary rewards; true before any reward), and a
    population track: the decayed number of mixed groups and of groups over all prompts, whose smoothed ratio is the
    A1 prediction for a prompt never seen (the recent share of mixed groups).

    Raw reward sums are kept (not scaled ones) so that a learnt reward range can widen later without losing the
    past: the scaled sum S_i = (reward_sum_i - lo * completions_i) / (hi - lo) is worked out at query time. While the
    learnt range holds a single value the scale is unknown and S_i = 0 (P(mixed) is symmetric in p and 1 - p, so
    [`history_mixed_probability`] does not depend on that choice; [`pass_rate`] does).

    Queries take the round to evaluate at, which may not precede the latest observed round.

    Args:
        num_prompts (`int`): the size of the prompt pool.
        config ([`BeliefConfig`]).

    Example:

    ```python
    >>> beliefs = PassRateBeliefs(3, BeliefConfig(group_size=4, half_life=math.inf))
    >>> _ = beliefs.observe(0, np.array([0, 1]), np.array([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0]]))
    >>> beliefs.pass_rate(0).round(3)  # (0.5 + S) / (1 + n); the unseen prompt 2 stays at 0.5
    array([0.9, 0.5, 0.5])
    >>> beliefs.zone_scores(0, beliefs.population_mixed_share(0)).round(3)  # prompt 0 was never mixed
    array([0.389, 0.621, 0.5  ])

    ```
    """

    def __init__(self, num_prompts: int, config: BeliefConfig):
        if int(num_prompts) != num_prompts or num_prompts < 0:
            raise ValueError(f"num_prompts must be a non-negative integer, got {num_prompts}.")
        self.num_prompts = int(num_prompts)
        self.config = config
        self.reward_sum = np.zeros(self.num_prompts)
        self.completions = np.zeros(self.num_prompts)
        self.groups = np.zeros(self.num_prompts)
        self.mixed_groups = np.zeros(self.num_prompts)
        self.last_round = np.full(self.num_prompts, -1.0)
        self.visits = np.zeros(self.num_prompts, dtype=np.int64)
        self.round = -1  # the latest round observed
        self.reward_min, self.reward_max = math.inf, -math.inf
        self._values = np.zeros(0)  # the distinct rewards seen, while there are at most two
        self._binary = True
        self.population_mixed = 0.0
        self.population_groups = 0.0
        self.population_round = -1

    # ------------------------------------------------------------------------------------------------------------------
    # Decay
    # ------------------------------------------------------------------------------------------------------------------

    def _decay(self, elapsed: np.ndarray | float) -> np.ndarray | float:
        """0.5 ** (elapsed / half_life): exactly 1 with no decay (elapsed is finite, so elapsed / inf is 0)."""
        return 0.5 ** (np.asarray(elapsed, dtype=np.float64) / self.config.half_life)

    def _check_round(self, round: int) -> int:
        if int(round) != round or round < 0:
            raise ValueError(f"round must be a non-negative integer, got {round}.")
        if round < self.round:
            raise ValueError(
                f"Round {round} is before the latest observed round {self.round}: rounds only go forward."
            )
        return int(round)

    def decayed(self, round: int) -> dict[str, np.ndarray]:
        """The four decayed counts (`reward_sum`, `completions`, `groups`, `mixed_groups`) at `round`; no mutation."""
        round = self._check_round(round)
        factor = self._decay(round - self.last_round)
        return {name: getattr(self, name) * factor for name in _COUNTS}

    def binary(self) -> bool:
        """Whether every reward seen so far took one of at most two values (true before any reward)."""
        return self._binary

    def _reward_scale(self) -> tuple[float, float]:
        """(lo, hi - lo) of the reward range; scale 0 while the learnt range is a single value (or empty)."""
        if self.config.reward_range is not None:
            lo, hi = self.config.reward_range
            return float(lo), float(hi) - float(lo)
        if not self.reward_max > self.reward_min:
            return 0.0, 0.0
        return self.reward_min, self.reward_max - self.reward_min

    def _scaled(self, round: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """(S, n, decayed counts): the decayed sum of scaled rewards, in [0, n], and the decayed completions."""
        counts = self.decayed(round)
        n = counts["completions"]
        lo, scale = self._reward_scale()
        if scale == 0.0:
            return np.zeros_like(n), n, counts
        return np.clip((counts["reward_sum"] - lo * n) / scale, 0.0, n), n, counts

    # ------------------------------------------------------------------------------------------------------------------
    # Updates
    # ------------------------------------------------------------------------------------------------------------------

    def observe(self, round: int, prompts: np.ndarray, rewards: np.ndarray) -> GroupOutcomes:
        """Adds the groups of one round.

        Args:
            round (`int`): the round (generation step) the groups come from; rounds are observed in non-decreasing
                order (ValueError otherwise), and several calls may share a round.
            prompts (`np.ndarray` of int, shape `(num_groups,)`): each group's prompt; a prompt may appear twice.
            rewards (`np.ndarray` of float, shape `(num_groups, G)`): NaN where a completion has no reward.

        Returns:
            [`GroupOutcomes`] of the groups (after clipping to a fixed `reward_range`).
        """
        round = self._check_round(round)
        prompts = np.asarray(prompts)
        rewards = np.asarray(rewards, dtype=np.float64)
        if prompts.ndim != 1 or (prompts.size and not np.issubdtype(prompts.dtype, np.integer)):
            raise ValueError(f"prompts must be a 1-D integer array, got dtype {prompts.dtype}, shape {prompts.shape}.")
        prompts = prompts.astype(np.int64)
        if rewards.shape != (prompts.size, self.config.group_size):
            raise ValueError(
                f"rewards must have shape (num_groups, group_size) = ({prompts.size}, {self.config.group_size}), "
                f"got {rewards.shape}."
            )
        if np.any((prompts < 0) | (prompts >= self.num_prompts)):
            raise ValueError(f"prompts must lie in [0, {self.num_prompts}).")
        if np.any(np.isinf(rewards)):
            raise ValueError("rewards must be finite (NaN marks a completion without a reward).")
        if self.config.reward_range is not None:
            rewards = np.clip(rewards, *self.config.reward_range)  # NaN stays NaN
        outcomes = group_outcomes(rewards)
        self._see_values(rewards[~np.isnan(rewards)])

        # Bring every prompt of this round to `round` before adding: its counts are kept as of its last round.
        seen = np.unique(prompts)
        factor = self._decay(round - self.last_round[seen])
        for name in _COUNTS:
            getattr(self, name)[seen] *= factor
        # np.add.at, not fancy-index +=: a prompt with two groups in the round gets both.
        np.add.at(self.reward_sum, prompts, outcomes.total)
        np.add.at(self.completions, prompts, outcomes.count.astype(np.float64))
        np.add.at(self.groups, prompts, 1.0)
        np.add.at(self.mixed_groups, prompts, outcomes.mixed.astype(np.float64))
        np.add.at(self.visits, prompts, 1)
        self.last_round[seen] = round

        population_factor = self._decay(round - self.population_round)
        self.population_mixed = float(self.population_mixed * population_factor + outcomes.mixed.sum())
        self.population_groups = float(self.population_groups * population_factor + prompts.size)
        self.population_round = round
        self.round = round
        return outcomes

    def _see_values(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        self.reward_min = min(self.reward_min, float(values.min()))
        self.reward_max = max(self.reward_max, float(values.max()))
        if self._binary:
            distinct = np.unique(np.concatenate([self._values, values]))
            if distinct.size > 2:
                self._binary = False  # for good: a third value was seen
                self._values = np.zeros(0)
            else:
                self._values = distinct

    # ------------------------------------------------------------------------------------------------------------------
    # Queries
    # ------------------------------------------------------------------------------------------------------------------

    def pass_rate(self, round: int) -> np.ndarray:
        """(0.5 + S_i) / (1 + n_i): the posterior mean of each prompt's scaled mean reward u in [0, 1].

        S_i is the decayed sum of scaled rewards and n_i the decayed number of scored completions; the prior is
        Jeffreys' Beta(0.5, 0.5), so a prompt never seen gets 0.5.
        """
        s, n, _ = self._scaled(round)
        return (0.5 + s) / (1.0 + n)

    def history_mixed_probability(self, round: int) -> np.ndarray:
        """P(mixed) from each prompt's own history alone.

        Binary rewards: `mixed_probability(0.5 + S_i, 0.5 + n_i - S_i, G)`, the Beta(0.5, 0.5) posterior of the pass
        rate. Otherwise the smoothed decayed share of mixed groups, (0.5 + mixed_i) / (1 + groups_i), which follows
        the reward variance of the group rather than its mean (a prompt whose G rewards are always equal is never
        mixed, whatever their value).
        """
        s, n, counts = self._scaled(round)
        if self._binary:
            return mixed_probability(0.5 + s, 0.5 + n - s, self.config.group_size)
        return (0.5 + counts["mixed_groups"]) / (1.0 + counts["groups"])

    def population_mixed_share(self, round: int) -> float:
        """(0.5 + M) / (1 + N), M and N the decayed numbers of mixed groups and of groups over all prompts; 0.5 before
        any group."""
        round = self._check_round(round)
        factor = self._decay(round - self.population_round)
        return float((0.5 + self.population_mixed * factor) / (1.0 + self.population_groups * factor))

    def zone_scores(self, round: int, prediction: np.ndarray | float) -> np.ndarray:
        """score_i = w_i * history_i + (1 - w_i) * prediction_i, w_i = g_i / (g_i + kappa).

        history_i is [`history_mixed_probability`], g_i the decayed group count and kappa `prior_strength`: a prompt
        never seen (or not lately) is judged by the prediction, one seen often by its own groups.

        Args:
            round (`int`): the round to evaluate at.
            prediction (`np.ndarray` of shape `(num_prompts,)`, or `float`): the predicted P(mixed) of each prompt
                (the population share, or a [`MixedGroupPredictor`]'s output).
        """
        history = self.history_mixed_probability(round)
        groups = self.decayed(round)["groups"]
        weight = groups / (groups + self.config.prior_strength)
        prediction = np.broadcast_to(np.asarray(prediction, dtype=np.float64), history.shape)
        return weight * history + (1.0 - weight) * prediction

    # ------------------------------------------------------------------------------------------------------------------
    # Checkpoints
    # ------------------------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray | float | int | bool]:
        """Everything the beliefs hold, as copies (arrays float64 except `visits`), for a checkpoint."""
        return {
            "num_prompts": self.num_prompts,
            **{name: getattr(self, name).copy() for name in _COUNTS},
            "last_round": self.last_round.copy(),
            "visits": self.visits.copy(),
            "round": self.round,
            "reward_min": self.reward_min,
            "reward_max": self.reward_max,
            "binary": self._binary,
            "binary_values": self._values.copy(),
            "population_mixed": self.population_mixed,
            "population_groups": self.population_groups,
            "population_round": self.population_round,
        }

    @classmethod
    def from_state_dict(
        cls, state: dict[str, np.ndarray | float | int | bool], config: BeliefConfig
    ) -> PassRateBeliefs:
        """The beliefs [`state_dict`] saved, bitwise; `config` is the run's (it is not part of the state)."""
        beliefs = cls(int(state["num_prompts"]), config)
        for name in (*_COUNTS, "last_round"):
            value = np.array(state[name], dtype=np.float64)
            if value.shape != (beliefs.num_prompts,):
                raise ValueError(f"State entry {name!r} has shape {value.shape}, expected ({beliefs.num_prompts},).")
            setattr(beliefs, name, value)
        beliefs.visits = np.array(state["visits"], dtype=np.int64)
        beliefs.round = int(state["round"])
        beliefs.reward_min, beliefs.reward_max = float(state["reward_min"]), float(state["reward_max"])
        beliefs._binary = bool(state["binary"])
        beliefs._values = np.array(state["binary_values"], dtype=np.float64)
        beliefs.population_mixed = float(state["population_mixed"])
        beliefs.population_groups = float(state["population_groups"])
        beliefs.population_round = int(state["population_round"])
        return beliefs


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # exp of a non-positive number only: no overflow for large |z|.
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


class MixedGroupPredictor:
    """P(mixed | features) = sigmoid(w_0 + sum_k w_k (x_k - mu_k) / s_k), by L2-regularised logistic regression.

    A prediction that generalises across prompts, for the prompts whose own history is thin (METHOD.md: most first
    visits are blind). [`fit`] refits on the most recent `window` observed groups by Newton's method (IRLS) from
    w = 0, minimising -log-likelihood + l2 / 2 * sum_{k >= 1} w_k^2 (the intercept is not penalised), for 25
    iterations or until the largest step is below 1e-10: a pure function of the window. The features are standardised
    by the window's mean mu and standard deviation s (1 where a feature is constant).

    Until a fit has seen at least `min_groups` observations with both outcomes present, [`predict`] returns the
    smoothed share of mixed groups in the window, (0.5 + mixed) / (1 + groups) (0.5 before any): near the observed
    share, and strictly inside (0, 1).

    Args:
        num_features (`int`): d, the number of features per prompt.
        window (`int`, *optional*, defaults to 4096): how many of the latest observations a fit uses.
        min_groups (`int`, *optional*, defaults to 32): the fewest observations a fit needs.
        l2 (`float`, *optional*, defaults to 1.0): the L2 penalty on the standardised features' weights.

    Example:

    ```python
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((500, 1))
    >>> predictor = MixedGroupPredictor(num_features=1, min_groups=32)
    >>> predictor.add(x, rng.random(500) < 1 / (1 + np.exp(-3 * x[:, 0])))
    >>> predictor.fit()
    >>> predictor.predict(np.array([[-2.0], [0.0], [2.0]])).round(1)
    array([0. , 0.5, 1. ])

    ```
    """

    max_iterations = 25
    tolerance = 1e-10

    def __init__(self, num_features: int, window: int = 4096, min_groups: int = 32, l2: float = 1.0):
        if num_features < 0 or window < 1 or min_groups < 1 or not l2 >= 0:
            raise ValueError(
                f"MixedGroupPredictor needs num_features >= 0, window >= 1, min_groups >= 1 and l2 >= 0, got "
                f"{num_features}, {window}, {min_groups}, {l2}."
            )
        self.num_features = int(num_features)
        self.window = int(window)
        self.min_groups = int(min_groups)
        self.l2 = float(l2)
        self.features = np.zeros((0, self.num_features))  # (k, d), the window's rows, oldest first
        self.mixed = np.zeros(0, dtype=bool)  # (k,)
        self.weights: np.ndarray | None = None  # (d + 1,), intercept first; None: no fitted model
        self.mean = np.zeros(self.num_features)
        self.scale = np.ones(self.num_features)

    def add(self, features: np.ndarray, mixed: np.ndarray) -> None:
        """Appends observations (features `(n, d)`, outcomes `(n,)` bool) and keeps the last `window` of them."""
        features = np.asarray(features, dtype=np.float64)
        mixed = np.asarray(mixed, dtype=bool)
        if features.ndim != 2 or features.shape[1] != self.num_features or mixed.shape != (features.shape[0],):
            raise ValueError(
                f"add needs features (n, {self.num_features}) and mixed (n,), got {features.shape} and {mixed.shape}."
            )
        if not np.all(np.isfinite(features)):
            raise ValueError("features must be finite.")
        self.features = np.concatenate([self.features, features])[-self.window :]
        self.mixed = np.concatenate([self.mixed, mixed])[-self.window :]

    def _design(self, features: np.ndarray) -> np.ndarray:
        standardised = (features - self.mean) / self.scale
        return np.concatenate([np.ones((standardised.shape[0], 1)), standardised], axis=1)  # (n, d + 1)

    def fit(self) -> None:
        """Refits on the window, or falls back to the share of mixed groups (see the class docstring)."""
        y = self.mixed.astype(np.float64)
        if y.size < self.min_groups or y.all() or not y.any():
            self.weights = None
            return
        self.mean = self.features.mean(axis=0)
        std = self.features.std(axis=0)
        self.scale = np.where(std > 0, std, 1.0)
        x = self._design(self.features)
        penalty = np.full(x.shape[1], self.l2)
        penalty[0] = 0.0
        w = np.zeros(x.shape[1])
        for _ in range(self.max_iterations):
            p = _sigmoid(x @ w)
            gradient = x.T @ (p - y) + penalty * w
            hessian = (x * (p * (1.0 - p))[:, None]).T @ x + np.diag(penalty)
            step = np.linalg.lstsq(hessian, gradient, rcond=None)[0]  # lstsq: a singular Hessian does not raise
            w = w - step
            if np.max(np.abs(step)) < self.tolerance:
                break
        self.weights = w

    def predict(self, features: np.ndarray) -> np.ndarray:
        """P(mixed) for each row of `features` `(m, d)`: `(m,)` values in (0, 1)."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"predict needs features (m, {self.num_features}), got {features.shape}.")
        if self.weights is None:
            share = (0.5 + self.mixed.sum()) / (1.0 + self.mixed.size)
            return np.full(features.shape[0], share)
        # Clipped so that a downstream log-odds or inverse stays finite.
        return np.clip(_sigmoid(self._design(features) @ self.weights), 1e-12, 1.0 - 1e-12)

    def state_dict(self) -> dict[str, np.ndarray | float | int | bool]:
        """The window's rows, the fitted weights and the standardisation, as copies, with the hyperparameters."""
        return {
            "num_features": self.num_features,
            "window": self.window,
            "min_groups": self.min_groups,
            "l2": self.l2,
            "features": self.features.copy(),
            "mixed": self.mixed.copy(),
            "fitted": self.weights is not None,
            "weights": np.zeros(0) if self.weights is None else self.weights.copy(),
            "mean": self.mean.copy(),
            "scale": self.scale.copy(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, np.ndarray | float | int | bool]) -> MixedGroupPredictor:
        """The predictor [`state_dict`] saved, bitwise."""
        predictor = cls(int(state["num_features"]), int(state["window"]), int(state["min_groups"]), float(state["l2"]))
        predictor.features = np.array(state["features"], dtype=np.float64).reshape(-1, predictor.num_features)
        predictor.mixed = np.array(state["mixed"], dtype=bool)
        predictor.weights = np.array(state["weights"], dtype=np.float64) if bool(state["fitted"]) else None
        predictor.mean = np.array(state["mean"], dtype=np.float64)
        predictor.scale = np.array(state["scale"], dtype=np.float64)
        return predictor
