"""The GRPO pass-rate numerics (`hf_zpd.pass_rate`) against naive references written from METHOD.md's formulas."""

import doctest
import itertools
import math

import numpy as np
import pytest
import torch

import hf_zpd.pass_rate
from hf_zpd.pass_rate import (
    BeliefConfig,
    MixedGroupPredictor,
    PassRateBeliefs,
    group_outcomes,
    importance_weights,
    inclusion_probabilities,
    mixed_probability,
    plug_in_mixed_probability,
    rank_auc,
    weighted_sample,
)

try:  # not a dependency of the package: the references fall back to Monte Carlo without it
    from scipy import integrate, optimize
    from scipy.special import gammaln
except ImportError:  # pragma: no cover
    integrate = optimize = gammaln = None


def test_doctests():
    assert doctest.testmod(hf_zpd.pass_rate, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0


# ----------------------------------------------------------------------------------------------------------------------
# P(mixed)
# ----------------------------------------------------------------------------------------------------------------------


def plug_in(p: float, group_size: int) -> float:
    return 1.0 - p**group_size - (1.0 - p) ** group_size


def reference_mixed_probability(alpha: float, beta: float, group_size: int) -> tuple[float, float]:
    """E_{p ~ Beta(alpha, beta)}[1 - p^G - (1 - p)^G] by integrating the density, and the tolerance it is good to.

    With scipy: adaptive quadrature on [0, mean] and [mean, 1]; an endpoint where the density is infinite (a parameter
    below 1) is handled by QUADPACK's algebraic weight (x - 0)^(alpha - 1) or (1 - x)^(beta - 1), and a peaked density
    is integrated over the mean +- 60 standard deviations only (the rest is below e^-30). Without scipy: the mean of
    the integrand over 400,000 Beta draws.
    """
    mean = alpha / (alpha + beta)
    sd = math.sqrt(alpha * beta / ((alpha + beta) ** 2 * (alpha + beta + 1)))
    if integrate is None:
        p = np.random.default_rng(0).beta(alpha, beta, 400_000)
        return float(np.mean(1.0 - p**group_size - (1.0 - p) ** group_size)), 2e-2
    log_norm = gammaln(alpha) + gammaln(beta) - gammaln(alpha + beta)

    def density(x, left_power=True, right_power=True):
        log_density = -log_norm
        if left_power:
            log_density += (alpha - 1) * math.log(x) if x > 0 else (0.0 if alpha == 1 else -math.inf)
        if right_power:
            log_density += (beta - 1) * math.log1p(-x) if x < 1 else (0.0 if beta == 1 else -math.inf)
        return math.exp(log_density) * plug_in(x, group_size)

    options = {"epsabs": 1e-14, "epsrel": 1e-12, "limit": 500}
    if alpha < 1:
        left = integrate.quad(density, 0.0, mean, args=(False, True), weight="alg", wvar=(alpha - 1, 0), **options)
    else:
        left = integrate.quad(density, max(0.0, mean - 60 * sd), mean, **options)
    if beta < 1:
        right = integrate.quad(density, mean, 1.0, args=(True, False), weight="alg", wvar=(0, beta - 1), **options)
    else:
        right = integrate.quad(density, mean, min(1.0, mean + 60 * sd), **options)
    return left[0] + right[0], 1e-9


PARAMETERS = [0.5, 1.0, 3.7, 50.0, 1e4]


@pytest.mark.parametrize("group_size", [2, 3, 8, 16])
@pytest.mark.parametrize("alpha, beta", list(itertools.product(PARAMETERS, PARAMETERS)))
def test_mixed_probability_matches_the_integral_of_the_beta_density(alpha, beta, group_size):
    expected, tolerance = reference_mixed_probability(alpha, beta, group_size)
    got = mixed_probability(np.array([alpha]), np.array([beta]), group_size)
    assert got.shape == (1,)
    np.testing.assert_allclose(got[0], expected, rtol=tolerance, atol=tolerance * 1e-3)


def test_mixed_probability_broadcasts_and_keeps_the_shape():
    alpha = np.array([[1.0], [2.0], [3.0]])  # (3, 1)
    beta = np.array([1.0, 5.0])  # (2,)
    got = mixed_probability(alpha, beta, 4)
    assert got.shape == (3, 2)
    for i, j in itertools.product(range(3), range(2)):
        assert got[i, j] == mixed_probability(alpha[i], beta[j : j + 1], 4)[0]
    assert mixed_probability(2.0, 3.0, 4).shape == ()


def test_mixed_probability_of_uniform_belief_is_one_minus_two_over_g_plus_one():
    # E[p^G] = 1 / (G + 1) under Beta(1, 1).
    for group_size in (1, 2, 5, 16, 64):
        np.testing.assert_allclose(mixed_probability(1.0, 1.0, group_size), 1 - 2 / (group_size + 1), rtol=1e-14)


@pytest.mark.parametrize("group_size", [2, 8, 16])
def test_a_strong_belief_tends_to_the_plug_in(group_size):
    # alpha = 9 beta: mean 0.9, sharper as beta grows; the gap to the plug-in shrinks like 1 / (alpha + beta).
    target = plug_in(0.9, group_size)
    gaps = [abs(float(mixed_probability(9 * b, b, group_size)) - target) for b in (10.0, 1e3, 1e5, 1e7, 1e9)]
    assert all(later < earlier for earlier, later in zip(gaps, gaps[1:], strict=False))
    assert gaps[-1] < 1e-7


def test_mixed_probability_does_not_overflow_on_huge_counts():
    got = mixed_probability(np.array([1e15, 1e300, 0.5]), np.array([1e15, 1e300, 1e300]), 8)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got[:2], plug_in(0.5, 8), rtol=1e-12)
    assert 0 <= got[2] < 1e-290  # a belief pinned at p = 0: never mixed, and not negative by rounding


