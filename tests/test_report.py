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
from hf_zpd.epoch_table import MISSING, format_number
from hf_zpd.record import RECORD_NAME
from hf_zpd.report import (
    DIFFICULTY_HISTOGRAMS,
    EPOCH_DRAWS,
    HIT_RATE,
    LEARNING_CURVE,
    PLOT_NAMES,
    PPL_BAND,
    REPORT_DIR_NAME,
    REPORT_NAME,
    ReportError,
    epoch_draws_figure,
    hit_rate_figure,
    load_run,
    report_figures,
    write_report,
)

NUM_EPOCHS = 4


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


def train(tokenizer, output_dir, trainer_class, args, model_path=None) -> None:
    model = tiny_gpt2(len(tokenizer))
    if model_path is not None:
        model.config._name_or_path = model_path
    dataset = causal_lm_dataset(tokenizer, 48, prompt_tokens=2)
    dataset.info.dataset_name = "toy-sentences"
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=dataset,
        eval_dataset=causal_lm_dataset(tokenizer, 8, seed=1),
        data_collator=DataCollatorForSeq2Seq(tokenizer),
        compute_metrics=token_accuracy,
    )
    trainer.train()
    trainer.save_state()


@pytest.fixture(scope="module")
def zpd_run(tokenizer, tmp_path_factory) -> str:
    """A finished 4-epoch ZPDTrainer run: trainer_state.json, the record, and a checkpoint per epoch."""
    output_dir = tmp_path_factory.mktemp("report") / "zpd"
    # A band around the level (not above it) so that the tiny model's zones hold examples before any widening.
    args = ZPDConfig(**run_values(output_dir, band_lower=0.95, band_upper=1.2, min_zone_fraction=0.1))
    # A model from the Hugging Face cache: the report names it by its Hub id, not by the cache path.
    cached = "/home/user/.cache/huggingface/hub/models--someone--tiny-gpt2/snapshots/0123abcd"
    train(tokenizer, output_dir, ZPDTrainer, args, model_path=cached)
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


def epoch_table(markdown: str) -> tuple[list[str], dict[int, dict[str, str]]]:
    """The per-epoch table's header, and epoch -> its cells by column."""
    section = markdown.split("## Epochs", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip().strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0].isdigit() and len(cells) == len(header):
            rows[int(cells[0])] = dict(zip(header, cells, strict=True))
    return header, rows


def assert_no_temporary_files(folder: str) -> None:
    leftovers = [name for name in os.listdir(folder) if name.startswith(".") or name.endswith(".tmp")]
    assert not leftovers, f"temporary files left in {folder}: {leftovers}"


def assert_valid_png(path: str) -> None:
    assert os.path.getsize(path) > 0
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def assert_figure_is_readable(figure) -> None:
    """Every drawn line and bar lies inside its axes' limits (nothing clipped), and every legend entry names an
    artist that has data (no entry for an empty series)."""
    for axes in figure.axes:
        if not axes.get_visible():
            continue
        (x0, x1), (y0, y1) = sorted(axes.get_xlim()), sorted(axes.get_ylim())
        for line in axes.get_lines():
            x, y = (np.asarray(v, dtype=float) for v in line.get_data())
            if x.size == 2 and (x[0] == x[1] or y[0] == y[1]) and line.get_transform() != axes.transData:
                continue  # an axvline/axhline spans the axes by construction
            finite = np.isfinite(x) & np.isfinite(y)
            assert finite.any(), f"{axes.get_title()}: line {line.get_label()!r} has no data"
            assert (x[finite] >= x0).all() and (x[finite] <= x1).all(), f"{axes.get_title()}: {line.get_label()} x"
            assert (y[finite] >= y0).all() and (y[finite] <= y1).all(), f"{axes.get_title()}: {line.get_label()} y"
        for patch in axes.patches:
            if patch.get_width() == 0 and patch.get_height() == 0:
                continue
            box = patch.get_bbox()
            if patch.get_transform() == axes.transData:
                assert box.y1 <= y1 * (1 + 1e-9) and box.y0 >= y0 - 1e-9, f"{axes.get_title()}: a bar is clipped"
        legend = axes.get_legend()
        if legend is not None:
            handles, labels = axes.get_legend_handles_labels()
            assert labels == [text.get_text() for text in legend.get_texts()]
            for handle, label in zip(handles, labels, strict=True):
                has_data = (
                    np.asarray(handle.get_xdata()).size > 0
                    if hasattr(handle, "get_xdata")
                    else len(getattr(handle, "patches", [handle])) > 0
                )
                assert has_data, f"{axes.get_title()}: legend entry {label!r} has no data"


# ---- a finished ZPDTrainer run ----


def test_every_plot_is_a_valid_image_and_linked(zpd_run, zpd_report):
    assert zpd_report == os.path.join(zpd_run, REPORT_DIR_NAME)
    markdown = read_markdown(zpd_report)
    for name in PLOT_NAMES:
        assert_valid_png(os.path.join(zpd_report, name))
        assert f"]({name})" in markdown
    assert sorted(os.listdir(zpd_report)) == sorted([*PLOT_NAMES, REPORT_NAME])


