"""`ZPDGRPOTrainer`: TRL's GRPOTrainer with the prompt curriculum, on a tiny rotary policy (CPU, real TRL 1.16)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from builders import WORDS, build_tokenizer, tiny_llama
from datasets import Dataset, IterableDataset
from trl import GRPOConfig, GRPOTrainer

from hf_zpd import PromptRecord, ZPDGRPOConfig, ZPDGRPOTrainer
from hf_zpd.grpo import GRPO_STATE_NAME, PROMPT_INDEX_COLUMN
from hf_zpd.grpo_record import GRPO_RECORD_NAME

NUM_PROMPTS = 40


@pytest.fixture(scope="module")
def policy_tokenizer():
    tokenizer = build_tokenizer()
    tokenizer.padding_side = "left"
    return tokenizer


def prompts(size: int = NUM_PROMPTS) -> Dataset:
    return Dataset.from_dict(
        {"prompt": [" ".join(WORDS[(i + k) % len(WORDS)] for k in range(3)) for i in range(size)]}
    )


def says_cat(completions, **kwargs):
    """A binary reward a random tiny policy earns sometimes."""
    return [float("cat" in completion) for completion in completions]


def values(tmp_path, name="run", **overrides) -> dict:
    settings = dict(output_dir=str(tmp_path / name), bf16=False, use_cpu=True, report_to="none",
                    per_device_train_batch_size=8, num_generations=4, max_completion_length=3, max_steps=6,
                    logging_steps=1, save_strategy="no", seed=0, gradient_checkpointing=False, disable_tqdm=True,
                    learning_rate=1e-2)  # fmt: skip
    settings.update(overrides)
    return settings


def trainer(tokenizer, tmp_path, name="run", reward=says_cat, dataset=None, **overrides) -> ZPDGRPOTrainer:
    return ZPDGRPOTrainer(model=tiny_llama(len(tokenizer.get_vocab())), reward_funcs=reward,
                          args=ZPDGRPOConfig(**values(tmp_path, name, **overrides)),
                          train_dataset=dataset if dataset is not None else prompts(), processing_class=tokenizer)  # fmt: skip


# ---- bad input ----


def test_one_generation_per_prompt_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="no reward variance"):
        ZPDGRPOConfig(**values(tmp_path, num_generations=1))


def test_vllm_is_refused_not_silently_uniform(tmp_path):
    with pytest.raises(ValueError, match="vLLM generation"):
        ZPDGRPOConfig(**values(tmp_path, use_vllm=True))


def test_an_iterable_prompt_dataset_is_refused_with_what_to_pass(policy_tokenizer, tmp_path):
    stream = IterableDataset.from_generator(lambda: iter({"prompt": "the cat"} for _ in range(8)))
    with pytest.raises(ValueError, match="map-style prompt dataset"):
        trainer(policy_tokenizer, tmp_path, dataset=stream)


def test_the_reserved_index_column_is_refused(policy_tokenizer, tmp_path):
    with pytest.raises(ValueError, match=PROMPT_INDEX_COLUMN):
        trainer(policy_tokenizer, tmp_path, dataset=prompts().add_column(PROMPT_INDEX_COLUMN, [0] * NUM_PROMPTS))


@pytest.mark.parametrize("field,value", [("zone_floor", 0.0), ("zone_signal", "loss"), ("candidates_per_round", 0),
                                         ("reward_range", [1.0, 0.0]), ("prompt_selection", "best"),
                                         ("zone_sharpness", 0.5), ("zone_sharpness", math.inf)])  # fmt: skip
def test_invalid_curriculum_fields_name_the_field(tmp_path, field, value):
    with pytest.raises(ValueError, match=f"ZPDGRPOConfig.{field}"):
        ZPDGRPOConfig(**values(tmp_path, **{field: value}))


def test_trls_own_config_gets_the_curriculum_defaults(policy_tokenizer, tmp_path):
    plain = GRPOConfig(**values(tmp_path))
    ours = ZPDGRPOTrainer(model=tiny_llama(len(policy_tokenizer.get_vocab())), reward_funcs=says_cat, args=plain,
                          train_dataset=prompts(), processing_class=policy_tokenizer)  # fmt: skip
    assert isinstance(ours.args, ZPDGRPOConfig) and ours.args.zone_signal == "composite"
    assert ours.args.learning_rate == plain.learning_rate and ours.args.num_generations == plain.num_generations


def test_the_policy_features_are_confidence_entropy_and_the_prompts_length(policy_tokenizer, tmp_path):
    """The composite's forward: the first answer token's max probability and entropy / log V at the sampling
    temperature, and the prompt's length in tokens as TRL tokenizes it, in the order of the indices asked for."""
    dataset = prompts().map(lambda row, i: {"prompt": row["prompt"] + " dog" * (i % 3)}, with_indices=True)
    ours = trainer(policy_tokenizer, tmp_path, dataset=dataset, temperature=0.7)
    indices = np.array([5, 0, 4, 3])
    features = ours._prompt_features(indices)
    prompt_ids, _, _ = ours._tokenize_prompts([dataset[int(i)]["prompt"] for i in indices])
    np.testing.assert_array_equal(features[:, 2], [len(ids) for ids in prompt_ids])
    assert len(set(features[:, 2])) == 3, "the prompts have three lengths"
    for row, ids in zip(features, prompt_ids, strict=True):
        with torch.no_grad():
            logits = ours.model(input_ids=torch.tensor([ids])).logits[0, -1].double() / 0.7
        p = torch.softmax(logits, dim=-1)
        entropy = float(-(p * torch.log_softmax(logits, dim=-1)).sum() / math.log(p.numel()))
        assert row[0] == pytest.approx(float(p.max()), rel=1e-5) and row[1] == pytest.approx(entropy, rel=1e-5)


