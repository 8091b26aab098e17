"""`PromptCurriculum` driven without a trainer: the plans, the lag, the rewards it learns from, and its state."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hf_zpd.grpo_curriculum import FEATURE_NAMES, PromptCurriculum, RoundSchedule
from hf_zpd.pass_rate import mixed_probability

N, B, G = 40, 4, 4


def curriculum(**options) -> PromptCurriculum:
    options = {"zone_signal": "pass_rate", "schedule": 1, **options}
    return PromptCurriculum(N, B, G, seed=3, **options)


def run(curriculum: PromptCurriculum, pass_rates: np.ndarray, rounds: int, seed: int = 0):
    """Plans and observes `rounds` rounds in the pipeline's order: round k + lag is drawn before round k is scored."""
    rng = np.random.default_rng(seed)
    for round in range(rounds + curriculum.lag + 1):
        curriculum.plan(round)
        scored = round - curriculum.lag
        if 0 <= scored < rounds:
            prompts = curriculum.plans[scored].prompts
            rewards = (rng.random((prompts.size, G)) < pass_rates[prompts][:, None]).astype(float)
            curriculum.observe(prompts, rewards, np.full(prompts.size, 3.0 * G), step=scored)


@pytest.mark.parametrize(
    "accumulation,repeat,workers,ahead",
    [(1, 1, 0, [1]), (2, 2, 0, [1]), (1, 2, 0, [0]), (2, 1, 0, [1, 2]), (4, 2, 0, [1, 2]), (1, 1, 2, [3])],
)
def test_the_schedule_draws_as_many_rounds_ahead_as_measured(accumulation, repeat, workers, ahead):
    """Measured with TRL 1.16 on 1 process (GA, steps_per_generation x num_iterations, prefetch_factor x workers):
    how many rounds are drawn past the last scored one, in the steady state of an epoch."""
    schedule = RoundSchedule(100, repeat, accumulation, workers)
    lags = {schedule.lag(round) for round in range(20, 60)}
    assert sorted(lags) == ahead
    assert schedule.cutoff(0) == -1 and schedule.cutoff(100) == 99, "an epoch's first round sees every earlier one"


def test_a_plan_uses_the_rounds_up_to_its_cutoff():
    pass_rates = np.linspace(0.0, 1.0, N)
    pipeline = curriculum(schedule=1)
    run(pipeline, pass_rates, 20)
    for round in sorted(pipeline.plans):
        assert pipeline.plans[round].cutoff == round - 2  # round k is drawn while round k - 1 is being scored


def test_plans_are_a_pure_function_of_the_observed_rounds():
    pass_rates = np.linspace(0.0, 1.0, N)
    first, second = curriculum(), curriculum()
    run(first, pass_rates, 15, seed=4)
    run(second, pass_rates, 15, seed=4)
    for round in first.plans:
        np.testing.assert_array_equal(first.plans[round].prompts, second.plans[round].prompts)
        np.testing.assert_array_equal(first.plans[round].scores, second.plans[round].scores)


def test_an_observation_past_the_cutoff_does_not_change_a_plan():
    """With lag 1, round 5 is planned from rounds up to 3: round 4's groups arriving first change nothing."""
    pass_rates = np.linspace(0.0, 1.0, N)
    base = curriculum()
    run(base, pass_rates, 5, seed=1)  # plans rounds 0..6, observes 0..4
    eager = curriculum()
    rng = np.random.default_rng(1)
    for round in range(7):
        eager.plan(round)
        scored = round - 1
        if 0 <= scored < 5:
            prompts = eager.plans[scored].prompts
            rewards = (rng.random((prompts.size, G)) < pass_rates[prompts][:, None]).astype(float)
            eager.observe(prompts, rewards, np.zeros(prompts.size), step=scored)
    np.testing.assert_array_equal(base.plans[6].prompts, eager.plans[6].prompts)


def test_a_round_whose_groups_never_came_is_a_clear_error():
    pipeline = curriculum(schedule=0)
    pipeline.plan(0)
    with pytest.raises(RuntimeError, match="draws further ahead"):
        pipeline.plan(1)  # round 0 was drawn but never scored


