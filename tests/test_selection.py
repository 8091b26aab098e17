"""The epoch composition (`hf_zpd.selection`) against a naive reference written from the method's rules."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_zpd.selection import (
    CompositionPolicy,
    allocate_by_share,
    anneal_samples,
    compose_epoch,
    fill_order,
    guard_flags,
    high_loss_flags,
    loss_mixture,
    update_out_of_reach,
)

# ----------------------------------------------------------------------------------------------------------------------
# The naive reference: loops over examples, following the README's "How the zone becomes an epoch"
# ----------------------------------------------------------------------------------------------------------------------


def reference_shares(total: int, sizes: list[int]) -> list[int]:
    """Largest remainder, ties to the earlier group."""
    exact = [total * s / sum(sizes) for s in sizes]
    shares = [math.floor(x) for x in exact]
    order = sorted(range(len(sizes)), key=lambda g: (-(exact[g] - shares[g]), g))
    for g in order[: total - sum(shares)]:
        shares[g] += 1
    return shares


def reference_groups(log_d, drawable, labels, balance):
    members = [i for i in range(len(log_d)) if drawable[i]]
    if not balance or labels is None:
        return [(None, members)]
    classes = sorted({int(labels[i]) for i in members})
    return [(c, [i for i in members if labels[i] == c]) for c in classes]


def reference_plan(policy, num_samples, log_d, drawable, labels=None, flags=None):
    """The zone of each group, each group's sample share, and the fill counts of the nearest-first rule.

    Returns {group label: (zone, share, fill_counts, min_size)}; zone draws are checked by their floor/ceil property,
    since which zone examples get the extra draw is a seeded random choice.
    """
    size = len(log_d)
    flags = [False] * size if flags is None else list(flags)
    groups = reference_groups(log_d, drawable, labels, policy.class_balance)
    shares = reference_shares(num_samples, [len(m) for _, m in groups])
    batch = reference_shares(policy.global_batch_size, [len(m) for _, m in groups])
    result = {}
    for (label, members), share, batch_share in zip(groups, shares, batch, strict=True):
        level = float(np.mean([log_d[i] for i in members]))
        lower, upper = level + math.log(policy.band_lower), level + math.log(policy.band_upper)

        def distance(i, lower=lower, upper=upper):
            return max(lower - log_d[i], log_d[i] - upper, 0.0)

        selectable = [i for i in members if not flags[i]]
        in_band = [i for i in selectable if lower <= log_d[i] <= upper]
        min_size = max(math.ceil(round(policy.min_zone_fraction * len(members), 9)), max(batch_share, 1), 1)
        target = min(max(min_size, len(in_band)), len(selectable))
        if len(in_band) >= target:
            zone = in_band
        else:
            zone = sorted(sorted(selectable, key=lambda i: (distance(i), i))[:target])
        fill = {}
        if policy.composition == "zone_and_fill":
            candidates = [i for i in members if i not in zone]
            num_zone = share if not candidates else min(policy.zone_repeats * len(zone), share)
            remaining = share - num_zone
            last = policy.out_of_reach_in_fill == "last"
            ranked = sorted(candidates, key=lambda i: (flags[i] and last, distance(i), i))
            while remaining > 0:
                for i in ranked[:remaining]:
                    fill[i] = fill.get(i, 0) + 1
                remaining -= min(remaining, len(ranked))
        result[label] = (zone, share, fill, min_size)
    return result


# ----------------------------------------------------------------------------------------------------------------------
# Pools to test on
# ----------------------------------------------------------------------------------------------------------------------


def pool(kind: str, size: int, seed: int = 0):
    """(log-difficulties, drawable mask, labels) of a few shapes the band meets in practice."""
    rng = np.random.default_rng(seed)
    if kind == "spread":
        log_d = rng.uniform(0.0, 3.0, size)
    elif kind == "flat":  # a near-untrained model: every example near the corpus value
        log_d = 2.0 + 1e-3 * rng.standard_normal(size)
    elif kind == "bimodal":  # the band can fall in the gap
        log_d = np.where(rng.random(size) < 0.5, 0.2, 2.5) + 0.05 * rng.standard_normal(size)
    elif kind == "ties":
        log_d = np.round(rng.uniform(0.0, 2.0, size), 1)
    else:
        raise ValueError(kind)
    drawable = rng.random(size) > 0.1
    labels = rng.integers(0, 3, size)
    return log_d, drawable, labels


KINDS = ["spread", "flat", "bimodal", "ties"]
SIZES = [1, 7, 64, 301]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("balance", [False, True], ids=["pooled", "balanced"])
@pytest.mark.parametrize("repeats", [1, 2, 3])
@pytest.mark.parametrize("fraction", [1.0, 0.6, 2.5])
def test_compose_epoch_matches_the_reference(kind, size, balance, repeats, fraction):
    log_d, drawable, labels = pool(kind, size)
    if not drawable.any():
        drawable[0] = True
    num_samples = max(1, math.ceil(fraction * size))
    policy = CompositionPolicy(zone_repeats=repeats, class_balance=balance, global_batch_size=8, min_zone_fraction=0.1)
    plan = compose_epoch(policy, num_samples, log_d, drawable, seed=3, epoch=2, labels=labels)
    expected = reference_plan(policy, num_samples, log_d, drawable, labels)

    assert plan.counts.dtype == np.int64 and plan.counts.shape == (size,)
    assert plan.counts.sum() == num_samples  # exactly N
    assert (plan.counts[~drawable] == 0).all()  # nothing outside the drawable pool
    zone = np.concatenate([np.asarray(z, dtype=np.int64) for z, _, _, _ in expected.values()])
    np.testing.assert_array_equal(plan.zone, np.sort(zone))
    for label, (group_zone, share, fill, _) in expected.items():
        members = np.flatnonzero(drawable & (labels == label if label is not None else True))
        assert plan.counts[members].sum() == share  # each class gets its share of the epoch
        candidates = [i for i in members if i not in group_zone]
        num_zone = share if not candidates else min(repeats * len(group_zone), share)
        if group_zone:
            low, high = num_zone // len(group_zone), math.ceil(num_zone / len(group_zone))
            zone_counts = plan.counts[group_zone]
            assert zone_counts.sum() == num_zone
            assert ((zone_counts >= low) & (zone_counts <= high)).all()  # as evenly as the epoch allows
            if num_zone <= repeats * len(group_zone):
                assert zone_counts.max() <= repeats  # at most k each
        for i in candidates:  # the fill, nearest to the band first, each once before any twice
            assert plan.counts[i] == fill.get(i, 0)


def test_zone_only_is_the_seed_rule():
    """The literal rule: every sample from the zone, as evenly as possible; no fill, no balance, no guard."""
    log_d, drawable, labels = pool("spread", 64)
    policy = CompositionPolicy(composition="zone_only", min_zone_fraction=0.1, global_batch_size=4)
    flags = np.zeros(64, dtype=bool)
    flags[:20] = True
    plan = compose_epoch(policy, 64, log_d, drawable, seed=0, epoch=2, labels=labels, out_of_reach=flags)
    expected = reference_plan(CompositionPolicy(**{**policy.__dict__, "class_balance": False}), 64, log_d, drawable)
    zone = expected[None][0]
    np.testing.assert_array_equal(plan.zone, zone)  # the guard's flags are ignored
    assert plan.counts.sum() == 64 and set(np.flatnonzero(plan.counts)) == set(zone)
    assert plan.counts[zone].max() - plan.counts[zone].min() <= 1


def test_out_of_reach_examples_never_enter_the_zone_and_come_last():
    log_d = np.array([0.1, 0.5, 1.0, 1.05, 1.1, 1.2, 2.0, 3.0])
    drawable = np.ones(8, dtype=bool)
    flags = np.zeros(8, dtype=bool)
    flags[[3, 4]] = True  # in or next to the band
    policy = CompositionPolicy(zone_repeats=1, class_balance=False, min_zone_fraction=0.25, global_batch_size=1)
    plan = compose_epoch(policy, 6, log_d, drawable, seed=0, epoch=2, out_of_reach=flags)
    assert not set(plan.zone.tolist()) & {3, 4}
    assert plan.counts[[3, 4]].sum() == 0  # skipped before any nearer example
    np.testing.assert_array_equal(plan.out_of_reach, [3, 4])


@pytest.mark.parametrize("rule", ["nearest", "weighted", "uniform"])
def test_fill_order_puts_out_of_reach_last(rule):
    rng = np.random.default_rng(0)
    distance = rng.uniform(0, 2, 50)
    flags = rng.random(50) < 0.3
    order = fill_order(distance, flags, rule, 0.25, np.random.default_rng(1))
    assert sorted(order.tolist()) == list(range(50))
    ranked_flags = flags[order]
    assert not ranked_flags[: (~flags).sum()].any()
    np.testing.assert_array_equal(order[(~flags).sum() :], np.flatnonzero(flags)[np.argsort(distance[flags])])
    if rule == "nearest":
        np.testing.assert_array_equal(order[: (~flags).sum()], np.flatnonzero(~flags)[np.argsort(distance[~flags])])


def test_weighted_fill_prefers_the_band_and_cools_to_nearest():
    """Gumbel top-k is a sample without replacement with weights exp(-d / T): near examples first more often; as T
    falls it becomes the nearest-first order."""
    distance = np.linspace(0, 3, 30)
    flags = np.zeros(30, dtype=bool)
    firsts = [fill_order(distance, flags, "weighted", 0.5, np.random.default_rng(s))[0] for s in range(400)]
    counts = np.bincount(firsts, minlength=30)
    weights = np.exp(-distance / 0.5)
    np.testing.assert_allclose(counts / 400, weights / weights.sum(), atol=0.06)
    cold = fill_order(distance, flags, "weighted", 1e-6, np.random.default_rng(0))
    np.testing.assert_array_equal(cold, np.arange(30))


def test_class_shares_follow_the_pool_even_when_the_band_favours_one_class():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [200, 100, 50])
    log_d = np.where(labels == 0, 2.0, 0.2) + 0.1 * rng.standard_normal(350)  # class 0 far harder
    drawable = np.ones(350, dtype=bool)
    balanced = CompositionPolicy(class_balance=True, zone_repeats=3)
    plan = compose_epoch(balanced, 350, log_d, drawable, seed=0, epoch=2, labels=labels)
    np.testing.assert_array_equal(np.bincount(labels, weights=plan.counts).astype(int), [200, 100, 50])
    assert set(np.unique(labels[plan.zone])) == {0, 1, 2}  # every class has a zone of its own
    pooled = compose_epoch(CompositionPolicy(class_balance=False, zone_repeats=3), 350, log_d, drawable, 0, 2, labels)
    assert set(np.unique(labels[pooled.zone])) == {0}  # without balance the pooled band takes one class only


@given(
    size=st.integers(1, 120),
    fraction=st.floats(0.05, 3.0),
    repeats=st.integers(1, 4),
    anneal=st.floats(0.0, 1.0),
    replay=st.floats(0.0, 0.9),
    seed=st.integers(0, 2**16),
    epoch=st.integers(1, 50),
    balance=st.booleans(),
    fill=st.sampled_from(["nearest", "weighted", "uniform"]),
)
@settings(max_examples=150, deadline=None)
def test_counts_sum_to_n_and_stay_in_the_training_set(
    size, fraction, repeats, anneal, replay, seed, epoch, balance, fill
):
    rng = np.random.default_rng(seed)
    log_d = rng.uniform(0, 3, size)
    drawable = rng.random(size) > 0.2
    drawable[rng.integers(size)] = True
    flags = rng.random(size) < 0.2
    labels = rng.integers(0, 3, size)
    num_samples = max(1, math.ceil(fraction * size))
    num_anneal = int(anneal * num_samples)
    policy = CompositionPolicy(zone_repeats=repeats, class_balance=balance, fill=fill, replay_fraction=replay)
    plan = compose_epoch(policy, num_samples, log_d, drawable, seed, epoch, labels, flags, num_anneal)
    assert plan.counts.sum() == num_samples
    assert (plan.counts >= plan.anneal_counts).all() and plan.anneal_counts.sum() == num_anneal
    composed = plan.counts - plan.anneal_counts
    # Replay and anneal draw from the whole set; the zone and the fill only from the drawable pool.
    num_replay = round(replay * (num_samples - num_anneal))
    assert composed[~drawable].sum() <= num_replay
    assert not set(plan.zone.tolist()) & set(np.flatnonzero(flags).tolist())
    # Pure: the same inputs give the same draw; another epoch or seed another one (when there is a choice to make).
    again = compose_epoch(policy, num_samples, log_d.copy(), drawable.copy(), seed, epoch, labels, flags, num_anneal)
    np.testing.assert_array_equal(plan.counts, again.counts)
    np.testing.assert_array_equal(plan.anneal_counts, again.anneal_counts)


def test_another_seed_or_epoch_draws_differently():
    log_d, drawable, labels = pool("spread", 200)
    policy = CompositionPolicy(fill="weighted", replay_fraction=0.2)
    base = compose_epoch(policy, 200, log_d, drawable, seed=0, epoch=2, labels=labels, num_anneal=20)
    assert not np.array_equal(base.counts, compose_epoch(policy, 200, log_d, drawable, 1, 2, labels, None, 20).counts)
    assert not np.array_equal(base.counts, compose_epoch(policy, 200, log_d, drawable, 0, 3, labels, None, 20).counts)


def test_one_repeat_with_an_epoch_as_large_as_the_pool_is_uniform():
    """The method's identity: N = pool and k = 1 draws every example once."""
    log_d, _, labels = pool("bimodal", 90)
    drawable = np.ones(90, dtype=bool)
    for balance in (False, True):
        plan = compose_epoch(
            CompositionPolicy(zone_repeats=1, class_balance=balance), 90, log_d, drawable, 0, 2, labels
        )
        np.testing.assert_array_equal(plan.counts, np.ones(90, dtype=np.int64))