# ---- the drop-in ----


def test_the_sampler_keeps_trls_layout(policy_tokenizer, tmp_path):
    ours = trainer(policy_tokenizer, tmp_path, gradient_accumulation_steps=2, steps_per_generation=2)
    sampler = ours._get_train_sampler()
    curriculum = ours._zpd_curriculum
    size = ours._prompts_per_round * ours.num_generations * ours._repeat_count
    indices, iterator = [], iter(sampler)
    for round in range(sampler.rounds_per_epoch):
        indices += [next(iterator) for _ in range(size)]
        prompts = curriculum.plans[round].prompts  # its groups, scored (the curriculum needs them to go on)
        curriculum.observe(prompts, np.zeros((prompts.size, ours.num_generations)), np.zeros(prompts.size), step=round)
    assert next(iterator, None) is None and len(indices) == len(sampler)
    for start in range(0, len(indices), size):
        block = np.array(indices[start : start + size]).reshape(ours._repeat_count, -1)
        assert (block == block[0]).all(), "each round's block is repeated steps_per_generation x num_iterations times"
        groups = block[0].reshape(-1, ours.num_generations)
        assert (groups == groups[:, :1]).all(), "each prompt num_generations times in a row"
        assert len(set(groups[:, 0])) == ours._prompts_per_round, "distinct prompts within a round"


