"""The run report: plots and markdown from a real run folder (tiny GPT-2, real Trainer logs, real checkpoints)."""

import json
import math
import os
import shutil

import numpy as np
import pytest
from builders import causal_lm_dataset, tiny_gpt2
from matplotlib.image import imread
from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

from hf_zpd import ZPDConfig, ZPDTrainer
from hf_zpd.record import RECORD_NAME
from hf_zpd.report import (
    DIFFICULTY_HISTOGRAMS,
    HIT_RATE,
    LEARNING_CURVE,
    MISSING,
    PLOT_NAMES,
    REPORT_DIR_NAME,
    REPORT_NAME,
    ReportError,
    band_cell,
    epoch_rows,
    format_number,
    load_run,
    write_report,
)

NUM_EPOCHS = 3


def run_values(output_dir, **overrides) -> dict:
    values = dict(
        output_dir=str(output_dir),
        num_train_epochs=NUM_EPOCHS,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=5e-3,
        logging_steps=2,
        eval_strategy="epoch",
        save_strategy="epoch",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=7,
    )
    values.update(overrides)
    return values


def token_accuracy(eval_prediction) -> dict[str, float]:
    """Next-token accuracy over the supervised positions: a real eval metric, so the report has one besides loss."""
    logits, labels = eval_prediction
    predicted, targets = logits[:, :-1].argmax(-1), labels[:, 1:]
    supervised = targets != -100
    return {"token_accuracy": float((predicted[supervised] == targets[supervised]).mean())}


def train(tokenizer, output_dir, trainer_class, args) -> None:
    trainer = trainer_class(
        model=tiny_gpt2(len(tokenizer)),
        args=args,
        train_dataset=causal_lm_dataset(tokenizer, 48, prompt_tokens=2),
        eval_dataset=causal_lm_dataset(tokenizer, 8, seed=1),
        data_collator=DataCollatorForSeq2Seq(tokenizer),
        compute_metrics=token_accuracy,
    )
    trainer.train()
    trainer.save_state()


@pytest.fixture(scope="module")
def zpd_run(tokenizer, tmp_path_factory) -> str:
    """A finished 3-epoch ZPDTrainer run: trainer_state.json, the record, and a checkpoint per epoch."""
    output_dir = tmp_path_factory.mktemp("report") / "zpd"
    # A band around the level (not above it) so that the tiny model's zones hold examples before any widening.
    args = ZPDConfig(**run_values(output_dir, band_lower=0.95, band_upper=1.2, min_zone_fraction=0.1))
    train(tokenizer, output_dir, ZPDTrainer, args)
    return str(output_dir)


@pytest.fixture(scope="module")
def zpd_report(zpd_run) -> str:
    return write_report(zpd_run)


@pytest.fixture(scope="module")
def plain_run(tokenizer, tmp_path_factory) -> str:
    output_dir = tmp_path_factory.mktemp("report") / "plain"
    train(tokenizer, output_dir, Trainer, TrainingArguments(**run_values(output_dir, num_train_epochs=2)))
    return str(output_dir)


def log_history(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "trainer_state.json")) as handle:
        return json.load(handle)["log_history"]


def read_markdown(folder: str) -> str:
    with open(os.path.join(folder, REPORT_NAME)) as handle:
        return handle.read()


def table_rows(markdown: str) -> dict[int, list[str]]:
    """The per-epoch table, epoch -> its cells (the first column of that table is a bare integer)."""
    section = markdown.split("## Epochs", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].isdigit():
            rows[int(cells[0])] = cells
    return rows


def header(markdown: str) -> list[str]:
    section = markdown.split("## Epochs", 1)[1]
    line = next(line for line in section.splitlines() if line.startswith("| epoch"))
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def assert_no_temporary_files(folder: str) -> None:
    leftovers = [name for name in os.listdir(folder) if name.startswith(".") or name.endswith(".tmp")]
    assert not leftovers, f"temporary files left in {folder}: {leftovers}"


def assert_valid_png(path: str) -> None:
    assert os.path.getsize(path) > 0
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


# ---- a finished ZPDTrainer run ----


def test_every_plot_is_a_valid_image_and_linked(zpd_run, zpd_report):
    assert zpd_report == os.path.join(zpd_run, REPORT_DIR_NAME)
    markdown = read_markdown(zpd_report)
    for name in PLOT_NAMES:
        assert_valid_png(os.path.join(zpd_report, name))
        assert f"]({name})" in markdown
    assert sorted(os.listdir(zpd_report)) == sorted([*PLOT_NAMES, REPORT_NAME])