@pytest.mark.parametrize(
    ("total", "sizes", "expected"),
    [
        (10, [1, 1, 1], [4, 3, 3]),
        (7, [5, 0, 5], [4, 0, 3]),
        (0, [3, 4], [0, 0]),
        (5, [2], [5]),
        (3, [1, 1, 1, 1], [1, 1, 1, 0]),
    ],
)
def test_allocate_by_share(total, sizes, expected):
    assert allocate_by_share(total, np.array(sizes)).tolist() == expected
    assert reference_shares(total, sizes) == expected if sum(sizes) else True


@pytest.mark.parametrize(
    ("epoch", "expected"), [(1, 0), (2, 0), (3, 24), (4, 40)], ids=["first", "before", "straddles", "inside"]
)
def test_anneal_samples_take_the_last_share_of_training(epoch, expected):
    # 4 epochs of 40 = 160 samples; the last 40% (64 samples) start at sample 96, in epoch 3 (samples 80-119).
    assert anneal_samples(epoch, 40, 160, 0.4) == expected
    assert sum(anneal_samples(e, 40, 160, 0.4) for e in range(1, 5)) == 64
    assert anneal_samples(epoch, 40, 160, 0.0) == 0


def test_guard_flags_examples_trained_on_but_not_learned():
    loss_before = np.array([1.0, 1.0, 1.0, 1.0, 0.1, 1.0, np.nan])
    loss_after = np.array([1.2, 0.5, 1.0, 2.0, 0.2, 3.0, 1.0])
    drawn = np.array([True, True, True, False, True, True, True])
    above_level = np.array([True, True, True, True, False, True, True])
    flags = update_out_of_reach(np.zeros(7, bool), loss_before, loss_after, drawn, above_level)
    # 0: rose, drawn, above: flagged. 1: fell. 2: did not fall (equal): flagged. 3: not drawn, no evidence.
    # 4: rose but below the level (mastered). 5: flagged. 6: no earlier loss.
    assert flags.tolist() == [True, False, True, False, False, True, False]
    # A flag stays until the example is drawn again; then the new evidence decides.
    again = update_out_of_reach(
        flags, loss_after, loss_after - 0.1, np.array([False, False, True] + [False] * 4), above_level
    )
    assert again.tolist() == [True, False, False, False, False, True, False]