def test_the_advantages_and_the_loss_are_trls(policy_tokenizer, tmp_path):
    """The same rows, the same generation seed: TRL's GRPOTrainer and ours build the same batch and the same loss."""
    plain = GRPOTrainer(model=tiny_llama(len(policy_tokenizer.get_vocab())), reward_funcs=says_cat,
                        args=GRPOConfig(**values(tmp_path, "plain")), train_dataset=prompts(),
                        processing_class=policy_tokenizer)  # fmt: skip
    ours = trainer(policy_tokenizer, tmp_path, "ours")
    rows = [dict(prompt=prompts()[i]["prompt"]) for i in (3, 3, 3, 3, 7, 7, 7, 7)]
    plan = ours._zpd_curriculum.plan(0)
    plan.prompts[:] = [3, 7]  # as if the curriculum had drawn them
    outputs = []
    for model_trainer, batch in ((plain, rows), (ours, [dict(r, **{PROMPT_INDEX_COLUMN: i}) for r, i in
                                                         zip(rows, [3] * 4 + [7] * 4, strict=True)])):  # fmt: skip
        model_trainer.model.train()
        torch.manual_seed(5)
        output = model_trainer._generate_and_score_completions([dict(row) for row in batch])
        model_trainer.current_gradient_accumulation_steps = 1  # set by the training loop
        loss = model_trainer.compute_loss(model_trainer.model, output)
        outputs.append((output, loss))
    (trl_out, trl_loss), (our_out, our_loss) = outputs
    for key in ("completion_ids", "advantages", "num_items_in_batch"):
        assert torch.equal(trl_out[key], our_out[key]), key
    assert torch.equal(trl_loss, our_loss)
    assert ours._zpd_curriculum.outcomes[0].prompts.tolist() == [3, 7]