def test_the_zone_draws_the_prompts_that_are_solved_sometimes():
    """Prompts solved never, always, or half the time: once seen, the half-solved ones are drawn far more often."""
    pass_rates = np.array([0.0] * 16 + [1.0] * 16 + [0.5] * 8)
    zone = curriculum(half_life=math.inf)
    run(zone, pass_rates, 80, seed=2)
    late = np.concatenate([zone.plans[r].prompts for r in range(40, 80)])
    share_mixed = np.isin(late, np.arange(32, 40)).mean()
    assert share_mixed > 0.5, f"the half-solved prompts are 20% of the pool but got {share_mixed:.0%} of late draws"
    assert np.isin(late, np.arange(0, 32)).any(), "the floor keeps revisiting mastered and out-of-reach prompts"
    uniform = curriculum(selection="uniform")
    run(uniform, pass_rates, 80, seed=2)
    uniform_late = np.concatenate([uniform.plans[r].prompts for r in range(40, 80)])
    assert np.isin(uniform_late, np.arange(32, 40)).mean() < 0.35


def test_the_random_control_draws_with_the_zones_weights_on_random_prompts():
    pass_rates = np.array([0.0] * 16 + [1.0] * 16 + [0.5] * 8)
    control = curriculum(selection="random")
    run(control, pass_rates, 80, seed=2)
    late = np.concatenate([control.plans[r].prompts for r in range(40, 80)])
    assert np.isin(late, np.arange(32, 40)).mean() < 0.35


def test_non_binary_rewards_follow_the_groups_variance_not_their_mean():
    """Even prompts always give 0.5 to every completion (never mixed, though their mean is in the middle), odd ones
    spread: the zone keeps the odd ones."""
    zone = curriculum(half_life=math.inf)
    for round in range(40):
        zone.plan(round)
        scored = round - 1
        if scored < 0:
            continue
        prompts = zone.plans[scored].prompts
        rewards = np.where((prompts % 2 == 1)[:, None], np.array([0.0, 0.25, 0.75, 1.0]), 0.5)
        zone.observe(prompts, rewards, np.zeros(prompts.size), step=scored)
    zone.plan(40)
    assert not zone.beliefs.binary()
    history = zone.beliefs.history_mixed_probability(40)
    seen = zone.beliefs.visits > 0
    even, odd = seen & (np.arange(N) % 2 == 0), seen & (np.arange(N) % 2 == 1)
    assert even.any() and odd.any()
    assert history[odd].min() > 0.6 > history[even].max()
    late = np.concatenate([zone.plans[r].prompts for r in range(20, 41)])
    assert (late % 2 == 1).mean() > 0.6  # unseen even prompts still get the shared prediction


def test_importance_weights_average_one_and_favour_rarely_drawn_prompts():
    """w_i = (B / N) / pi_i, self-normalised: the less likely a prompt was to be drawn, the more its loss weighs."""
    pass_rates = np.array([0.0] * 16 + [1.0] * 16 + [0.5] * 8)
    weighted = curriculum(importance_weighting=True, half_life=math.inf)
    run(weighted, pass_rates, 40, seed=5)
    for round in range(20, 40):
        plan = weighted.plans[round]
        assert plan.weights.mean() == pytest.approx(1.0)
        drawn_with = np.maximum(plan.scores, weighted.zone_floor)
        order = np.argsort(drawn_with, kind="stable")
        assert (np.diff(plan.weights[order]) <= 1e-12).all(), "weights fall as the drawing weight rises"
    unweighted = curriculum(half_life=math.inf)
    run(unweighted, pass_rates, 10, seed=5)
    assert all((plan.weights == 1.0).all() for plan in unweighted.plans.values())


def test_the_state_round_trips_bitwise_and_the_run_goes_on_the_same():
    pass_rates = np.linspace(0.0, 1.0, N)
    whole = curriculum(zone_signal="pass_rate")
    run(whole, pass_rates, 30, seed=6)
    stopped = curriculum(zone_signal="pass_rate")
    run(stopped, pass_rates, 12, seed=6)
    arrays, meta = stopped.state_arrays()
    resumed = curriculum(zone_signal="pass_rate")
    resumed.load_state_arrays({k: v.copy() for k, v in arrays.items()}, meta)
    for round in stopped.plans:
        np.testing.assert_array_equal(resumed.plans[round].prompts, stopped.plans[round].prompts)
    # Continue both with the same rewards: every later plan is the same.
    for source in (stopped, resumed):
        rng = np.random.default_rng(99)
        for round in range(14, 32):
            scored = round - 2  # with lag 1, round k is drawn once round k - 2 is scored
            prompts = source.plans[scored].prompts
            rewards = (rng.random((prompts.size, G)) < pass_rates[prompts][:, None]).astype(float)
            source.observe(prompts, rewards, np.zeros(prompts.size), step=scored)
            source.plan(round)
    for round in range(14, 32):
        np.testing.assert_array_equal(stopped.plans[round].prompts, resumed.plans[round].prompts)


