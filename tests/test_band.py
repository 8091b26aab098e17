"""`select_zone`, `log_difficulty` and `minimum_zone_size` against a naive reference."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_zpd.band import log_difficulty, minimum_zone_size, select_zone
from hf_zpd.statistics import COMPOSITE_WEIGHTS, LOSS_ONLY_WEIGHTS, competence

# ----------------------------------------------------------------------------------------------------------------------
# The naive reference
# ----------------------------------------------------------------------------------------------------------------------


def reference_select(log_d, lower=1.1, upper=1.3, min_size=1, valid=None) -> dict:
    """The band rule of the method (README, "How it works") by loops: D = exp(mean log d) over the usable examples, the band
    [lower * D, upper * D] (compared in log space), then the nearest examples by distance to the band in log-difficulty,
    ties to the lower index, until `min_size` (capped at the number of usable examples)."""
    log_d = [float(x) for x in log_d]
    usable = [i for i, x in enumerate(log_d) if math.isfinite(x) and (valid is None or bool(valid[i]))]
    if not usable:
        return {
            "indices": [],
            "level": math.nan,
            "num_in_band": 0,
            "num_widened": 0,
            "num_nonfinite": len(log_d),
        }
    # np.mean over the same values in the same order as the package, so that an example exactly on a band edge
    # is classified the same way: the mean is not what this reference checks.
    log_level = float(np.mean(np.array([log_d[i] for i in usable])))
    log_lower, log_upper = log_level + math.log(lower), log_level + math.log(upper)

    def distance(i: int) -> float:
        if log_d[i] < log_lower:
            return log_lower - log_d[i]
        if log_d[i] > log_upper:
            return log_d[i] - log_upper
        return 0.0

    in_band = [i for i in usable if log_lower <= log_d[i] <= log_upper]
    target = min(max(min_size, len(in_band)), len(usable))
    if len(in_band) >= target:
        chosen = in_band
    else:
        chosen = sorted(sorted(usable, key=lambda i: (distance(i), i))[:target])
    return {
        "indices": chosen,
        "level": math.exp(log_level),
        "band_lower": math.exp(log_lower),
        "band_upper": math.exp(log_upper),
        "num_in_band": len(in_band),
        "num_widened": len(chosen) - len(in_band),
        "num_nonfinite": len(log_d) - len(usable),
    }


def assert_matches_reference(selection, expected: dict, num_scored: int):
    assert selection.indices.dtype == np.int64
    assert selection.indices.tolist() == expected["indices"]
    assert selection.num_in_band == expected["num_in_band"]
    assert selection.num_widened == expected["num_widened"]
    assert selection.num_nonfinite == expected["num_nonfinite"]
    assert selection.num_scored == num_scored
    if math.isnan(expected["level"]):
        assert math.isnan(selection.level)
    else:
        for name in ("level", "band_lower", "band_upper"):
            torch.testing.assert_close(getattr(selection, name), expected[name], rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------------------------------------------------
# Score distributions (as log-difficulties)
# ----------------------------------------------------------------------------------------------------------------------


def make_log_difficulties(distribution: str, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if distribution == "unimodal":
        return math.log(10) + 0.3 * rng.standard_normal(size)
    if distribution == "bimodal":
        # Two tight clusters a factor 10 apart: the band [1.1 D, 1.3 D] lies in the gap between them.
        low = math.log(5) + 0.01 * rng.standard_normal(size // 2)
        high = math.log(50) + 0.01 * rng.standard_normal(size - size // 2)
        return rng.permutation(np.concatenate([low, high]))
    if distribution == "all_equal":
        return np.full(size, math.log(10))
    if distribution == "lognormal":
        return rng.normal(math.log(10), 1.5, size)
    if distribution == "pareto":
        return np.log1p(rng.pareto(1.2, size))
    if distribution == "with_nonfinite":
        log_d = math.log(10) + 0.3 * rng.standard_normal(size)
        log_d[1::5] = np.nan
        log_d[2::7] = np.inf
        log_d[4::9] = -np.inf
        if size:
            log_d[-1] = np.nan
        return log_d
    raise ValueError(distribution)


DISTRIBUTIONS = ["unimodal", "bimodal", "all_equal", "lognormal", "pareto", "with_nonfinite"]
POOL_SIZES = [1, 2, 7, 100, 1000]
MIN_SIZES = {
    "min1": lambda n: 1,
    "min_third": lambda n: max(1, n // 3),
    "min_pool": lambda n: n,
    "min_above_pool": lambda n: n + 5,
}


@pytest.mark.parametrize("min_id", list(MIN_SIZES))
@pytest.mark.parametrize("pool_size", POOL_SIZES, ids=[f"pool{n}" for n in POOL_SIZES])
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_select_zone_matches_reference(distribution, pool_size, min_id):
    log_d = make_log_difficulties(distribution, pool_size)
    min_size = MIN_SIZES[min_id](pool_size)
    selection = select_zone(log_d, 1.1, 1.3, min_size)
    expected = reference_select(log_d, 1.1, 1.3, min_size)
    assert_matches_reference(selection, expected, pool_size)

    num_finite = int(np.isfinite(log_d).sum())
    assert selection.indices.size == min(max(min_size, selection.num_in_band), num_finite)
    assert np.isfinite(log_d[selection.indices]).all()
    assert selection.zone_fraction == selection.num_in_band / pool_size


@pytest.mark.parametrize("min_id", list(MIN_SIZES))
@pytest.mark.parametrize("pool_size", [2, 7, 100, 1000], ids=lambda n: f"pool{n}")
def test_bimodal_band_in_the_gap_is_widened(pool_size, min_id):
    log_d = make_log_difficulties("bimodal", pool_size)
    min_size = MIN_SIZES[min_id](pool_size)
    selection = select_zone(log_d, 1.1, 1.3, min_size)
    assert selection.num_in_band == 0
    assert selection.num_widened == min(min_size, pool_size) == selection.indices.size
    # The band lies strictly between the clusters.
    assert 5.5 < selection.band_lower < selection.band_upper < 45


@pytest.mark.parametrize("min_size", [1, 3, 7, 12])
def test_all_equal_band_is_empty_and_widened_by_lowest_index(min_size):
    selection = select_zone(np.full(7, math.log(10)), 1.1, 1.3, min_size)
    torch.testing.assert_close(selection.level, 10.0)
    assert selection.num_in_band == 0
    assert selection.num_widened == min(min_size, 7)
    assert selection.indices.tolist() == list(range(min(min_size, 7)))


def test_widening_takes_nearest_in_log_difficulty_with_ties_to_lower_index():
    # Level D = exp(mean) = 10 by construction: log-difficulties symmetric around log 10.
    # Band in log space: [log 11, log 13].
    log_d = np.log(np.array([10.0, 10.0, 10.0, 10.0]))
    log_d = np.concatenate([log_d, [math.log(10) + 0.3, math.log(10) - 0.3]])  # D is still 10
    selection = select_zone(log_d, 1.1, 1.3, min_size=3)
    torch.testing.assert_close(selection.level, 10.0)
    # Index 4 (d = 10 e^0.3 = 13.5) is nearest (log 13.5 - log 13 = 0.038); then the four at d = 10
    # (log 11 - log 10 = 0.095) tie, and the lower indices 0 and 1 win; index 5 (d = 7.4) is farthest.
    assert selection.indices.tolist() == [0, 1, 4]
    assert (selection.num_in_band, selection.num_widened) == (0, 3)


def test_nonfinite_examples_are_never_selected_and_counted():
    log_d = np.array([np.nan, math.log(12), np.inf, math.log(10), -np.inf, math.log(10)])
    selection = select_zone(log_d, 1.1, 1.3, min_size=10)
    assert selection.num_nonfinite == 3
    assert selection.indices.tolist() == [1, 3, 5]  # capped at the three finite examples
    torch.testing.assert_close(selection.level, math.exp((math.log(12) + 2 * math.log(10)) / 3))


def test_no_finite_example_selects_nothing():
    selection = select_zone(np.array([np.nan, np.inf]), min_size=2)
    assert selection.indices.size == 0
    assert selection.num_nonfinite == 2 and selection.num_scored == 2
    assert math.isnan(selection.level)


def test_empty_pool_selects_nothing():
    selection = select_zone(np.zeros(0), min_size=4)
    assert selection.indices.size == 0 and selection.num_scored == 0
    assert selection.zone_fraction == 0.0


def test_valid_mask_excludes_examples_from_level_and_selection():
    log_d = np.log(np.array([10.0, 12.0, 12.0, 1000.0]))
    valid = np.array([True, True, True, False])
    selection = select_zone(log_d, 1.1, 1.3, min_size=1, valid=valid)
    assert_matches_reference(selection, reference_select(log_d, 1.1, 1.3, 1, valid), 4)
    assert 3 not in selection.indices.tolist()
    assert selection.num_nonfinite == 1
    torch.testing.assert_close(selection.level, math.exp(np.log([10.0, 12.0, 12.0]).mean()))


@pytest.mark.parametrize(
    ("lower", "upper"),
    [(1.3, 1.1), (1.2, 1.2), (0.0, 1.3), (-1.0, 1.3), (math.nan, 1.3), (1.1, math.nan)],
    ids=["lower_above_upper", "lower_equals_upper", "lower_zero", "lower_negative", "lower_nan", "upper_nan"],
)
def test_invalid_band_raises(lower, upper):
    with pytest.raises(ValueError, match="lower < upper"):
        select_zone(np.zeros(3), lower, upper)


# ----------------------------------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------------------------------

nonfinite = st.sampled_from([math.nan, math.inf, -math.inf])


@st.composite
def selection_problems(draw):
    # Values spread over a width drawn from narrow (most examples near the band) to wide (band nearly empty).
    center = draw(st.floats(min_value=-5, max_value=15))
    spread = draw(st.sampled_from([0.0, 0.05, 0.3, 1.0, 5.0]))
    finite = st.floats(min_value=-1, max_value=1).map(lambda u: center + spread * u)
    log_d = draw(st.lists(st.one_of(finite, finite, finite, nonfinite), min_size=1, max_size=40))
    use_valid = draw(st.booleans())
    mostly_true = st.sampled_from([True, True, True, False])
    valid = draw(st.lists(mostly_true, min_size=len(log_d), max_size=len(log_d))) if use_valid else None
    lower = draw(st.floats(min_value=0.5, max_value=2.0))
    upper = lower * draw(st.floats(min_value=1.01, max_value=3.0))
    min_size = draw(st.integers(min_value=1, max_value=50))
    return np.array(log_d, dtype=np.float64), valid, lower, upper, min_size


@settings(max_examples=200, deadline=None)
@given(selection_problems())
def test_selection_properties(problem):
    log_d, valid, lower, upper, min_size = problem
    selection = select_zone(log_d, lower, upper, min_size, valid=None if valid is None else np.array(valid))
    num_scored = log_d.size
    usable = np.isfinite(log_d) & (np.ones(num_scored, dtype=bool) if valid is None else np.array(valid, dtype=bool))
    num_finite = int(usable.sum())

    indices = selection.indices
    assert indices.dtype == np.int64
    assert (np.diff(indices) > 0).all()  # ascending and unique
    assert ((indices >= 0) & (indices < num_scored)).all()
    assert usable[indices].all()  # never a non-finite or excluded example
    assert selection.num_nonfinite == num_scored - num_finite
    assert indices.size == min(max(min_size, selection.num_in_band), num_finite)
    assert selection.num_widened == indices.size - selection.num_in_band
    assert selection.num_widened >= 0
    if selection.num_widened > 0:
        assert selection.num_in_band < min_size
    assert_matches_reference(selection, reference_select(log_d, lower, upper, min_size, valid), num_scored)


@settings(max_examples=200, deadline=None)
@given(
    vocab_size=st.integers(min_value=2, max_value=200_000),
    fractions=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=30),
    data=st.data(),
)
def test_a1_identity_difficulty_is_perplexity(vocab_size, fractions, data):
    """With weights (1, 0, 0) and l_i <= log V: d_i = PPL_i = exp(l_i) and D = exp(mean l_i), whatever c and h."""
    loss = np.array(fractions) * math.log(vocab_size)
    confidence = np.array(data.draw(st.lists(st.floats(0, 1), min_size=loss.size, max_size=loss.size)))
    entropy = np.array(data.draw(st.lists(st.floats(0, 1), min_size=loss.size, max_size=loss.size)))
    k = competence(loss, confidence, entropy, vocab_size, LOSS_ONLY_WEIGHTS)
    log_d = log_difficulty(k, vocab_size)
    torch.testing.assert_close(np.exp(log_d), np.exp(loss), rtol=1e-12, atol=1e-12)
    selection = select_zone(log_d)
    torch.testing.assert_close(selection.level, math.exp(loss.mean()), rtol=1e-12, atol=0)


def test_a1_selection_is_the_perplexity_rule():
    """The docstring's example, through the loss-only competence: PPL 10 x4 and 12 x2 select the two 12s."""
    vocab_size = 32_000
    ppl = np.array([10.0, 10.0, 10.0, 10.0, 12.0, 12.0])
    loss = np.log(ppl)
    k = competence(loss, np.full(6, 0.5), np.full(6, 0.5), vocab_size, LOSS_ONLY_WEIGHTS)
    selection = select_zone(log_difficulty(k, vocab_size), 1.1, 1.3)
    expected_level = math.exp(loss.mean())
    torch.testing.assert_close(selection.level, expected_level, rtol=1e-12, atol=0)
    torch.testing.assert_close(selection.band_lower, 1.1 * expected_level, rtol=1e-12, atol=0)
    torch.testing.assert_close(selection.band_upper, 1.3 * expected_level, rtol=1e-12, atol=0)
    assert selection.indices.tolist() == [4, 5]
    assert select_zone(loss, 1.1, 1.3).indices.tolist() == [4, 5]