def test_importance_weights_scale_each_prompts_advantages(policy_tokenizer, tmp_path):
    ours = trainer(policy_tokenizer, tmp_path, importance_weighting=True)
    plan = ours._zpd_curriculum.plan(0)
    plan.prompts[:] = [3, 7]
    plan.weights[:] = [0.5, 1.5]
    rows = [{"prompt": prompts()[i]["prompt"], PROMPT_INDEX_COLUMN: i} for i in [3] * 4 + [7] * 4]
    ours.model.train()
    torch.manual_seed(5)
    weighted = ours._generate_and_score_completions([dict(r) for r in rows])["advantages"]
    ours.args.importance_weighting = False
    ours._zpd_curriculum.outcomes.clear()
    torch.manual_seed(5)
    unweighted = ours._generate_and_score_completions([dict(r) for r in rows])["advantages"]
    torch.testing.assert_close(weighted, unweighted * torch.tensor([0.5] * 4 + [1.5] * 4), rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize(
    "accumulation,steps_per_generation",
    [(1, 1), (2, 2), (1, 2), (2, 1), (4, 2)],
)
def test_every_plan_is_made_from_the_rounds_scored_before_it(policy_tokenizer, tmp_path, accumulation,
                                                             steps_per_generation):  # fmt: skip
    """TRL and accelerate draw rounds ahead; each plan uses exactly the rounds scored when it is drawn, no fewer."""
    ours = trainer(policy_tokenizer, tmp_path, gradient_accumulation_steps=accumulation,
                   steps_per_generation=steps_per_generation, max_steps=6)  # fmt: skip
    curriculum = ours._zpd_curriculum
    scored_when_drawn = {}
    draw = curriculum.plan

    def recording_plan(round):
        if round not in curriculum.plans:
            scored_when_drawn[round] = max(curriculum.outcomes, default=-1)
        return draw(round)

    curriculum.plan = recording_plan
    ours.train()
    assert curriculum.outcomes, "rounds were scored"
    for round, scored in scored_when_drawn.items():
        cutoff = curriculum.plans[round].cutoff
        assert cutoff <= scored, f"round {round} needed round {cutoff}, but only {scored} was scored"
        assert cutoff == scored, f"round {round} could have used round {scored}: the schedule is too cautious"


# ---- the record, the metrics, the checkpoint ----


@pytest.mark.slow
def test_a_run_logs_trls_metrics_and_the_curriculums_and_writes_its_record(policy_tokenizer, tmp_path):
    ours = trainer(policy_tokenizer, tmp_path, save_strategy="steps", save_steps=3)
    ours.train()
    logs = [entry for entry in ours.state.log_history if "loss" in entry]
    for key in ("reward", "frac_reward_zero_std", "completions/mean_length", "zpd/frac_zero_variance",
                "zpd/predicted_mixed", "zpd/completion_tokens", "zpd/rollouts"):  # fmt: skip
        assert all(key in entry for entry in logs), key
    # The curriculum's zero-variance share is TRL's frac_reward_zero_std, per round (one round per step here).
    for entry in logs:
        assert entry["zpd/frac_zero_variance"] == pytest.approx(entry["frac_reward_zero_std"])
    record = PromptRecord.load(str(tmp_path / "run"))
    observed = record.observed()
    assert observed["round"].max() == 5 and set(observed["scored"]) == {4}
    assert PromptRecord.load(str(tmp_path / "run" / "checkpoint-3" / GRPO_RECORD_NAME)).observed()["round"].max() == 2
    assert os.path.isfile(tmp_path / "run" / "checkpoint-3" / GRPO_STATE_NAME)
    assert record.zero_variance_share() == pytest.approx(1 - np.mean(observed["mixed"]))


@pytest.mark.slow
@pytest.mark.parametrize("signal", ["composite", "pass_rate"])
def test_resume_is_bitwise(policy_tokenizer, tmp_path, signal):
    whole = trainer(policy_tokenizer, tmp_path, "whole", zone_signal=signal, max_steps=8, save_strategy="steps",
                    save_steps=4)  # fmt: skip
    whole.train()
    resumed = trainer(policy_tokenizer, tmp_path, "resumed", zone_signal=signal, max_steps=8)
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-4"))
    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    for round, plan in whole._zpd_curriculum.plans.items():
        np.testing.assert_array_equal(plan.prompts, resumed._zpd_curriculum.plans[round].prompts)


@pytest.mark.slow
def test_a_resume_on_another_prompt_dataset_is_refused(policy_tokenizer, tmp_path):
    first = trainer(policy_tokenizer, tmp_path, "first", max_steps=2, save_strategy="steps", save_steps=2)
    first.train()
    other = trainer(policy_tokenizer, tmp_path, "other", max_steps=4, dataset=prompts(NUM_PROMPTS + 4))
    with pytest.raises(ValueError, match="another prompt dataset"):
        other.train(resume_from_checkpoint=str(tmp_path / "first" / "checkpoint-2"))


@pytest.mark.slow
def test_none_rewards_are_left_out_of_their_group_as_trl_does(policy_tokenizer, tmp_path):
    def half_unscored(completions, **kwargs):
        return [None if i % 2 else float("cat" in c) for i, c in enumerate(completions)]

    ours = trainer(policy_tokenizer, tmp_path, reward=half_unscored, max_steps=3)
    ours.train()
    record = ours.curriculum.observed()
    assert set(record["scored"]) == {2}, "two of four completions per group had a reward"
    logs = [entry for entry in ours.state.log_history if "loss" in entry]
    assert [e["zpd/frac_zero_variance"] for e in logs] == pytest.approx([e["frac_reward_zero_std"] for e in logs])


@pytest.mark.slow
def test_the_zero_variance_filter_fills_the_batch_with_mixed_groups(policy_tokenizer, tmp_path):
    ours = trainer(policy_tokenizer, tmp_path, prompt_selection="uniform", zero_variance_filter=True, max_steps=4,
                   max_filter_generations=3)  # fmt: skip
    batches = []
    generate = ours._filter_zero_variance

    def recording(output, local_rows):
        filtered = generate(output, local_rows)
        batches.append(filtered)
        return filtered

    ours._filter_zero_variance = recording
    ours.train()
    curriculum = ours._zpd_curriculum
    for batch, round in zip(batches, sorted(curriculum.outcomes), strict=True):
        outcome, refills = curriculum.outcomes[round], curriculum.refills.get(round, [])
        available = int(outcome.summary.mixed.sum() + sum(r.summary.mixed.sum() for r in refills))
        mixed_rows = int((batch["advantages"].view(-1, 4) != 0).any(dim=1).sum())
        assert mixed_rows == min(available, 2), "every mixed group found is trained on, up to the batch size"
        assert batch["num_items_in_batch"] == batch["completion_mask"].sum()
        if outcome.summary.mixed.all():
            assert not refills, "a batch that is already mixed costs no extra generation"
    logs = [entry for entry in ours.state.log_history if "loss" in entry]
    assert all(math.isfinite(entry["loss"]) for entry in logs)


@pytest.mark.slow
def test_a_lora_policy_trains(policy_tokenizer, tmp_path):
    from peft import LoraConfig

    ours = ZPDGRPOTrainer(model=tiny_llama(len(policy_tokenizer.get_vocab())), reward_funcs=says_cat,
                          args=ZPDGRPOConfig(**values(tmp_path, max_steps=3)), train_dataset=prompts(),
                          processing_class=policy_tokenizer,
                          peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))  # fmt: skip
    ours.train()
    assert len(ours._zpd_curriculum.outcomes) == 3