def test_epoch_table_has_the_logged_values(zpd_run, zpd_report):
    """One row per trained epoch; each zone's values are those logged when it was chosen (before the epoch)."""
    history = log_history(zpd_run)
    markdown = read_markdown(zpd_report)
    rows, columns = table_rows(markdown), header(markdown)
    assert sorted(rows) == list(range(NUM_EPOCHS))
    assert rows[0][1] == "whole training set"
    zones = {int(entry["zpd/epoch"]): entry for entry in history if "zpd/epoch" in entry}
    assert sorted(zones) == [1, 2]
    for epoch, entry in zones.items():
        cells = dict(zip(columns, rows[epoch], strict=True))
        assert cells["trained on"] == "zone"
        assert cells["scored PPL"] == format_number(entry["zpd/ppl"])
        assert cells["level D"] == format_number(entry["zpd/level"])
        assert cells["band"] == f"[{format_number(entry['zpd/band_lower'])}, {format_number(entry['zpd/band_upper'])}]"
        assert cells["band"] == band_cell(entry)
        assert cells["zone fraction"] == format_number(entry["zpd/zone_fraction"], percent=True)
        assert cells["selected"] == format_number(entry["zpd/num_selected"])
        assert cells["widened"] == format_number(entry["zpd/num_widened"])
        assert cells["hit rate"] == format_number(entry.get("zpd/hit_rate"), percent=True)
    # The first zone has no earlier pass to measure progress against; the second has.
    assert dict(zip(columns, rows[1], strict=True))["hit rate"] == MISSING
    assert dict(zip(columns, rows[2], strict=True))["hit rate"] != MISSING
    # The eval after epoch e is the one the Trainer logs at epoch e + 1.
    evals = {round(entry["epoch"]): entry for entry in history if "eval_loss" in entry}
    for epoch in range(NUM_EPOCHS):
        cells = dict(zip(columns, rows[epoch], strict=True))
        assert cells["eval_loss"] == format_number(evals[epoch + 1]["eval_loss"])
        assert cells["eval_token_accuracy"] == format_number(evals[epoch + 1]["eval_token_accuracy"])
    # Speed keys are not model metrics.
    assert "eval_runtime" not in columns


def test_final_evaluation_and_settings(zpd_run, zpd_report):
    markdown = read_markdown(zpd_report)
    last = [entry for entry in log_history(zpd_run) if "eval_loss" in entry][-1]
    final = markdown.split("## Final evaluation", 1)[1].split("\n## ", 1)[0]
    assert f"| eval_loss | {format_number(last['eval_loss'])} |" in final
    assert f"| eval_token_accuracy | {format_number(last['eval_token_accuracy'])} |" in final
    assert "Training finished" in markdown
    assert "| band_lower | 0.95 |" in markdown
    assert "| competence_weights | 0.4, 0.35, 0.25 |" in markdown
    assert "No curriculum record" not in markdown


def test_report_into_another_folder(zpd_run, zpd_report, tmp_path):
    """`output_dir` is honoured (created), the report is the same, and no temporary file is left."""
    target = tmp_path / "elsewhere" / "report"
    assert write_report(zpd_run, target) == str(target)
    assert read_markdown(str(target)) == read_markdown(zpd_report)
    assert_no_temporary_files(str(target))
    assert_no_temporary_files(zpd_report)


# ---- checkpoints only (an interrupted run, or no save_state) ----


def copy_without_root_state(run_dir: str, target: str, keep_checkpoints: set[str]) -> str:
    """The run folder as a killed run leaves it: checkpoints only, no root trainer_state.json nor record."""
    os.makedirs(target)
    for name in sorted(keep_checkpoints):
        shutil.copytree(
            os.path.join(run_dir, name),
            os.path.join(target, name),
            # The weights are not read by the report; leaving them out keeps the copy fast.
            ignore=shutil.ignore_patterns("*.safetensors", "*.pt", "*.pth", "*.bin"),
        )
    return target


def test_checkpoint_only_run(zpd_run, zpd_report, tmp_path):
    run_dir = copy_without_root_state(zpd_run, str(tmp_path / "run"), {"checkpoint-6", "checkpoint-18"})
    folder = write_report(run_dir)
    markdown = read_markdown(folder)
    assert "checkpoint-18/trainer_state.json" in markdown
    assert f"checkpoint-18/{RECORD_NAME}" in markdown
    # The last checkpoint is the end of training: the same epochs and values as the finished run's report.
    assert table_rows(markdown) == table_rows(read_markdown(zpd_report))
    for name in PLOT_NAMES:
        assert_valid_png(os.path.join(folder, name))
    assert_no_temporary_files(folder)


def test_interrupted_run_after_the_first_epoch(zpd_run, tmp_path):
    """Killed after epoch 0: the zone of epoch 1 is chosen but not trained, and there is no hit rate yet."""
    run_dir = copy_without_root_state(zpd_run, str(tmp_path / "run"), {"checkpoint-6"})
    folder = write_report(run_dir)
    markdown = read_markdown(folder)
    rows = table_rows(markdown)
    assert sorted(rows) == [0, 1]
    assert rows[1][1] == "zone (chosen, not trained)"
    assert "did not finish" in markdown
    assert "No hit rate" in markdown
    assert not os.path.exists(os.path.join(folder, HIT_RATE))
    assert_valid_png(os.path.join(folder, DIFFICULTY_HISTOGRAMS))


