"""Reference scores (`hf_zpd.reference`): read from `hf-zpd score`'s file and checked against the training set, or
computed by a reference model at train start; used as the reducible loss and as an out-of-reach rule; kept in
checkpoints and published with the record."""

from __future__ import annotations

import io
import logging
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from builders import causal_lm_dataset, classification_dataset, tiny_bert_classifier, tiny_gpt2
from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding

from hf_zpd import ZPDConfig, ZPDTrainer, load_curriculum
from hf_zpd.reference import check_reference_fits, read_reference_scores
from hf_zpd.scoring import ScoreTable


def config(tmp_path, name="run", **overrides) -> ZPDConfig:
    values = dict(output_dir=str(tmp_path / name), num_train_epochs=3, per_device_train_batch_size=8,
                  per_device_eval_batch_size=16, learning_rate=5e-3, logging_steps=2, save_strategy="no",
                  report_to=[], use_cpu=True, disable_tqdm=True, seed=7)  # fmt: skip
    values.update(overrides)
    return ZPDConfig(**values)


def write_scores(trainer: ZPDTrainer, dataset, path) -> str:
    """What `hf-zpd score` writes: `score_dataset` to parquet."""
    buffer = io.BytesIO()
    trainer.score_dataset(dataset).to_parquet(buffer)
    path = str(path)
    with open(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return path


@pytest.fixture(scope="module")
def classification(tokenizer):
    return classification_dataset(tokenizer, 40).add_column("id", [f"ex-{i}" for i in range(40)])


@pytest.fixture(scope="module")
def reference_file(tokenizer, classification, tmp_path_factory):
    """The scores of a reference classifier (another seed's weights) on the training set."""
    folder = tmp_path_factory.mktemp("reference")
    reference = ZPDTrainer(model=tiny_bert_classifier(len(tokenizer), seed=3), args=config(folder),
                           data_collator=DataCollatorWithPadding(tokenizer))  # fmt: skip
    return write_scores(reference, classification, folder / "scores.parquet")


# ---- reading and checking the file ----


def test_the_file_is_read_in_training_set_order_by_id(reference_file, classification, tmp_path):
    ids = np.array(classification["id"], dtype=object)
    labels = np.array(classification["label"])
    table = read_reference_scores(reference_file, 40, ids, "id", labels)
    rows = pq.read_table(reference_file).to_pandas()
    np.testing.assert_array_equal(table.loss, rows["loss"].to_numpy())
    assert table.vocab_size == 3 and (table.num_tokens == 1).all()
    shuffled = tmp_path / "shuffled.parquet"  # rows in another order are matched by their ids
    rows.sample(frac=1.0, random_state=0).to_parquet(shuffled)
    np.testing.assert_array_equal(read_reference_scores(str(shuffled), 40, ids, "id", labels).loss, table.loss)


def test_a_file_that_does_not_fit_is_refused_with_the_fix(reference_file, classification, tmp_path):
    ids = np.array(classification["id"], dtype=object)
    labels = np.array(classification["label"])
    rows = pq.read_table(reference_file).to_pandas()
    cases = {
        "missing": (str(tmp_path / "nothing.parquet"), "do not exist"),
        "foreign": (rows.drop(columns=["loss"]), "no column"),
        "size": (rows.iloc[:30], "30 rows, but the training set has 40"),
        "ids": (rows.assign(id=[f"other-{i}" for i in range(40)]), "ids that the training set's column 'id'"),
        "labels": (rows.assign(label=(rows["label"] + 1) % 3), "computed with other labels"),
        "twice": (rows.assign(zpd_example_index=[0] * 40).drop(columns=["id"]), "exactly once"),
    }
    for name, (content, message) in cases.items():
        path = content if isinstance(content, str) else str(tmp_path / f"{name}.parquet")
        if not isinstance(content, str):
            content.to_parquet(path)
        with pytest.raises(ValueError, match=message) as error:
            read_reference_scores(path, 40, ids if name != "twice" else None, "id", labels)
        assert "hf-zpd score" in str(error.value), name


def test_a_reference_of_another_tokenizer_or_vocabulary_is_refused():
    reference = ScoreTable.empty(4, vocab_size=50)
    reference.num_tokens[:] = [3, 4, 5, 6]
    check_reference_fits(reference, np.array([1, 2]), np.array([4, 5]), 50)  # fits
    with pytest.raises(
        ValueError, match="count 5 supervised tokens for training example 2, but its training batch has 7"
    ):
        check_reference_fits(reference, np.array([1, 2]), np.array([4, 7]), 50)
    with pytest.raises(ValueError, match="over 50 classes or tokens, but the model being trained predicts 60"):
        check_reference_fits(reference, np.array([1]), np.array([4]), 60)


# ---- in training ----


@pytest.mark.slow
def test_reducible_loss_and_the_reference_rule_from_a_file_of_hf_zpd_score(
    tokenizer, classification, reference_file, tmp_path
):
    for mode, rule in (("reducible", "learnability_guard"), ("composite", "reference")):
        trainer = ZPDTrainer(model=tiny_bert_classifier(len(tokenizer)), train_dataset=classification,
                             args=config(tmp_path, mode, difficulty_mode=mode, out_of_reach=rule,
                                         reference_scores=reference_file, save_strategy="epoch"),
                             data_collator=DataCollatorWithPadding(tokenizer))  # fmt: skip
        trainer.train()
        record = load_curriculum(str(tmp_path / mode))
        file_losses = pq.read_table(reference_file).column("loss").to_numpy()
        np.testing.assert_array_equal(record.reference.loss, file_losses)  # published with the curriculum
        rows = record.to_pandas().query("epoch == 2")
        np.testing.assert_allclose(rows["reference_loss"], file_losses[rows["index"]])
        if mode == "reducible":  # difficulty = exp(learner loss - reference loss)
            np.testing.assert_allclose(rows["difficulty"], np.exp(rows["loss"] - rows["reference_loss"]), rtol=1e-12)
        assert sorted(record.zones) == [2, 3]


@pytest.mark.slow
def test_a_reference_model_scores_at_train_start_and_a_resume_reuses_its_scores(tokenizer, tmp_path):
    dataset = causal_lm_dataset(tokenizer, 32, prompt_tokens=2)
    collator = DataCollatorForSeq2Seq(tokenizer)

    class CountingReference(ZPDTrainer):
        reference_passes = 0

        def _run_scoring_pass(self, model, *args, **kwargs):
            self.reference_passes += model is self.reference_model
            return super()._run_scoring_pass(model, *args, **kwargs)

    def run(name, resume=None):
        trainer = CountingReference(model=tiny_gpt2(len(tokenizer), seed=1), reference_model=tiny_gpt2(len(tokenizer), seed=9),
                                    args=config(tmp_path, name, difficulty_mode="reducible", save_strategy="steps",
                                                save_steps=3),
                                    train_dataset=dataset, data_collator=collator)  # fmt: skip
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run("full")
    assert full.reference_passes == 1 and full.curriculum.reference is not None
    seconds = [entry["zpd/reference_seconds"] for entry in full.state.log_history if "zpd/reference_seconds" in entry]
    assert len(seconds) == 1 and seconds[0] > 0, "the reference's cost is logged once"
    assert full.curriculum.settings["reference_seconds"] == seconds[0], "and kept in the record"
    resumed = run("resumed", resume=str(tmp_path / "full" / "checkpoint-6"))
    assert resumed.reference_passes == 0  # the checkpoint's scores, not a new pass
    np.testing.assert_array_equal(resumed.curriculum.reference.loss, full.curriculum.reference.loss)
    for name, tensor in full.model.state_dict().items():
        assert np.array_equal(tensor.numpy(), resumed.model.state_dict()[name].numpy()), name


def test_settings_that_read_a_reference_without_one_are_refused(tokenizer, tmp_path):
    for fields in ({"difficulty_mode": "reducible"}, {"out_of_reach": "reference"}):
        with pytest.raises(ValueError, match="reads a reference model's scores, and none was given"):
            ZPDTrainer(model=tiny_gpt2(len(tokenizer)), args=config(tmp_path, **fields))


def test_a_reference_that_nothing_reads_is_named_in_a_warning(
    reference_file, classification, tokenizer, tmp_path, caplog
):
    collator = DataCollatorWithPadding(tokenizer)
    with caplog.at_level(logging.WARNING, logger="hf_zpd.reference"):
        ZPDTrainer(model=tiny_bert_classifier(len(tokenizer)), train_dataset=classification, data_collator=collator,
                   args=config(tmp_path, reference_scores=reference_file))  # fmt: skip
    assert "reference_scores is set, but nothing reads it" in caplog.text and "out_of_reach='reference'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_zpd.reference"):
        ZPDTrainer(model=tiny_bert_classifier(len(tokenizer)), train_dataset=classification, data_collator=collator,
                   args=config(tmp_path, reference_scores=reference_file, out_of_reach="reference"))  # fmt: skip
    assert "nothing reads it" not in caplog.text


def test_reference_scores_of_another_tokenizer_stop_before_any_step(tokenizer, tmp_path):
    """Scores of the same texts through other token ids (another tokenizer): other supervised-token counts."""
    dataset = causal_lm_dataset(tokenizer, 16, prompt_tokens=2)
    collator = DataCollatorForSeq2Seq(tokenizer)
    scorer = ZPDTrainer(model=tiny_gpt2(len(tokenizer)), args=config(tmp_path, "scorer"), data_collator=collator)
    other = causal_lm_dataset(tokenizer, 16, prompt_tokens=4)  # other labels: two more masked positions
    path = write_scores(scorer, other, tmp_path / "other.parquet")
    trainer = ZPDTrainer(model=tiny_gpt2(len(tokenizer)), train_dataset=dataset, data_collator=collator,
                         args=config(tmp_path, "run", difficulty_mode="reducible", reference_scores=path,
                                     save_strategy="steps", save_steps=1))  # fmt: skip
    with pytest.raises(ValueError, match="supervised tokens for training example"):
        trainer.train()
    assert trainer.state.global_step == 0 and not os.path.isdir(tmp_path / "run" / "checkpoint-1")