def test_guard_flags_use_each_class_level():
    labels = np.array([0, 0, 0, 1, 1, 1])
    log_d = np.array([0.1, 0.25, 0.3, 2.0, 2.15, 2.2])  # class 1 is harder everywhere
    losses = np.ones(6)
    flags = guard_flags(np.zeros(6, bool), losses, losses, np.ones(6, bool), log_d, np.ones(6, bool), labels)
    assert flags.tolist() == [False, True, True, False, True, True]  # above each class's own mean
    pooled = guard_flags(np.zeros(6, bool), losses, losses, np.ones(6, bool), log_d, np.ones(6, bool), None)
    assert pooled.tolist() == [False, False, False, True, True, True]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"composition": "cycle"}, "composition"),
        ({"fill": "farthest"}, "fill"),
        ({"zone_repeats": 0}, "zone_repeats"),
        ({"fill_temperature": 0.0}, "fill_temperature"),
    ],
)
def test_policy_is_validated(overrides, message):
    with pytest.raises(ValueError, match=message):
        CompositionPolicy(**overrides)


# ----------------------------------------------------------------------------------------------------------------------
# Out of reach by the learner's own loss: the 2-component loss mixture, against a naive reference
# ----------------------------------------------------------------------------------------------------------------------


def reference_mixture(values, iterations=100):
    """The EM of `loss_mixture`, written per example with Python floats: posterior of the high component and D."""
    low, high = min(values), max(values)
    x = [(v - low) / (high - low) for v in values]
    ordered = sorted(x)
    mean = sum(x) / len(x)
    variance = max(sum((v - mean) ** 2 for v in x) / len(x), 5e-4)
    means = [float(np.quantile(ordered, 0.1)), float(np.quantile(ordered, 0.9))]
    variances, weights = [variance, variance], [0.5, 0.5]

    def posteriors():
        rows = []
        for v in x:
            densities = [
                weights[c]
                * math.exp(-0.5 * (v - means[c]) ** 2 / variances[c])
                / math.sqrt(2 * math.pi * variances[c])
                for c in (0, 1)
            ]
            total = sum(densities)
            rows.append([d / total for d in densities])
        return rows

    for _ in range(iterations):
        rows = posteriors()
        mass = [sum(r[c] for r in rows) + 1e-12 for c in (0, 1)]
        new_means = [sum(r[c] * v for r, v in zip(rows, x, strict=True)) / mass[c] for c in (0, 1)]
        variances = [
            max(sum(r[c] * (v - new_means[c]) ** 2 for r, v in zip(rows, x, strict=True)) / mass[c], 5e-4)
            for c in (0, 1)
        ]
        weights = [m / sum(mass) for m in mass]
        done = max(abs(a - b) for a, b in zip(new_means, means, strict=True)) < 1e-8
        means = new_means
        if done:
            break
    high_component = int(means[1] > means[0])
    separation = abs(means[1] - means[0]) * math.sqrt(2 / sum(variances))
    return [r[high_component] for r in posteriors()], separation