@pytest.mark.parametrize("problem", ["damaged", "stale"])
def test_root_state_falls_back_to_the_checkpoint(zpd_run, zpd_report, tmp_path, problem):
    run_dir = str(tmp_path / "run")
    shutil.copytree(zpd_run, run_dir, ignore=shutil.ignore_patterns("*.safetensors", "*.pt", "*.pth", "*.bin"))
    path = os.path.join(run_dir, "trainer_state.json")
    if problem == "damaged":  # a save_state() killed halfway
        with open(path) as handle:
            text = handle.read()
        with open(path, "w") as handle:
            handle.write(text[: len(text) // 2])
    else:  # save_state() after epoch 0, then a resumed run went on to checkpoint-18
        shutil.copy(os.path.join(run_dir, "checkpoint-6", "trainer_state.json"), path)
    markdown = read_markdown(write_report(run_dir))
    assert "Log history: `checkpoint-18/trainer_state.json`" in markdown
    assert ("is unreadable" if problem == "damaged" else "stops at step 6") in markdown
    assert table_rows(markdown) == table_rows(read_markdown(zpd_report))


# ---- the plain Trainer ----


def test_plain_trainer_run_has_a_learning_curve_and_says_there_is_no_record(zpd_report, plain_run, tmp_path):
    folder = write_report(plain_run)
    markdown = read_markdown(folder)
    assert "No curriculum record" in markdown
    assert sorted(os.listdir(folder)) == sorted([LEARNING_CURVE, REPORT_NAME])
    assert_valid_png(os.path.join(folder, LEARNING_CURVE))
    rows = table_rows(markdown)
    assert sorted(rows) == [0, 1]
    assert all(cells[1] == "whole training set" for cells in rows.values())
    # Reporting into a folder that held a ZPD report removes the zone plots this run has no data for.
    target = str(tmp_path / "shared")
    shutil.copytree(zpd_report, target)
    write_report(plain_run, target)
    assert sorted(os.listdir(target)) == sorted([LEARNING_CURVE, REPORT_NAME])


# ---- errors ----


def test_empty_folder_names_the_folder_and_what_is_missing(tmp_path):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(ReportError, match=r"trainer_state\.json") as error:
        write_report(empty)
    assert str(empty) in str(error.value)
    assert "save_state()" in str(error.value) and "checkpoint" in str(error.value)
    assert isinstance(error.value, ValueError)
    assert os.listdir(empty) == []  # nothing written
    with pytest.raises(ReportError, match="no such folder") as error:
        write_report(tmp_path / "missing")
    assert str(tmp_path / "missing") in str(error.value)


def test_damaged_record_names_the_file(zpd_run, tmp_path):
    run_dir = str(tmp_path / "run")
    os.makedirs(run_dir)
    shutil.copy(os.path.join(zpd_run, "trainer_state.json"), run_dir)
    with open(os.path.join(run_dir, RECORD_NAME), "wb") as handle:
        handle.write(b"not parquet")
    with pytest.raises(ReportError, match=RECORD_NAME) as error:
        write_report(run_dir)
    assert run_dir in str(error.value)


# ---- the rules behind the table, on hand-written logs ----


def write_state(folder, log_history: list[dict], **state) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "trainer_state.json"), "w") as handle:
        json.dump({"log_history": log_history, **state}, handle)


def test_eval_by_steps_takes_the_evaluation_nearest_each_epoch_end(tmp_path):
    history = [
        {"eval_loss": 3.0, "epoch": 0.5, "step": 3},
        {"eval_loss": 2.0, "epoch": 1.0, "step": 6},
        {"eval_loss": 1.8, "epoch": 1.3, "step": 8},
        {"eval_loss": 1.5, "epoch": 1.7, "step": 10},
        # A second eval dataset logs its own entry at the same step: merged into one evaluation.
        {"eval_other_loss": 9.0, "epoch": 1.7, "step": 10},
        {"loss": 1.0, "epoch": 1.8, "step": 11},
    ]
    write_state(tmp_path, history, global_step=11, max_steps=18, epoch=1.8)
    run = load_run(tmp_path)
    rows = epoch_rows(run)
    assert [row.epoch for row in rows] == [0, 1]
    # 0.5 and 1.3 also round to the end of epoch 0, but 1.0 is nearest to it.
    assert rows[0].evaluation["eval_loss"] == 2.0
    # A run stopped mid-epoch: its last evaluation (rounding to the end of the epoch) stands in, with its epoch.
    assert rows[1].evaluation == {"eval_loss": 1.5, "eval_other_loss": 9.0, "epoch": 1.7, "step": 10}
    assert rows[1].trained_on == "whole training set (stopped at epoch 1.80)"
    markdown = read_markdown(write_report(tmp_path))
    assert "| 1.5 (at epoch 1.70) | 9 (at epoch 1.70) |" in markdown


def test_format_number():
    assert format_number(8.0) == "8"
    assert format_number(36.04066028596082) == "36.04"
    assert format_number(0.25, percent=True) == "25.0%"
    for missing in (None, math.nan, math.inf, float(np.nan)):
        assert format_number(missing) == MISSING