def test_mixed_probability_keeps_small_values_near_p_zero():
    # G = 2: P(mixed) = 2 E[p (1 - p)] = 2 a b / ((a + b)(a + b + 1)); a belief near p = 0 keeps its relative precision.
    for b in (1e3, 1e6, 1e9):
        np.testing.assert_allclose(mixed_probability(1.0, b, 2), 2 * b / ((b + 1) * (b + 2)), rtol=1e-9)


@pytest.mark.parametrize("alpha, beta", [(0.0, 1.0), (1.0, -2.0), (math.nan, 1.0), (1.0, math.inf)])
def test_mixed_probability_refuses_invalid_parameters(alpha, beta):
    with pytest.raises(ValueError, match="alpha > 0 and beta > 0"):
        mixed_probability(np.array([alpha]), np.array([beta]), 8)


@pytest.mark.parametrize("group_size", [0, -1, 2.5])
def test_group_size_must_be_a_positive_integer(group_size):
    with pytest.raises(ValueError, match="group_size"):
        mixed_probability(1.0, 1.0, group_size)
    with pytest.raises(ValueError, match="group_size"):
        plug_in_mixed_probability(0.5, group_size)


def test_plug_in_reproduces_the_worked_values_of_the_method():
    # METHOD.md, "The zone in reinforcement learning": G = 8: 0.57 at p = 0.1, 0.99 at p = 0.5, 0.57 at p = 0.9.
    got = plug_in_mixed_probability(np.array([0.1, 0.5, 0.9]), 8)
    np.testing.assert_array_equal(np.round(got, 2), [0.57, 0.99, 0.57])


@pytest.mark.parametrize("group_size", [1, 2, 3, 8, 16])
def test_plug_in_matches_the_formula(group_size):
    p = np.concatenate([[0.0, 1.0, 1e-12, 1 - 1e-12], np.linspace(0, 1, 101)])
    expected = np.array([plug_in(float(x), group_size) for x in p])
    np.testing.assert_allclose(plug_in_mixed_probability(p, group_size), expected, atol=1e-15)
    assert math.isnan(plug_in_mixed_probability(np.array([math.nan]), group_size)[0])  # unknown stays unknown
    # Near p = 0 the value is G p - p^G up to O(p^2): kept to full relative precision (0 for G = 1).
    expected = group_size * 1e-12 - 1e-12**group_size
    np.testing.assert_allclose(plug_in_mixed_probability(1e-12, group_size), expected, rtol=1e-9, atol=1e-24)


def test_plug_in_refuses_pass_rates_outside_the_unit_interval():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        plug_in_mixed_probability(np.array([0.5, 1.2]), 8)


# ----------------------------------------------------------------------------------------------------------------------
# Inclusion probabilities, sampling and importance weights
# ----------------------------------------------------------------------------------------------------------------------


def reference_inclusion(weights: list[float], size: int) -> list[float]:
    """One item capped at a time: the largest uncapped item whose share c * w_i reaches 1, then c again."""
    capped: set[int] = set()
    while True:
        rest = [i for i, w in enumerate(weights) if w > 0 and i not in capped]
        c = (size - len(capped)) / sum(weights[i] for i in rest) if rest else 0.0
        over = [i for i in rest if c * weights[i] >= 1.0]
        if not over:
            return [1.0 if i in capped else (c * w if w > 0 else 0.0) for i, w in enumerate(weights)]
        capped.add(max(over, key=lambda i: (weights[i], -i)))