def loss_shapes(kind, size, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "two_modes":  # 40% flipped labels after training: a low mode and a separate high one
        flipped = rng.random(size) < 0.4
        return np.where(flipped, rng.normal(2.0, 0.4, size).clip(0.05), rng.gamma(1.0, 0.15, size)), flipped
    if kind == "skewed":  # clean data: one skewed mode
        return rng.gamma(2.0, 0.3, size), np.zeros(size, dtype=bool)
    if kind == "lognormal":
        return rng.lognormal(0.0, 1.0, size), np.zeros(size, dtype=bool)
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["two_modes", "skewed", "lognormal"])
@pytest.mark.parametrize("size", [9, 64, 301])
def test_loss_mixture_matches_the_reference(kind, size):
    loss, _ = loss_shapes(kind, size)
    posterior, separation = loss_mixture(loss)
    expected, expected_separation = reference_mixture(loss.tolist())
    np.testing.assert_allclose(posterior, expected, rtol=1e-6, atol=1e-9)
    assert separation == pytest.approx(expected_separation, rel=1e-6)


def test_loss_mixture_of_constant_values_puts_nothing_high():
    posterior, separation = loss_mixture(np.full(10, 0.7))
    assert posterior.tolist() == [0.0] * 10 and separation == 0.0


def reference_high_loss_flags(loss, drawable, labels, max_fraction, min_group_size=8):
    """Per group: nothing unless the mixture's modes are separate (D >= 2); else as many as it puts high, highest
    loss first (ties to the lower index), at most floor(max_fraction * group)."""
    flags = [False] * len(loss)
    groups = {}
    for i in range(len(loss)):
        if drawable[i] and math.isfinite(loss[i]):
            groups.setdefault(None if labels is None else int(labels[i]), []).append(i)
    capped = 0
    for members in groups.values():
        if len(members) < min_group_size:
            continue
        posterior, separation = reference_mixture([loss[i] for i in members])
        count = sum(p > 0.5 for p in posterior)
        if separation < 2.0 or count == 0:
            continue
        limit = math.floor(max_fraction * len(members) + 1e-9)
        capped += max(count - limit, 0)
        for i in sorted(members, key=lambda i: (-loss[i], i))[: min(count, limit)]:
            flags[i] = True
    return flags, capped