def test_a_round_observed_again_is_ignored_and_a_stranger_is_refused():
    pass_rates = np.linspace(0.0, 1.0, N)
    repeat = curriculum()
    run(repeat, pass_rates, 3)
    last = max(repeat.outcomes)
    again = repeat.observe(repeat.plans[last].prompts, np.zeros((B, G)), np.zeros(B), step=9)
    assert again is None and repeat.outcomes[last].step == last
    with pytest.raises(RuntimeError, match="not those the curriculum drew"):
        repeat.observe(np.array([39, 38, 37, 36]) if not np.array_equal(repeat.plans[last + 1].prompts,
                       [39, 38, 37, 36]) else np.array([0, 1, 2, 3]), np.zeros((B, G)), np.zeros(B), step=9)  # fmt: skip


def test_composite_needs_features_and_uses_them():
    calls = []

    def features(indices):
        calls.append(np.asarray(indices).copy())
        return np.column_stack([np.linspace(0, 1, len(indices)), np.zeros(len(indices)), 3.0 + np.asarray(indices)])

    composite = curriculum(zone_signal="composite", features=features, candidates_per_round=3)
    run(composite, np.linspace(0.0, 1.0, N), 5)
    assert calls and all(c.size == 3 * B for c in calls)
    plan = composite.plans[4]
    assert np.isfinite(plan.feature_prediction).all() and plan.features.shape == (B, len(FEATURE_NAMES))
    with pytest.raises(ValueError, match="features function"):
        curriculum(zone_signal="composite").plan(0)


def test_strided_observations_survive_a_checkpoint_file():
    """The trainer observes a column of a torch tensor (a strided view): the state file must hold the values."""
    from safetensors.numpy import load as load_safetensors
    from safetensors.numpy import save as save_safetensors

    stored = curriculum()
    plan = stored.plan(0)
    grid = np.repeat(plan.prompts, G).reshape(-1, G)  # each row one group's prompt, as the trainer gathers them
    stored.observe(grid[:, 0], np.ones((B, G)), np.zeros(B), step=0)
    arrays, meta = stored.state_arrays()
    restored = curriculum()
    restored.load_state_arrays(load_safetensors(save_safetensors(arrays)), meta)
    np.testing.assert_array_equal(restored.outcomes[0].prompts, plan.prompts)


def naive_history_features(curriculum: PromptCurriculum, now: int, prompt: int) -> list[float]:
    """A prompt's history as the composite reads it, from the observed rounds up to the last one applied, one group at
    a time: (P_hist(mixed), logit of the pass-rate belief, log(1 + decayed groups), log(1 + rounds since seen))."""
    half_life, s, n, groups, last = curriculum.half_life, 0.0, 0.0, 0.0, None
    for round in range(curriculum.applied + 1):
        outcome = curriculum.outcomes.get(round)
        if outcome is None:
            continue
        for index, rewards in zip(outcome.prompts, outcome.rewards, strict=True):
            if index == prompt:
                decay = 0.5 ** ((now - round) / half_life)
                s, n, groups, last = s + decay * rewards.sum(), n + decay * rewards.size, groups + decay, round
    if last is None:
        return [0.0, 0.0, 0.0, 0.0]
    rate = min(max((0.5 + s) / (1.0 + n), 1e-3), 1.0 - 1e-3)
    history = float(mixed_probability(np.array([0.5 + s]), np.array([0.5 + n - s]), G)[0])
    return [history, math.log(rate / (1.0 - rate)), math.log1p(groups), math.log1p(now - last)]


@pytest.mark.parametrize("half_life", [3.0, math.inf])
@pytest.mark.parametrize("rounds", [0, 1, 12])
def test_the_composites_regressors_match_a_naive_reference(half_life, rounds):
    zone = curriculum(half_life=half_life)
    run(zone, np.linspace(0.0, 1.0, N), rounds, seed=5)
    zone._apply_up_to(rounds - 1)
    now = max(rounds + 1, zone.beliefs.round)
    prompts = np.arange(N)  # drawn and never drawn alike
    policy = np.column_stack([np.linspace(0.1, 0.9, N), np.linspace(0.9, 0.1, N), 1.0 + (np.arange(N) % 7)])
    features = zone.composite_features(now, prompts, policy)
    assert features.shape == (N, len(FEATURE_NAMES))
    for i in prompts:
        log_tokens = math.log(policy[i, 2])
        expected = [policy[i, 0], policy[i, 1], log_tokens, log_tokens**2] + naive_history_features(zone, now, i)
        np.testing.assert_allclose(features[i], expected, rtol=1e-9, atol=1e-12, err_msg=f"prompt {i}")
    if rounds:
        assert (features[:, 6] > 0).any() and (features[:, 6] == 0).any(), "some prompts drawn, some not"