def weight_vector(kind: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return np.ones(n)
    if kind == "heavy":  # a few weights far above the rest: several rounds of capping
        return np.exp(3.0 * rng.standard_normal(n))
    if kind == "zeros":
        return np.where(rng.random(n) < 0.4, 0.0, rng.random(n))
    if kind == "ties":
        return rng.integers(0, 4, n).astype(float)
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["uniform", "heavy", "zeros", "ties"])
@pytest.mark.parametrize("n", [1, 7, 50, 333])
@pytest.mark.parametrize("share", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_inclusion_probabilities_match_the_naive_capping_loop(kind, n, share, seed):
    weights = weight_vector(kind, n, seed)
    size = int(share * np.count_nonzero(weights))
    pi = inclusion_probabilities(weights, size)
    np.testing.assert_allclose(pi, reference_inclusion(weights.tolist(), size), rtol=1e-12, atol=1e-12)
    assert pi.sum() == pytest.approx(size, abs=1e-9)
    assert np.all((pi >= 0) & (pi <= 1))
    assert np.all(pi[weights == 0] == 0)
    order = np.argsort(weights, kind="stable")
    assert np.all(np.diff(pi[order]) >= -1e-15)  # monotone in the weights


def test_one_huge_weight_is_capped_at_one():
    pi = inclusion_probabilities(np.array([1000.0, 1.0, 1.0, 2.0]), 2)
    np.testing.assert_allclose(pi, [1.0, 0.25, 0.25, 0.5])


def test_inclusion_probabilities_refuse_too_few_positive_weights():
    with pytest.raises(ValueError, match=r"Cannot draw 3 .* only 2 of the 4"):
        inclusion_probabilities(np.array([0.0, 1.0, 0.0, 2.0]), 3)


@pytest.mark.parametrize("weights", [[1.0, -1.0], [1.0, math.nan], [1.0, math.inf]])
def test_sampling_refuses_invalid_weights(weights):
    with pytest.raises(ValueError, match="finite and non-negative"):
        inclusion_probabilities(np.array(weights), 1)
    with pytest.raises(ValueError, match="finite and non-negative"):
        weighted_sample(np.array(weights), 1, np.random.default_rng(0))


@pytest.mark.parametrize("kind", ["uniform", "heavy", "zeros", "ties"])
@pytest.mark.parametrize("n", [1, 9, 200])
def test_weighted_sample_draws_distinct_positive_items_reproducibly(kind, n):
    weights = weight_vector(kind, n, 3)
    positive = np.count_nonzero(weights)
    for size in sorted({0, min(1, positive), positive // 2, positive}):
        drawn = weighted_sample(weights, size, np.random.default_rng(11))
        assert drawn.dtype == np.int64 and drawn.shape == (size,)
        assert np.unique(drawn).size == size
        assert np.all(weights[drawn] > 0)
        np.testing.assert_array_equal(drawn, weighted_sample(weights, size, np.random.default_rng(11)))
        # Drawn in order: the first k of a larger draw are the draw of k with the same uniforms.
        np.testing.assert_array_equal(
            drawn[: size // 2], weighted_sample(weights, size // 2, np.random.default_rng(11))
        )


def test_weighted_sample_advances_the_generator_by_one_uniform_per_item():
    rng, twin = np.random.default_rng(5), np.random.default_rng(5)
    weighted_sample(np.array([0.0, 3.0, 1.0, 0.0, 2.0]), 2, rng)
    twin.random(5)
    assert rng.random() == twin.random()


def test_weighted_sample_frequencies_are_proportional_for_one_draw():
    weights = np.array([0.0, 1.0, 2.0, 3.0, 0.5, 3.5])
    rng = np.random.default_rng(0)
    draws = 20_000
    counts = np.bincount([weighted_sample(weights, 1, rng)[0] for _ in range(draws)], minlength=weights.size)
    # Each frequency has a standard error below 0.0036 at 20k draws: 0.015 is over 4 of them.
    np.testing.assert_allclose(counts / draws, weights / weights.sum(), atol=0.015)
    assert counts[0] == 0


def test_weighted_sample_draws_in_the_order_of_successive_proportional_draws():
    # P(first i, then j) = w_i / W * w_j / (W - w_i): Efraimidis-Spirakis is the same law as drawing one at a time.
    weights = np.array([1.0, 2.0, 3.0, 4.0])
    total = weights.sum()
    rng = np.random.default_rng(1)
    draws = 20_000
    pairs = np.zeros((4, 4))
    for _ in range(draws):
        first, second = weighted_sample(weights, 2, rng)
        pairs[first, second] += 1
    expected = np.array(
        [
            [0.0 if i == j else weights[i] / total * weights[j] / (total - weights[i]) for j in range(4)]
            for i in range(4)
        ]
    )
    np.testing.assert_allclose(pairs / draws, expected, atol=0.012)


def test_weighted_sample_breaks_tied_keys_towards_the_lower_index():
    class Constant:  # every uniform equal: every key equal among equal weights
        def random(self, size):
            return np.full(size, 0.5)

    np.testing.assert_array_equal(weighted_sample(np.array([0.0, 1.0, 1.0, 1.0]), 2, Constant()), [1, 2])


def test_weighted_sample_refuses_more_draws_than_positive_weights():
    with pytest.raises(ValueError, match=r"Cannot draw 3 .* only 2 of the 3"):
        weighted_sample(np.array([1.0, 0.0, 1.0]), 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="size"):
        weighted_sample(np.array([1.0, 1.0]), -1, np.random.default_rng(0))


def reference_importance(inclusion, chosen, num_prompts, max_weight):
    raw = [min((len(chosen) / num_prompts) / inclusion[i], max_weight) for i in chosen]
    mean = sum(raw) / len(raw)
    return [w / mean for w in raw]


@pytest.mark.parametrize("max_weight", [1.5, 4.0, math.inf])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_importance_weights_match_the_formula_and_have_mean_one(max_weight, seed):
    weights = weight_vector("heavy", 40, seed)
    pi = inclusion_probabilities(weights, 10)
    chosen = weighted_sample(weights, 10, np.random.default_rng(seed))
    got = importance_weights(pi, chosen, 40, max_weight)
    np.testing.assert_allclose(got, reference_importance(pi, chosen, 40, max_weight), rtol=1e-12)
    assert got.mean() == pytest.approx(1.0, abs=1e-12)


def test_importance_weights_clip_a_rarely_drawn_prompt():
    pi = np.array([0.01, 0.5, 0.5, 0.99])
    got = importance_weights(pi, np.array([0, 1, 2, 3]), 4, max_weight=3.0)
    raw = np.array([3.0, 2.0, 2.0, 1 / 0.99])  # (4 / 4) / pi, the first clipped from 100 to 3
    np.testing.assert_allclose(got, raw / raw.mean())
    assert got[0] / got[1] == pytest.approx(1.5)


def test_uniform_inclusion_gives_unit_weights():
    pi = inclusion_probabilities(np.ones(30), 6)
    np.testing.assert_allclose(importance_weights(pi, np.array([3, 7, 11, 0, 29, 4]), 30, 5.0), np.ones(6))


def test_importance_weights_edge_cases():
    assert importance_weights(np.array([0.5, 0.5]), np.array([], dtype=int), 2, 5.0).shape == (0,)
    with pytest.raises(ValueError, match="positive inclusion"):
        importance_weights(np.array([0.0, 1.0]), np.array([0, 1]), 2, 5.0)
    with pytest.raises(ValueError, match="max_weight"):
        importance_weights(np.array([0.5, 0.5]), np.array([0]), 2, 0.0)


# ----------------------------------------------------------------------------------------------------------------------
# AUC
# ----------------------------------------------------------------------------------------------------------------------


def reference_auc(scores, labels) -> float:
    """Over every (positive, negative) pair: 1 when the positive scores higher, 1/2 on a tie."""
    pairs = [(s, bool(y)) for s, y in zip(scores, labels, strict=True) if not math.isnan(s)]
    positives = [s for s, y in pairs if y]
    negatives = [s for s, y in pairs if not y]
    if not positives or not negatives:
        return math.nan
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


@pytest.mark.parametrize("n", [2, 3, 17, 200])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("nan_share", [0.0, 0.3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank_auc_matches_the_pair_count(n, ties, nan_share, seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.4
    scores = rng.standard_normal(n) + labels
    if ties:
        scores = np.round(scores)
    scores[rng.random(n) < nan_share] = math.nan
    expected = reference_auc(scores.tolist(), labels.tolist())
    got = rank_auc(scores, labels.astype(int) if seed else labels)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected, abs=1e-12)


def test_rank_auc_edge_cases():
    assert rank_auc(np.array([0.1, 0.9]), np.array([0, 1])) == 1.0
    assert rank_auc(np.array([0.9, 0.1]), np.array([0, 1])) == 0.0
    assert rank_auc(np.array([0.5, 0.5, 0.5]), np.array([0, 1, 1])) == 0.5
    assert math.isnan(rank_auc(np.array([0.1, 0.2]), np.array([1, 1])))
    assert math.isnan(rank_auc(np.array([math.nan, 0.2]), np.array([0, 1])))  # the only negative has no score
    assert math.isnan(rank_auc(np.array([]), np.array([])))
    with pytest.raises(ValueError, match="binary"):
        rank_auc(np.array([0.1, 0.2]), np.array([0, 2]))
    with pytest.raises(ValueError, match="same length"):
        rank_auc(np.array([0.1, 0.2]), np.array([0]))


# ----------------------------------------------------------------------------------------------------------------------
# Group outcomes
# ----------------------------------------------------------------------------------------------------------------------


def trl_std_and_zero_std(rewards: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TRL's GRPO statistics (trl 1.16, `_generate_and_score_completions`): `nanstd` (Bessel-corrected over the
    non-NaN rewards, NaN with fewer than 2) and `is_std_zero = torch.isclose(std, 0)`, in float64."""
    tensor = torch.tensor(rewards, dtype=torch.float64)
    mean = torch.nanmean(tensor, dim=1, keepdim=True)
    variance = torch.nanmean((tensor - mean) ** 2, dim=1)
    count = (~torch.isnan(tensor)).sum(dim=1)
    variance = variance * torch.where(count > 1, count / (count - 1), torch.full_like(variance, math.nan))
    std = variance.sqrt()
    return std.numpy(), torch.isclose(std, torch.zeros_like(std)).numpy()


GROUPS = {
    "binary": [[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
    "continuous": [[0.5, 0.5, 0.5, 0.5], [0.2, 0.7, 0.1, 0.9], [0.3, 0.3 + 1e-9, 0.3, 0.3], [0.3, 0.31, 0.3, 0.3]],
    "nan": [
        [1.0, math.nan, 0.0, math.nan],
        [math.nan] * 4,
        [0.4, math.nan, math.nan, math.nan],
        [1.0, 1.0, math.nan, 1.0],
    ],
    "large": [
        [1e6, 1e6 + 1.0, 1e6, 1e6],
        [1e6, 1e6 + 1e-3, 1e6, 1e6],
        [-3.0, 2.0, 7.5, 0.0],
        [-1.0, -1.0, -1.0, -1.0],
    ],
}


@pytest.mark.parametrize("case", list(GROUPS))
def test_group_outcomes_match_trl_and_the_formulas(case):
    rewards = np.array(GROUPS[case])
    outcomes = group_outcomes(rewards)
    std, zero_std = trl_std_and_zero_std(rewards)
    for g, row in enumerate(rewards.tolist()):
        scored = [r for r in row if not math.isnan(r)]
        assert outcomes.count[g] == len(scored)
        assert outcomes.total[g] == pytest.approx(sum(scored), abs=0)
        if scored:
            assert outcomes.mean[g] == pytest.approx(sum(scored) / len(scored), rel=1e-15)
        else:
            assert math.isnan(outcomes.mean[g])
        if len(scored) >= 2:
            mean = sum(scored) / len(scored)
            assert outcomes.std[g] == pytest.approx(
                math.sqrt(sum((r - mean) ** 2 for r in scored) / (len(scored) - 1))
            )
            assert outcomes.mixed[g] == (not zero_std[g])
        else:
            assert math.isnan(outcomes.std[g]) and not outcomes.mixed[g]
    np.testing.assert_allclose(outcomes.std, std, rtol=1e-6, equal_nan=True)
    assert outcomes.count.dtype == np.int64 and outcomes.mixed.dtype == bool


def test_group_outcomes_mixed_follows_the_variance_not_the_values():
    outcomes = group_outcomes(
        np.array([[0.5, 0.5, 0.5], [0.0, 1.0, math.nan], [1.0, 1.0, 1.0], [0.0, math.nan, math.nan]])
    )
    np.testing.assert_array_equal(outcomes.mixed, [False, True, False, False])
    with pytest.raises(ValueError, match="num_groups, G"):
        group_outcomes(np.array([0.0, 1.0]))
    with pytest.raises(AttributeError):  # frozen
        outcomes.mixed = None


# ----------------------------------------------------------------------------------------------------------------------
# Beliefs: a naive reference that keeps every observation and recomputes everything from scratch
# ----------------------------------------------------------------------------------------------------------------------


def naive_mixed_probability(alpha: float, beta: float, group_size: int) -> float:
    all_pass = all_fail = 1.0
    for j in range(group_size):
        all_pass *= (alpha + j) / (alpha + beta + j)
        all_fail *= (beta + j) / (alpha + beta + j)
    return 1.0 - all_pass - all_fail


class NaiveBeliefs:
    """Every observation with its round; every query sums 0.5 ** ((now - r) / h) * x over all of them."""

    def __init__(self, num_prompts, group_size, half_life, prior_strength=1.0, reward_range=None):
        self.num_prompts, self.group_size, self.half_life = num_prompts, group_size, half_life
        self.prior_strength, self.reward_range = prior_strength, reward_range
        self.groups = []  # (round, prompt, scored rewards, mixed)

    def observe(self, round, prompts, rewards):
        for prompt, row in zip(prompts.tolist(), rewards.tolist(), strict=True):
            scored = [r for r in row if not math.isnan(r)]
            if self.reward_range is not None:
                scored = [min(max(r, self.reward_range[0]), self.reward_range[1]) for r in scored]
            mixed = False
            if len(scored) >= 2:
                mean = sum(scored) / len(scored)
                std = math.sqrt(sum((r - mean) ** 2 for r in scored) / (len(scored) - 1))
                mixed = abs(std) > 1e-8
            self.groups.append((round, prompt, scored, mixed))

    def weight(self, now, round):
        return 0.5 ** ((now - round) / self.half_life)

    def decayed(self, now):
        counts = {name: np.zeros(self.num_prompts) for name in ("reward_sum", "completions", "groups", "mixed_groups")}
        for round, prompt, scored, mixed in self.groups:
            w = self.weight(now, round)
            counts["reward_sum"][prompt] += w * sum(scored)
            counts["completions"][prompt] += w * len(scored)
            counts["groups"][prompt] += w
            counts["mixed_groups"][prompt] += w * mixed
        return counts

    def values(self):
        return sorted({r for _, _, scored, _ in self.groups for r in scored})

    def binary(self):
        return len(self.values()) <= 2

    def scaled_sums(self, now):
        """S_i with every reward scaled on its own: (r - lo) / (hi - lo), 0 while the range is one value."""
        values = self.values()
        lo, hi = self.reward_range if self.reward_range is not None else (values[0], values[-1]) if values else (0, 0)
        s = np.zeros(self.num_prompts)
        for round, prompt, scored, _ in self.groups:
            if hi > lo:
                s[prompt] += self.weight(now, round) * sum((r - lo) / (hi - lo) for r in scored)
        return s

    def pass_rate(self, now):
        return (0.5 + self.scaled_sums(now)) / (1.0 + self.decayed(now)["completions"])

    def history(self, now):
        counts, s = self.decayed(now), self.scaled_sums(now)
        if self.binary():
            n = counts["completions"]
            return np.array(
                [naive_mixed_probability(0.5 + s[i], 0.5 + n[i] - s[i], self.group_size) for i in range(s.size)]
            )
        return (0.5 + counts["mixed_groups"]) / (1.0 + counts["groups"])

    def population_share(self, now):
        mixed = sum(self.weight(now, r) * m for r, _, _, m in self.groups)
        groups = sum(self.weight(now, r) for r, _, _, _ in self.groups)
        return (0.5 + mixed) / (1.0 + groups)

    def zone_scores(self, now, prediction):
        g = self.decayed(now)["groups"]
        w = g / (g + self.prior_strength)
        return w * self.history(now) + (1 - w) * prediction


def observation_sequence(seed: int, num_prompts: int, group_size: int, rewards: str, num_rounds: int = 12):
    """(round, prompts, rewards) triples: rounds that repeat or skip, prompts drawn with replacement (so a prompt can
    have two groups in a round), some rewards NaN."""
    rng = np.random.default_rng(seed)
    round, sequence = 0, []
    pass_rate = rng.random(num_prompts)
    for _ in range(num_rounds):
        round += int(rng.choice([0, 1, 1, 3]))
        prompts = rng.integers(0, num_prompts, int(rng.integers(0, 2 * num_prompts)))
        passed = rng.random((prompts.size, group_size)) < pass_rate[prompts, None]
        if rewards == "binary":
            values = passed.astype(float)
        elif rewards == "signed":  # two values, not 0 and 1: the learnt range maps them to 0 and 1
            values = np.where(passed, 2.0, -1.0)
        else:  # a graded reward, and constant groups of a non-binary value
            values = np.round(passed * 0.6 + 0.4 * rng.random((prompts.size, group_size)), 1)
            values[rng.random(prompts.size) < 0.2] = 0.5
        values[rng.random(values.shape) < 0.1] = math.nan
        sequence.append((round, prompts, values))
    return sequence


def assert_beliefs_match(beliefs: PassRateBeliefs, naive: NaiveBeliefs, now: int, prediction):
    got, expected = beliefs.decayed(now), naive.decayed(now)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-12, atol=1e-12, err_msg=name)
    assert beliefs.binary() == naive.binary()
    np.testing.assert_allclose(beliefs.pass_rate(now), naive.pass_rate(now), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(beliefs.history_mixed_probability(now), naive.history(now), rtol=1e-9, atol=1e-12)
    assert beliefs.population_mixed_share(now) == pytest.approx(naive.population_share(now), rel=1e-12)
    np.testing.assert_allclose(
        beliefs.zone_scores(now, prediction), naive.zone_scores(now, prediction), rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize("half_life", [1.0, 7.5, math.inf])
@pytest.mark.parametrize("rewards", ["binary", "signed", "graded"])
@pytest.mark.parametrize("reward_range", [None, (-1.0, 2.0)], ids=["learnt", "fixed"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beliefs_match_the_naive_reference(half_life, rewards, reward_range, seed):
    num_prompts, group_size = 9, 4
    config = BeliefConfig(group_size=group_size, half_life=half_life, prior_strength=1.5, reward_range=reward_range)
    beliefs = PassRateBeliefs(num_prompts, config)
    naive = NaiveBeliefs(num_prompts, group_size, half_life, 1.5, reward_range)
    prediction = np.random.default_rng(seed).random(num_prompts)
    assert_beliefs_match(beliefs, naive, 0, prediction)  # before anything: the priors
    for round, prompts, values in observation_sequence(seed, num_prompts, group_size, rewards):
        outcomes = beliefs.observe(round, prompts, values)
        naive.observe(round, prompts, values)
        assert outcomes.count.shape == (prompts.size,)
        for now in (round, round + 2):
            assert_beliefs_match(beliefs, naive, now, prediction)
            assert_beliefs_match(beliefs, naive, now, 0.3)
    np.testing.assert_array_equal(
        beliefs.visits, np.bincount([p for _, p, _, _ in naive.groups], minlength=num_prompts)
    )


def test_unseen_prompts_are_judged_by_the_prediction():
    beliefs = PassRateBeliefs(4, BeliefConfig(group_size=8, half_life=2.0))
    np.testing.assert_array_equal(beliefs.pass_rate(0), np.full(4, 0.5))
    np.testing.assert_array_equal(beliefs.zone_scores(0, np.array([0.1, 0.2, 0.3, 0.4])), [0.1, 0.2, 0.3, 0.4])
    assert beliefs.population_mixed_share(5) == 0.5
    beliefs.observe(3, np.array([0, 0, 0]), np.ones((3, 8)))
    # A prompt seen long ago weighs less and less against the prediction.
    scores = [beliefs.zone_scores(now, 0.9)[0] for now in (3, 5, 9, 30)]
    assert all(later > earlier for earlier, later in zip(scores, scores[1:], strict=False))
    assert scores[-1] == pytest.approx(0.9, abs=1e-3)
    assert beliefs.zone_scores(30, 0.9)[1] == 0.9


def test_two_groups_in_one_round_equal_two_calls_in_that_round():
    config = BeliefConfig(group_size=3, half_life=4.0)
    together, apart = PassRateBeliefs(3, config), PassRateBeliefs(3, config)
    rewards = np.array([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    together.observe(2, np.array([1, 1, 2]), rewards)
    for g, prompt in enumerate([1, 1, 2]):
        apart.observe(2, np.array([prompt]), rewards[g : g + 1])
    for name, value in together.decayed(5).items():
        np.testing.assert_allclose(value, apart.decayed(5)[name], rtol=1e-15)
    np.testing.assert_array_equal(together.visits, [0, 2, 1])
    assert together.decayed(2)["groups"][1] == 2.0 and together.decayed(2)["mixed_groups"][1] == 1.0


def test_rounds_only_go_forward():
    beliefs = PassRateBeliefs(3, BeliefConfig(group_size=2, half_life=5.0))
    beliefs.observe(4, np.array([0]), np.array([[0.0, 1.0]]))
    beliefs.observe(4, np.array([1]), np.array([[0.0, 1.0]]))  # the same round again is fine
    with pytest.raises(ValueError, match="before the latest observed round 4"):
        beliefs.observe(3, np.array([2]), np.array([[0.0, 1.0]]))
    for query in (
        beliefs.pass_rate,
        beliefs.decayed,
        beliefs.history_mixed_probability,
        beliefs.population_mixed_share,
    ):
        with pytest.raises(ValueError, match="before the latest observed round 4"):
            query(2)
    with pytest.raises(ValueError, match="non-negative integer"):
        beliefs.observe(-1, np.array([0]), np.array([[0.0, 1.0]]))


def test_observe_refuses_malformed_input():
    beliefs = PassRateBeliefs(3, BeliefConfig(group_size=2, half_life=5.0))
    with pytest.raises(ValueError, match=r"\(1, 2\), got \(1, 3\)"):
        beliefs.observe(0, np.array([0]), np.array([[0.0, 1.0, 1.0]]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        beliefs.observe(0, np.array([3]), np.array([[0.0, 1.0]]))
    with pytest.raises(ValueError, match="integer"):
        beliefs.observe(0, np.array([0.5]), np.array([[0.0, 1.0]]))
    with pytest.raises(ValueError, match="finite"):
        beliefs.observe(0, np.array([0]), np.array([[0.0, math.inf]]))
    beliefs.observe(0, np.array([], dtype=int), np.zeros((0, 2)))  # an empty round is fine


def test_binary_detection_switches_off_for_good_at_a_third_value():
    beliefs = PassRateBeliefs(2, BeliefConfig(group_size=4, half_life=math.inf))
    assert beliefs.binary()  # nothing seen yet
    beliefs.observe(0, np.array([0, 1]), np.array([[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]))
    assert beliefs.binary()
    binary_history = beliefs.history_mixed_probability(0)
    np.testing.assert_allclose(binary_history[1], naive_mixed_probability(4.5, 0.5, 4), rtol=1e-12)
    beliefs.observe(1, np.array([1]), np.array([[1.0, 1.0, 0.5, math.nan]]))
    assert not beliefs.binary()
    # Now the smoothed share of mixed groups: prompt 0 had 1 mixed group of 1, prompt 1 1 of 2.
    np.testing.assert_allclose(beliefs.history_mixed_probability(1), [1.5 / 2, 1.5 / 3])
    beliefs.observe(2, np.array([0]), np.array([[0.0, 1.0, 0.0, 1.0]]))
    assert not beliefs.binary()
    assert not PassRateBeliefs.from_state_dict(beliefs.state_dict(), beliefs.config).binary()


def test_constant_non_binary_groups_are_never_mixed():
    beliefs = PassRateBeliefs(2, BeliefConfig(group_size=3, half_life=math.inf))
    for round in range(5):
        beliefs.observe(round, np.array([0, 1]), np.array([[0.5, 0.5, 0.5], [0.2, 0.9, 0.4]]))
    history = beliefs.history_mixed_probability(4)
    np.testing.assert_allclose(history, [0.5 / 6, 5.5 / 6])


def test_learnt_and_fixed_reward_ranges():
    rewards = np.array([[0.0, 2.0, 2.0, 2.0]])
    learnt = PassRateBeliefs(1, BeliefConfig(group_size=4, half_life=math.inf))
    fixed = PassRateBeliefs(1, BeliefConfig(group_size=4, half_life=math.inf, reward_range=(0.0, 4.0)))
    for beliefs in (learnt, fixed):
        beliefs.observe(0, np.array([0]), rewards)
    assert learnt.pass_rate(0)[0] == pytest.approx((0.5 + 3.0) / 5.0)  # 2 is the top of the learnt range
    assert fixed.pass_rate(0)[0] == pytest.approx((0.5 + 1.5) / 5.0)  # 2 is the middle of (0, 4)
    # The learnt range widens later: the first group is rescaled, since raw sums are kept.
    learnt.observe(1, np.array([0]), np.array([[4.0, 4.0, 4.0, 4.0]]))
    assert learnt.pass_rate(1)[0] == pytest.approx((0.5 + 1.5 + 4.0) / 9.0)
    # Rewards outside a fixed range are clipped to it.
    fixed.observe(1, np.array([0]), np.array([[9.0, 9.0, -3.0, math.nan]]))
    assert fixed.decayed(1)["reward_sum"][0] == 6.0 + 8.0
    # A single value seen so far: no scale yet, S = 0; P(mixed) is the same either way (symmetric in p and 1 - p).
    single = PassRateBeliefs(2, BeliefConfig(group_size=4, half_life=math.inf))
    single.observe(0, np.array([0]), np.ones((1, 4)))
    assert single.pass_rate(0)[0] == pytest.approx(0.5 / 5.0)
    assert single.history_mixed_probability(0)[0] == pytest.approx(naive_mixed_probability(4.5, 0.5, 4))


def test_decay_halves_a_count_every_half_life():
    beliefs = PassRateBeliefs(1, BeliefConfig(group_size=2, half_life=3.0))
    beliefs.observe(2, np.array([0]), np.array([[1.0, 0.0]]))
    assert [beliefs.decayed(now)["groups"][0] for now in (2, 5, 8)] == pytest.approx([1.0, 0.5, 0.25])
    never = PassRateBeliefs(1, BeliefConfig(group_size=2, half_life=math.inf))
    never.observe(2, np.array([0]), np.array([[1.0, 0.0]]))
    assert never.decayed(10**6)["groups"][0] == 1.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"group_size": 0, "half_life": 1.0}, "group_size"),
        ({"group_size": 4, "half_life": 0.0}, "half_life"),
        ({"group_size": 4, "half_life": math.nan}, "half_life"),
        ({"group_size": 4, "half_life": 1.0, "prior_strength": 0.0}, "prior_strength"),
        ({"group_size": 4, "half_life": 1.0, "reward_range": (1.0, 1.0)}, "reward_range"),
    ],
)
def test_belief_config_validates(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BeliefConfig(**kwargs)


def assert_states_equal(first: dict, second: dict):
    assert first.keys() == second.keys()
    for key, value in first.items():
        if isinstance(value, np.ndarray):
            assert value.dtype == second[key].dtype, key
            np.testing.assert_array_equal(value, second[key], err_msg=key)
            assert np.array_equal(value, second[key]), key
        else:
            assert type(value) is type(second[key]) and value == second[key], key


@pytest.mark.parametrize("half_life", [1.0, 7.5, math.inf])
@pytest.mark.parametrize("rewards", ["binary", "graded"])
def test_beliefs_state_round_trip_is_bitwise_and_continues_identically(half_life, rewards):
    config = BeliefConfig(group_size=4, half_life=half_life)
    sequence = observation_sequence(7, 11, 4, rewards, num_rounds=10)
    uninterrupted = PassRateBeliefs(11, config)
    for round, prompts, values in sequence[:5]:
        uninterrupted.observe(round, prompts, values)
    state = uninterrupted.state_dict()
    for name in ("reward_sum", "completions", "groups", "mixed_groups", "last_round"):
        assert state[name].dtype == np.float64
    saved = {key: value.copy() if isinstance(value, np.ndarray) else value for key, value in state.items()}
    resumed = PassRateBeliefs.from_state_dict(state, config)
    assert_states_equal(resumed.state_dict(), state)
    for round, prompts, values in sequence[5:]:
        uninterrupted.observe(round, prompts, values)
        resumed.observe(round, prompts, values)
    assert_states_equal(resumed.state_dict(), uninterrupted.state_dict())
    now = sequence[-1][0] + 1
    np.testing.assert_array_equal(resumed.zone_scores(now, 0.4), uninterrupted.zone_scores(now, 0.4))
    np.testing.assert_array_equal(resumed.pass_rate(now), uninterrupted.pass_rate(now))
    assert_states_equal(state, saved)  # the state is a copy: the beliefs moving on leave it as it was


def test_state_with_the_wrong_number_of_prompts_is_refused():
    state = PassRateBeliefs(3, BeliefConfig(group_size=2, half_life=1.0)).state_dict()
    state["groups"] = np.zeros(4)
    with pytest.raises(ValueError, match="'groups' has shape"):
        PassRateBeliefs.from_state_dict(state, BeliefConfig(group_size=2, half_life=1.0))


# ----------------------------------------------------------------------------------------------------------------------
# The predictor
# ----------------------------------------------------------------------------------------------------------------------

TRUE_INTERCEPT, TRUE_WEIGHTS = -0.3, np.array([1.5, -2.0, 0.0])


def synthetic_groups(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features with different scales and offsets, and outcomes from a known logistic model on them."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, 3))
    features = latent * np.array([10.0, 0.1, 1.0]) + np.array([5.0, -2.0, 0.0])
    logits = TRUE_INTERCEPT + latent @ TRUE_WEIGHTS
    return features, rng.random(n) < 1.0 / (1.0 + np.exp(-logits))


def test_predictor_recovers_a_known_logistic_model():
    features, mixed = synthetic_groups(3000, 0)
    predictor = MixedGroupPredictor(num_features=3, window=4096, min_groups=32, l2=1.0)
    predictor.add(features, mixed)
    predictor.fit()
    weights = predictor.state_dict()["weights"]
    assert weights[1] > 0.5 and weights[2] < -0.5 and abs(weights[3]) < 0.2
    assert weights[1:3] == pytest.approx(TRUE_WEIGHTS[:2], abs=0.3)  # standardised features: the latent scale
    test_features, test_mixed = synthetic_groups(2000, 1)
    predicted = predictor.predict(test_features)
    assert np.all((predicted > 0) & (predicted < 1))
    assert rank_auc(predicted, test_mixed) > 0.8


@pytest.mark.skipif(optimize is None, reason="scipy is not installed")
@pytest.mark.parametrize("l2", [0.0, 1.0, 50.0])
def test_predictor_minimises_the_penalised_likelihood(l2):
    features, mixed = synthetic_groups(400, 2)
    predictor = MixedGroupPredictor(num_features=3, l2=l2)
    predictor.add(features, mixed)
    predictor.fit()
    x = np.column_stack([np.ones(400), (features - features.mean(0)) / features.std(0)])
    y = mixed.astype(float)

    def objective(w):
        z = x @ w
        return np.sum(np.logaddexp(0.0, z) - y * z) + l2 / 2 * np.sum(w[1:] ** 2)

    best = optimize.minimize(objective, np.zeros(4), method="BFGS", options={"gtol": 1e-10}).x
    np.testing.assert_allclose(predictor.state_dict()["weights"], best, atol=1e-5)


def test_predictor_falls_back_to_the_share_of_mixed_groups():
    predictor = MixedGroupPredictor(num_features=2, min_groups=10)
    np.testing.assert_array_equal(predictor.predict(np.zeros((3, 2))), np.full(3, 0.5))  # nothing seen
    rng = np.random.default_rng(0)
    predictor.add(rng.standard_normal((6, 2)), np.array([1, 0, 0, 1, 1, 1], bool))
    predictor.fit()  # 6 < min_groups
    np.testing.assert_allclose(predictor.predict(np.zeros((2, 2))), (0.5 + 4) / 7)
    predictor.add(rng.standard_normal((20, 2)), np.zeros(20, bool))
    predictor.fit()
    assert predictor.state_dict()["fitted"]
    one_class = MixedGroupPredictor(num_features=2, min_groups=10)
    one_class.add(rng.standard_normal((50, 2)), np.zeros(50, bool))
    one_class.fit()  # both outcomes are needed
    assert not one_class.state_dict()["fitted"]
    np.testing.assert_allclose(one_class.predict(np.ones((1, 2))), 0.5 / 51)


def test_predictor_window_keeps_the_last_rows():
    predictor = MixedGroupPredictor(num_features=1, window=4)
    predictor.add(np.arange(3.0)[:, None], np.array([True, False, True]))
    predictor.add(np.arange(3.0, 6.0)[:, None], np.array([False, False, True]))
    np.testing.assert_array_equal(predictor.state_dict()["features"][:, 0], [2.0, 3.0, 4.0, 5.0])
    np.testing.assert_array_equal(predictor.state_dict()["mixed"], [True, False, False, True])
    with pytest.raises(ValueError, match=r"\(n, 1\)"):
        predictor.add(np.zeros((2, 2)), np.zeros(2, bool))
    with pytest.raises(ValueError, match="finite"):
        predictor.add(np.array([[math.nan]]), np.zeros(1, bool))


def test_predictor_refit_is_deterministic_and_uses_the_window_only():
    features, mixed = synthetic_groups(600, 3)
    first, second = MixedGroupPredictor(3, window=300), MixedGroupPredictor(3, window=300)
    first.add(features, mixed)
    second.add(features[300:], mixed[300:])
    first.fit()
    weights = first.state_dict()["weights"]
    first.fit()
    second.fit()
    np.testing.assert_array_equal(first.state_dict()["weights"], weights)
    np.testing.assert_array_equal(second.state_dict()["weights"], weights)


def test_predictor_state_round_trip_is_bitwise():
    features, mixed = synthetic_groups(500, 4)
    uninterrupted = MixedGroupPredictor(3, window=400, min_groups=16, l2=0.5)
    uninterrupted.add(features[:300], mixed[:300])
    uninterrupted.fit()
    state = uninterrupted.state_dict()
    resumed = MixedGroupPredictor.from_state_dict(state)
    assert_states_equal(resumed.state_dict(), state)
    np.testing.assert_array_equal(resumed.predict(features[300:]), uninterrupted.predict(features[300:]))
    for predictor in (uninterrupted, resumed):
        predictor.add(features[300:], mixed[300:])
        predictor.fit()
    assert_states_equal(resumed.state_dict(), uninterrupted.state_dict())
    unfitted = MixedGroupPredictor(3)
    assert_states_equal(MixedGroupPredictor.from_state_dict(unfitted.state_dict()).state_dict(), unfitted.state_dict())