@pytest.mark.parametrize("kind", ["two_modes", "skewed", "lognormal"])
@pytest.mark.parametrize("size", [7, 64, 301])
@pytest.mark.parametrize("by_class", [False, True])
@pytest.mark.parametrize("max_fraction", [0.1, 0.5, 0.9])
def test_high_loss_flags_match_the_reference(kind, size, by_class, max_fraction):
    loss, _ = loss_shapes(kind, size)
    rng = np.random.default_rng(1)
    loss[rng.random(size) < 0.05] = np.nan  # unscored examples
    drawable = rng.random(size) > 0.1
    labels = rng.integers(0, 3, size) if by_class else None
    flags, capped = high_loss_flags(loss, drawable, labels, max_fraction)
    expected, expected_capped = reference_high_loss_flags(loss.tolist(), drawable.tolist(), labels, max_fraction)
    assert flags.tolist() == expected and capped == expected_capped


def test_high_loss_flags_find_flipped_labels_and_leave_clean_data_alone():
    loss, flipped = loss_shapes("two_modes", 2000)
    flags, capped = high_loss_flags(loss, np.ones(2000, bool), max_fraction=0.5)
    precision, recall = (flags & flipped).sum() / flags.sum(), (flags & flipped).sum() / flipped.sum()
    assert precision > 0.9 and recall > 0.9 and capped == 0
    for kind in ("skewed", "lognormal"):  # one mode, however skewed: nothing is out of reach
        clean, _ = loss_shapes(kind, 2000)
        assert not high_loss_flags(clean, np.ones(2000, bool))[0].any()
    tight, capped = high_loss_flags(loss, np.ones(2000, bool), max_fraction=0.1)
    assert tight.sum() == 200 and capped == flags.sum() - 200
    assert loss[tight].min() >= loss[flags & ~tight].max()  # the bound keeps the highest losses