def test_the_composite_refuses_features_of_the_wrong_shape():
    zone = curriculum(zone_signal="composite", features=lambda indices: np.zeros((len(indices), 2)))
    with pytest.raises(ValueError, match="confidence, entropy, prompt_tokens"):
        zone.plan(0)


def test_the_composite_learns_which_lengths_are_in_the_zone():
    """Only the middle lengths are half-solved (the shorter always, the longer never), in a pool of 400 prompts seen
    about once each: the length's log and squared log let the regression find the band at a first visit, where a
    linear term alone could not (the chance of a mixed group rises, then falls, with difficulty)."""
    num_prompts, size = 400, 8
    lengths = 4.0 + np.arange(num_prompts) % 40
    band = (lengths >= 18) & (lengths < 30)
    pass_rates = np.where(lengths < 18, 1.0, np.where(band, 0.5, 0.0))

    def features(indices):
        return np.column_stack([np.full(len(indices), 0.5), np.full(len(indices), 0.5), lengths[indices]])

    zone = PromptCurriculum(num_prompts, size, G, seed=3, zone_signal="composite", features=features, schedule=1)
    run(zone, pass_rates, 50, seed=1)
    zone._apply_up_to(49)
    first_visit = np.column_stack([np.full((40, 2), 0.5), np.log(lengths[:40]), np.log(lengths[:40]) ** 2,
                                   np.zeros((40, 4))])  # fmt: skip
    predicted = zone.predictor.predict(first_visit)
    assert predicted[band[:40]].min() > predicted[~band[:40]].max(), predicted.round(2)
    late = np.concatenate([zone.plans[r].prompts for r in range(25, 50)])
    assert band[late].mean() > 0.5, f"the band is 30% of the pool but got {band[late].mean():.0%} of late draws"


@pytest.mark.parametrize("sharpness", [1.0, 2.5, 4.0])
def test_a_prompts_weight_is_its_score_to_the_sharpness_floored(sharpness):
    zone = curriculum(zone_sharpness=sharpness, zone_floor=0.05)
    scores = np.array([0.0, 0.05, 0.2, 0.5, 0.9, 1.0])
    expected = [max(score**sharpness, 0.05) for score in scores]
    np.testing.assert_allclose(zone._weights(scores), expected, rtol=1e-12)


def test_a_sharper_zone_draws_more_of_the_mixed_prompts_and_still_revisits():
    """Prompts solved nearly always, nearly never, or half the time: P(mixed) is 0.34 against 0.88 with G = 4, so a
    proportional draw still gives the near-mastered prompts a third of a zone prompt's weight; k = 4 gives them the
    floor."""
    pass_rates = np.array([0.1] * 16 + [0.9] * 16 + [0.5] * 8)
    shares = {}
    for sharpness in (1.0, 4.0):
        zone = curriculum(half_life=math.inf, zone_sharpness=sharpness)
        run(zone, pass_rates, 80, seed=2)
        late = np.concatenate([zone.plans[r].prompts for r in range(40, 80)])
        shares[sharpness] = np.isin(late, np.arange(32, 40)).mean()
        assert np.isin(late, np.arange(0, 32)).any(), "the floor keeps revisiting mastered and out-of-reach prompts"
    assert shares[4.0] > shares[1.0] + 0.05, shares


@pytest.mark.parametrize("sharpness", [0.5, math.nan, math.inf])
def test_a_sharpness_below_one_is_refused(sharpness):
    with pytest.raises(ValueError, match="zone_sharpness"):
        curriculum(zone_sharpness=sharpness)


def test_a_state_saved_with_another_composite_is_refused_with_the_reason():
    zone = curriculum()
    run(zone, np.linspace(0.0, 1.0, N), 4)
    arrays, meta = zone.state_arrays()
    meta["predictor"]["num_features"] = 2  # hf_zpd 0.4's composite: confidence and entropy
    arrays["predictor.features"] = arrays["predictor.features"][:, :2]
    arrays["predictor.mean"], arrays["predictor.scale"] = np.zeros(2), np.ones(2)
    with pytest.raises(ValueError, match="another version"):
        curriculum().load_state_arrays(arrays, meta)