def test_every_plot_holds_its_data_and_legends_only_name_drawn_series(zpd_run):
    figures, _ = report_figures(load_run(zpd_run))
    assert {name for name, (_, figure) in figures.items() if figure is not None} == set(PLOT_NAMES)
    for name, (_, figure) in figures.items():
        assert_figure_is_readable(figure), name


def test_the_learning_curve_marks_every_epoch_boundary(zpd_run):
    figures, _ = report_figures(load_run(zpd_run))
    figure = figures[LEARNING_CURVE][1]
    ends = {round(e["epoch"]): e["step"] for e in log_history(zpd_run) if "eval_loss" in e}
    for axes in figure.axes:
        vertical = sorted(line.get_xdata()[0] for line in axes.get_lines() if line.get_linestyle() == ":")
        assert vertical == [ends[epoch] for epoch in range(1, NUM_EPOCHS + 1)]
    labels = [text.get_text() for text in figure.axes[0].texts]
    assert labels == [f"epoch {epoch}" for epoch in range(1, NUM_EPOCHS + 1)]


def test_the_draws_plot_has_no_legend_entry_for_a_part_no_epoch_drew_from():
    metrics = {2: {"zpd/zone_draws": 30.0, "zpd/fill_draws": 18.0, "zpd/replay_draws": 0.0, "zpd/anneal_draws": 0.0,
                   "zpd/zone_fraction": 0.2}}  # fmt: skip
    figure = epoch_draws_figure(metrics)
    assert figure.axes[0].get_legend_handles_labels()[1] == ["zone", "fill"]
    assert figure.axes[0].get_ylim()[1] >= 48  # the tallest stack is not clipped
    assert_figure_is_readable(figure)


def test_the_draws_plot_shows_the_uniform_epochs_as_whole_set_bars():
    metrics = {1: {"zpd/uniform": 1.0},
               2: {"zpd/zone_draws": 30.0, "zpd/fill_draws": 18.0, "zpd/zone_fraction": 0.2},
               3: {"zpd/zone_draws": 20.0, "zpd/fill_draws": 22.0, "zpd/anneal_draws": 6.0, "zpd/zone_fraction": 0.1}}  # fmt: skip
    figure = epoch_draws_figure(metrics)
    top = figure.axes[0]
    handles, labels = top.get_legend_handles_labels()
    assert labels == ["zone", "fill", "anneal", "whole set (uniform)"]
    uniform_bars = handles[labels.index("whole set (uniform)")]
    assert [(bar.get_x() + bar.get_width() / 2, bar.get_height()) for bar in uniform_bars] == [(1.0, 48.0)]
    assert [tick.get_text() for tick in figure.axes[1].get_xticklabels()] == ["1", "2", "3"]
    assert_figure_is_readable(figure)


def test_a_single_hit_rate_goes_into_a_table_not_a_near_empty_figure(tmp_path, tokenizer):
    assert hit_rate_figure({3: {"zpd/hit_rate": 0.5}}) is None
    output_dir = tmp_path / "three"
    args = ZPDConfig(**run_values(output_dir, num_train_epochs=3, band_lower=0.95, band_upper=1.2))
    train(tokenizer, output_dir, ZPDTrainer, args)
    folder = write_report(str(output_dir))
    markdown = read_markdown(folder)
    assert not os.path.exists(os.path.join(folder, HIT_RATE))
    entry = next(e for e in log_history(str(output_dir)) if "zpd/hit_rate" in e)
    assert f"| 3 | {format_number(entry['zpd/hit_rate'], percent=True)} |" in markdown


def test_epoch_table_counts_epochs_as_the_trainer_logs_them(zpd_run, zpd_report):
    """One row per epoch, numbered from 1: epoch e's zone values are those logged when it was planned, and its
    evaluation is the one the Trainer logs at epoch e."""
    history = log_history(zpd_run)
    header, rows = epoch_table(read_markdown(zpd_report))
    assert sorted(rows) == list(range(1, NUM_EPOCHS + 1))
    assert rows[1]["drawn from"] == "whole set (uniform)"
    planned = {int(e["zpd/epoch"]): e for e in history if "zpd/epoch" in e and not e.get("zpd/uniform")}
    assert sorted(planned) == [2, 3, 4]
    for epoch, entry in planned.items():
        cells = rows[epoch]
        expected = ("zone + fill" if entry["zpd/fill_draws"] else "zone") + (
            " + anneal" if entry["zpd/anneal_draws"] else ""
        )
        assert cells["drawn from"] == expected
        assert cells["pool PPL"] == format_number(entry["zpd/ppl"])
        assert cells["level D"] == format_number(entry["zpd/level"])
        assert cells["band"] == f"[{format_number(entry['zpd/band_lower'])}, {format_number(entry['zpd/band_upper'])}]"
        assert cells["in band"] == format_number(entry["zpd/zone_fraction"], percent=True)
        assert cells["zone"] == format_number(entry["zpd/num_selected"])
        assert cells["zone draws"] == format_number(entry["zpd/zone_draws"])
        assert cells["skipped"] == format_number(entry["zpd/num_skipped"])
    evaluations = {round(e["epoch"]): e for e in history if "eval_loss" in e}
    for epoch in range(1, NUM_EPOCHS + 1):
        assert rows[epoch]["loss"] == format_number(evaluations[epoch]["eval_loss"])
        assert rows[epoch]["token accuracy"] == format_number(evaluations[epoch]["eval_token_accuracy"])
    assert not any("runtime" in name for name in header)  # speed keys are not model metrics