# ---- replay, the Hub and the report ----


@pytest.mark.slow
def test_a_replay_draws_the_recorded_rounds_and_trains_the_same(policy_tokenizer, tmp_path):
    recorded = trainer(policy_tokenizer, tmp_path, "recorded", max_steps=4)
    recorded.train()
    replay = trainer(policy_tokenizer, tmp_path, "replay", max_steps=4, replay_curriculum=str(tmp_path / "recorded"))
    replay.train()
    for round, plan in recorded._zpd_curriculum.plans.items():
        np.testing.assert_array_equal(replay._zpd_curriculum.plans[round].prompts, plan.prompts)
    for name, value in recorded.model.state_dict().items():
        assert torch.equal(value, replay.model.state_dict()[name]), name
    longer = trainer(policy_tokenizer, tmp_path, "longer", max_steps=9, replay_curriculum=str(tmp_path / "recorded"))
    with pytest.raises(ValueError, match=r"draws round \d+, but the replayed curriculum .* has rounds 0\.\.\d+ only"):
        longer.train()
    with pytest.raises(ValueError, match="recorded on 40 prompts"):
        trainer(policy_tokenizer, tmp_path, "other", dataset=prompts(44), replay_curriculum=str(tmp_path / "recorded"))


@pytest.mark.slow
def test_the_curriculum_goes_to_the_hub_with_a_card_and_comes_back(policy_tokenizer, tmp_path, monkeypatch):
    from hub_server import HubServer
    from test_record import point_clients_at

    server = HubServer()
    try:
        point_clients_at(server.endpoint, monkeypatch, tmp_path)
        ours = trainer(policy_tokenizer, tmp_path, max_steps=3)
        ours.train()
        ours.push_curriculum_to_hub("tester/grpo-curriculum", license="mit")
        loaded = PromptRecord.load_from_hub("tester/grpo-curriculum")
        np.testing.assert_array_equal(loaded.columns["prompt_index"], ours.curriculum.columns["prompt_index"])
        from huggingface_hub import DatasetCard

        card = DatasetCard.load("tester/grpo-curriculum", repo_type="dataset")
        assert {"hf_zpd", "grpo"} <= set(card.data.tags) and card.data.license == "mit"
        assert "zero reward variance" in card.text and "`mixed`" in card.text
        monkeypatch.delenv("HF_TOKEN")
        with pytest.raises(PermissionError, match="refused the write"):
            ours.push_curriculum_to_hub("tester/grpo-no-token")
    finally:
        server.stop()


@pytest.mark.slow
def test_the_report_draws_the_rounds(policy_tokenizer, tmp_path):
    from hf_zpd.report import GRPO_ROUNDS, write_report

    ours = trainer(policy_tokenizer, tmp_path, max_steps=4)
    ours.train()
    ours.save_state()
    folder = write_report(str(tmp_path / "run"))
    assert os.path.getsize(os.path.join(folder, GRPO_ROUNDS)) > 0
    assert f"]({GRPO_ROUNDS})" in open(os.path.join(folder, "report.md")).read()