def test_a1_difficulty_saturates_at_vocab_size_above_log_v():
    """Beyond l = log V the normalised loss is clipped, so d_i = V rather than PPL_i (METHOD's l_i <= log V)."""
    vocab_size = 50
    loss = np.array([math.log(vocab_size), 2 * math.log(vocab_size)])
    k = competence(loss, np.zeros(2), np.zeros(2), vocab_size, LOSS_ONLY_WEIGHTS)
    torch.testing.assert_close(np.exp(log_difficulty(k, vocab_size)), np.full(2, 50.0), rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------------------------------------------------
# log_difficulty and minimum_zone_size
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vocab_size", [2, 11, 50257], ids=lambda v: f"V{v}")
def test_log_difficulty_formula(vocab_size):
    k = np.array([0.0, 0.25, 0.5, 1.0])
    expected = np.array([math.log(vocab_size) * (1 - k_i) for k_i in k])
    result = log_difficulty(k, vocab_size)
    assert result.dtype == np.float64
    torch.testing.assert_close(result, expected, rtol=1e-15, atol=0)
    # k = 1 (mastered) is difficulty 1, k = 0 is difficulty V: the scale of a perplexity.
    torch.testing.assert_close(np.exp(result[[0, -1]]), np.array([float(vocab_size), 1.0]), rtol=1e-12, atol=0)
    torch.testing.assert_close(log_difficulty(k.tolist(), vocab_size), expected, rtol=1e-15, atol=0)


def test_composite_difficulty_lies_between_one_and_vocab_size():
    rng = np.random.default_rng(1)
    vocab_size = 100
    loss = rng.uniform(0, 2 * math.log(vocab_size), 500)
    k = competence(loss, rng.uniform(1 / vocab_size, 1, 500), rng.uniform(0, 1, 500), vocab_size, COMPOSITE_WEIGHTS)
    d = np.exp(log_difficulty(k, vocab_size))
    assert (d >= 1 - 1e-12).all() and (d <= vocab_size * (1 + 1e-12)).all()


@pytest.mark.parametrize(
    ("pool_size", "fraction", "global_batch_size", "expected"),
    [
        (1000, 0.05, 8, 50),
        (100, 0.05, 8, 8),  # the global-batch floor
        (7, 0.05, 1, 1),
        (10, 1.0, 4, 10),
        (3, 0.5, 1, 2),  # ceil(1.5)
        (0, 0.05, 0, 1),  # never below one
        (40, 0.25, 16, 16),
    ],
    ids=["fraction", "batch_floor", "ceil_to_one", "whole_pool", "ceil_half", "at_least_one", "batch_over_fraction"],
)
def test_minimum_zone_size(pool_size, fraction, global_batch_size, expected):
    assert minimum_zone_size(pool_size, fraction, global_batch_size) == expected


@pytest.mark.parametrize(
    ("pool_size", "fraction", "expected"), [(100, 0.07, 7), (100, 0.55, 55)], ids=["0.07x100", "0.55x100"]
)
def test_minimum_zone_size_of_a_decimal_fraction_is_exact(pool_size, fraction, expected):
    assert minimum_zone_size(pool_size, fraction, 1) == expected