def test_the_report_names_the_model_and_the_data_as_a_user_writes_them(zpd_report):
    markdown = read_markdown(zpd_report)
    assert "- Model: `someone/tiny-gpt2`" in markdown and "snapshots" not in markdown.split("## Curriculum")[0]
    assert "- Training data: `toy-sentences`, 48 examples" in markdown


def test_final_evaluation_and_settings(zpd_run, zpd_report):
    markdown = read_markdown(zpd_report)
    last = [entry for entry in log_history(zpd_run) if "eval_loss" in entry][-1]
    final = markdown.split("## Final evaluation", 1)[1].split("\n## ", 1)[0]
    assert f"| eval_loss | {format_number(last['eval_loss'])} |" in final
    assert f"| eval_token_accuracy | {format_number(last['eval_token_accuracy'])} |" in final
    assert "Training finished" in markdown
    assert "| band_lower | 0.95 |" in markdown and "| composition | zone_and_fill |" in markdown
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
    run_dir = copy_without_root_state(zpd_run, str(tmp_path / "run"), {"checkpoint-6", "checkpoint-24"})
    folder = write_report(run_dir)
    markdown = read_markdown(folder)
    assert "checkpoint-24/trainer_state.json" in markdown and f"checkpoint-24/{RECORD_NAME}" in markdown
    # The last checkpoint is the end of training: the same epochs and values as the finished run's report.
    assert epoch_table(markdown) == epoch_table(read_markdown(zpd_report))
    for name in PLOT_NAMES:
        assert_valid_png(os.path.join(folder, name))
    assert_no_temporary_files(folder)


def test_interrupted_run_after_the_first_epoch(zpd_run, tmp_path):
    """Killed after the first epoch: the second is planned but not trained, and there is no hit rate yet."""
    run_dir = copy_without_root_state(zpd_run, str(tmp_path / "run"), {"checkpoint-6"})
    folder = write_report(run_dir)
    markdown = read_markdown(folder)
    _, rows = epoch_table(markdown)
    assert sorted(rows) == [1, 2]
    assert rows[2]["drawn from"].startswith("zone") and rows[2]["loss"] == MISSING
    assert "did not finish" in markdown and "No hit rate" in markdown
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
    else:  # save_state() after the first epoch, then a resumed run went on to checkpoint-24
        shutil.copy(os.path.join(run_dir, "checkpoint-6", "trainer_state.json"), path)
    markdown = read_markdown(write_report(run_dir))
    assert "Log history: `checkpoint-24/trainer_state.json`" in markdown
    assert ("is unreadable" if problem == "damaged" else "stops at step 6") in markdown
    assert epoch_table(markdown) == epoch_table(read_markdown(zpd_report))


# ---- the plain Trainer ----


def test_plain_trainer_run_has_a_learning_curve_and_says_there_is_no_record(zpd_report, plain_run, tmp_path):
    folder = write_report(plain_run)
    markdown = read_markdown(folder)
    assert "No curriculum record" in markdown
    assert sorted(os.listdir(folder)) == sorted([LEARNING_CURVE, REPORT_NAME])
    assert_valid_png(os.path.join(folder, LEARNING_CURVE))
    _, rows = epoch_table(markdown)
    assert sorted(rows) == [1, 2] and all(cells["drawn from"] == "whole set (uniform)" for cells in rows.values())
    # Reporting into a folder that held a ZPD report removes the zone plots this run has no data for.
    target = str(tmp_path / "shared")
    shutil.copytree(zpd_report, target)
    write_report(plain_run, target)
    assert sorted(os.listdir(target)) == sorted([LEARNING_CURVE, REPORT_NAME])
    assert_figure_is_readable(report_figures(load_run(plain_run))[0][LEARNING_CURVE][1])
    assert report_figures(load_run(plain_run))[0][PPL_BAND][1] is None
    assert report_figures(load_run(plain_run))[0][EPOCH_DRAWS][1] is None


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


def test_format_number():
    assert format_number(8.0) == "8"
    assert format_number(36.04066028596082) == "36.04"
    assert format_number(0.25, percent=True) == "25.0%"
    for missing in (None, math.nan, math.inf, float(np.nan)):
        assert format_number(missing) == MISSING