# ----------------------------------------------------------------------------------------------------------------------
# Flags that exclude, and the easy-first composition
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("composition", ["zone_and_fill", "easy_first"])
@pytest.mark.parametrize("fraction", [0.6, 1.0, 2.5])
def test_excluded_examples_are_drawn_by_no_part_of_the_epoch(composition, fraction):
    log_d, drawable, labels = pool("spread", 120)
    flags = np.random.default_rng(3).random(120) < 0.3
    policy = CompositionPolicy(composition=composition, replay_fraction=0.2, exclude_out_of_reach=True,
                               easy_fraction=0.5)  # fmt: skip
    num_samples = math.ceil(fraction * 120)
    plan = compose_epoch(policy, num_samples, log_d, drawable, 0, 2, labels, flags, num_anneal=num_samples // 5)
    assert plan.counts.sum() == num_samples and (plan.counts[flags] == 0).all()
    assert (plan.anneal_counts[flags] == 0).all() and not np.isin(plan.zone, np.flatnonzero(flags)).any()
    assert plan.metrics["zpd/num_out_of_reach"] == (flags & drawable).sum()
    with pytest.raises(ValueError, match="Every drawable example is out of reach"):
        compose_epoch(policy, 10, log_d, drawable, 0, 2, labels, np.ones(120, bool))


@pytest.mark.parametrize("place", ["last", "anywhere"])
@pytest.mark.parametrize("kind", KINDS)
def test_out_of_reach_in_fill_matches_the_reference(place, kind):
    log_d, drawable, labels = pool(kind, 60, seed=7)
    flags = np.zeros(60, bool)
    flags[np.flatnonzero(drawable)[::4]] = True
    policy = CompositionPolicy(zone_repeats=2, out_of_reach_in_fill=place, min_zone_fraction=0.1)
    plan = compose_epoch(policy, 50, log_d, drawable, 0, 2, labels, flags)
    for label, (zone, _, fill, _) in reference_plan(policy, 50, log_d, drawable, labels, flags).items():
        np.testing.assert_array_equal(np.intersect1d(plan.zone, np.flatnonzero(labels == label)), zone)
        for i, count in fill.items():
            assert plan.counts[i] == count
    assert not np.isin(plan.zone, np.flatnonzero(flags)).any()  # in both places: never in the zone


def test_out_of_reach_anywhere_in_the_fill_is_drawn_by_distance_alone():
    log_d = np.array([0.1, 0.5, 1.0, 1.05, 1.1, 1.2, 2.0, 3.0])
    flags = np.zeros(8, dtype=bool)
    flags[[3, 4]] = True  # next to the band: near, so drawn before the far examples once the order ignores the flags
    policy = CompositionPolicy(
        zone_repeats=1, class_balance=False, min_zone_fraction=0.25, out_of_reach_in_fill="anywhere"
    )
    plan = compose_epoch(policy, 6, log_d, np.ones(8, bool), seed=0, epoch=2, out_of_reach=flags)
    assert not set(plan.zone.tolist()) & {3, 4}
    assert (plan.counts[[3, 4]] == 1).all()
    with pytest.raises(ValueError, match="out_of_reach_in_fill must be one of"):
        CompositionPolicy(out_of_reach_in_fill="first")


def test_the_guards_flags_only_come_last_in_the_fill():
    log_d, drawable, labels = pool("spread", 60)
    flags = np.zeros(60, bool)
    flags[np.flatnonzero(drawable)[:5]] = True
    plan = compose_epoch(CompositionPolicy(zone_repeats=1), 120, log_d, drawable, 0, 2, labels, flags)
    assert (plan.counts[flags] > 0).all()  # an epoch of two passes reaches them


@pytest.mark.parametrize("share", [0.3, 0.5, 1.0])
def test_easy_first_cycles_through_the_easiest_share_of_each_class(share):
    log_d, drawable, labels = pool("spread", 90, seed=4)
    policy = CompositionPolicy(composition="easy_first", easy_fraction=share, min_zone_fraction=0.01)
    plan = compose_epoch(policy, 90, log_d, drawable, 0, 2, labels)
    for label in np.unique(labels[drawable]):
        members = np.flatnonzero(drawable & (labels == label))
        easiest = members[np.argsort(log_d[members], kind="stable")[: math.ceil(round(share * members.size, 9))]]
        np.testing.assert_array_equal(np.intersect1d(plan.zone, members), np.sort(easiest))
        drawn = members[plan.counts[members] > 0]
        assert set(drawn) == set(easiest)  # nothing outside the easy share
        assert plan.counts[easiest].max() - plan.counts[easiest].min() <= 1  # cycled evenly
        assert (
            plan.counts[members].sum()
            == allocate_by_share(90, [(drawable & (labels == c)).sum() for c in np.unique(labels[drawable])])[label]
        )


# ----------------------------------------------------------------------------------------------------------------------
# InfoBatch's unbiased pruning of the mastered region
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("balance", [False, True])
@pytest.mark.parametrize("prune", [0, 5, 30, 90])
def test_pruning_leaves_out_mastered_draws_and_reweighs_the_rest(balance, prune):
    log_d, drawable, labels = pool("spread", 120, seed=5)
    policy = CompositionPolicy(zone_repeats=2, class_balance=balance)
    num_samples = 120 - prune
    plan = compose_epoch(policy, num_samples, log_d, drawable, 0, 3, labels, prune_draws=prune)
    unpruned = compose_epoch(policy, num_samples + prune, log_d, drawable, 0, 3, labels)
    assert plan.counts.sum() == num_samples and (plan.counts <= unpruned.counts).all()
    # The mastered region, written out: below the level of its group, and not in the zone.
    mastered = np.zeros(120, dtype=bool)
    for group in unpruned.groups:
        mastered[group.members[log_d[group.members] < group.log_level]] = True
    mastered[unpruned.zone] = False
    mastered_draws = unpruned.counts[mastered].sum()
    from_mastered = min(prune, mastered_draws)
    assert (unpruned.counts - plan.counts)[mastered].sum() == from_mastered
    if prune == 0:
        assert plan.loss_weights is None and "zpd/num_pruned" not in plan.metrics
        return
    assert plan.metrics["zpd/prune_overflow"] == prune - from_mastered
    kept = mastered & (plan.counts > 0)
    if kept.any():
        np.testing.assert_allclose(plan.loss_weights[kept], mastered_draws / (mastered_draws - from_mastered))
    assert (plan.loss_weights[~kept] == 1).all()
    if prune > mastered_draws:  # the rest came off the farthest non-mastered draws
        distance = np.full(120, np.nan)
        for group in unpruned.groups:
            distance[group.members] = group.distance
        cut = (unpruned.counts - plan.counts > 0) & ~mastered
        untouched = (plan.counts > 0) & ~mastered & ~cut
        assert cut.any() and distance[cut].min() >= distance[untouched].max()


def test_pruning_is_unbiased_in_expectation():
    """Over many epochs (seeds), each mastered example's expected weighted draws equal its unpruned draws."""
    log_d, drawable, labels = pool("spread", 60, seed=6)
    policy = CompositionPolicy(zone_repeats=1, class_balance=False)
    unpruned = compose_epoch(policy, 60, log_d, drawable, 0, 2)
    total = np.zeros(60)
    for epoch in range(2, 2002):
        plan = compose_epoch(policy, 45, log_d, drawable, 0, epoch, prune_draws=15)
        total += plan.counts * plan.loss_weights
    np.testing.assert_allclose(total / 2000, unpruned.counts, atol=0.08)


def test_epochs_with_annealing_draws_are_not_pruned():
    log_d, drawable, labels = pool("spread", 60)
    plan = compose_epoch(CompositionPolicy(), 50, log_d, drawable, 0, 3, labels, num_anneal=10, prune_draws=10)
    assert plan.loss_weights is None and plan.counts.sum() == 50 and "zpd/num_pruned" not in plan.metrics
