"""The `hf-zpd` command line, end to end on tiny real models saved to folders and real data files."""

import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from builders import sentences, tiny_bert_classifier, tiny_gpt2, tiny_t5

from hf_zpd.cli import main

LABEL_NAMES = ("positive", "negative", "mixed")


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory, tokenizer) -> str:
    folder = tmp_path_factory.mktemp("bert")
    tiny_bert_classifier(len(tokenizer), num_labels=3).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory, tokenizer) -> str:
    folder = tmp_path_factory.mktemp("gpt2")
    tiny_gpt2(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def sentences_csv(tmp_path_factory) -> str:
    """A csv of 60 sentences with string labels, as a user's own data file would be."""
    path = tmp_path_factory.mktemp("data") / "sentences.csv"
    texts, labels = sentences(60, seed=3)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows((text, LABEL_NAMES[label]) for text, label in zip(texts, labels, strict=True))
    return str(path)


def common_flags(output_dir) -> list[str]:
    return [
        "--output_dir", str(output_dir), "--num_train_epochs", "2", "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "16", "--logging_steps", "2", "--save_strategy", "epoch",
        "--dataloader_pin_memory", "false", "--disable_tqdm", "true",
    ]  # fmt: skip


def help_text(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def option_lines(text: str) -> list[str]:
    """The flags that the help documents, in order (an option line starts with two spaces and --)."""
    return [line.split()[0].rstrip(",") for line in text.splitlines() if line.startswith("  --")]


def test_help_leads_with_the_commands_and_the_curriculums_flags(capsys):
    assert main(["--help"]) == 0
    usage = capsys.readouterr().out
    assert all(f"hf-zpd {command}" in usage for command in ("train", "score", "report"))
    for command in ("train", "score"):
        text = help_text([command, "--help"], capsys)
        groups = [
            line.rstrip(":") for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")
        ]
        assert groups == [
            "help",
            "the model and the data",
            f"hf-zpd {command}",
            "the ZPD curriculum (ZPDConfig's own fields)",
        ]
        flags = option_lines(text)
        assert flags.index("--dataset") < flags.index("--band_lower") < flags.index("--zone_repeats")
        assert "--learning_rate" not in flags and "--num_train_epochs" not in flags  # the Trainer's come after
        assert f"hf-zpd {command} --help-all" in text and len(text.splitlines()) < 250
        everything = option_lines(help_text([command, "--help-all"], capsys))
        assert {"--learning_rate", "--num_train_epochs", "--band_lower", "--dataset"} <= set(everything)
        assert len(everything) > 3 * len(flags)
    assert "--compare_plain_trainer" in option_lines(help_text(["train", "--help"], capsys))


def test_help_answers_without_importing_transformers():
    """`hf-zpd --help` is instant: the commands import transformers, torch and datasets only when they run."""
    code = "import sys; from hf_zpd.cli import main; main(['--help']); print(sorted({'transformers', 'torch', 'datasets'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_the_loaders_do_not_import_the_command_line():
    """data.py takes the task names from tasks.py: importing the loaders does not import the CLI (no import circle)."""
    code = "import sys, hf_zpd.data; print('hf_zpd.cli' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_console_script_is_installed():
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "hf-zpd"), "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "hf-zpd report RUN_DIR" in result.stdout


@pytest.mark.slow
def test_train_classification_end_to_end_with_report(tmp_path, classifier_folder, sentences_csv, capsys):
    run = tmp_path / "run"
    status = main(["train", "--model_name_or_path", classifier_folder, "--dataset", sentences_csv,
                   *common_flags(run)])  # fmt: skip
    assert status == 0
    out = capsys.readouterr().out
    assert "ZPD curriculum summary" in out and "epochs are numbered as the Trainer logs them" in out
    table = out.split("ZPD curriculum summary", 1)[1].splitlines()
    assert table[1].split()[:3] == ["epoch", "drawn", "from"]
    assert table[3].split()[:4] == ["1", "whole", "set", "(uniform)"] and table[4].split()[0] == "2"
    state = json.loads((run / "trainer_state.json").read_text())
    assert any("zpd/ppl" in entry for entry in state["log_history"])
    assert any("eval_accuracy" in entry for entry in state["log_history"])
    assert (run / "zpd_curriculum.parquet").is_file()
    # The string labels became class names of the model.
    config = json.loads((run / "config.json").read_text())
    assert sorted(config["id2label"].values()) == sorted(LABEL_NAMES)
    assert (run / "zpd_report" / "report.md").is_file()
    assert main(["report", str(run), "--output_dir", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "report.md").is_file()


@pytest.mark.slow
def test_train_causal_lm_and_plain_trainer_baseline(tmp_path, gpt2_folder, sentences_csv, capsys):
    run = tmp_path / "lm"
    flags = ["--model_name_or_path", gpt2_folder, "--dataset", sentences_csv, "--task", "causal_lm", "--no_report"]
    assert main(["train", *flags, *common_flags(run)]) == 0
    log_history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    assert any("zpd/running_ppl" in entry for entry in log_history)
    plain = tmp_path / "plain"
    assert main(["train", *flags, "--plain_trainer", *common_flags(plain)]) == 0
    plain_history = json.loads((plain / "trainer_state.json").read_text())["log_history"]
    assert not any(key.startswith("zpd/") for entry in plain_history for key in entry)
    out = capsys.readouterr().out
    assert "Plain Trainer (uniform baseline) summary" in out
    assert f"Model and checkpoints: {plain}" in out  # the plain run writes no curriculum, and does not claim one


def test_score_writes_every_example_to_parquet(tmp_path, classifier_folder, sentences_csv, capsys):
    output = tmp_path / "scores" / "train.parquet"
    status = main(["score", "--model_name_or_path", classifier_folder, "--dataset", sentences_csv,
                   "--output", str(output), "--output_dir", str(tmp_path / "unused"), "--disable_tqdm", "true",
                   "--scoring_batch_size", "7"])  # fmt: skip
    assert status == 0
    scores = pd.read_parquet(output)
    # The csv has no eval split, so 20% is held out and 48 training rows remain, all scored, in dataset order.
    assert len(scores) == 48
    assert scores["zpd_example_index"].tolist() == list(range(48))
    assert np.isfinite(scores[["loss", "confidence", "entropy", "competence", "difficulty"]].to_numpy()).all()
    assert (scores["num_tokens"] == 1).all()
    # Composite difficulty (the method): d = exp(log V (1 - k)), with V = 3 classes.
    np.testing.assert_allclose(scores["difficulty"], np.exp(np.log(3) * (1 - scores["competence"])), rtol=1e-12)
    assert not [name for name in os.listdir(output.parent) if name != "train.parquet"]  # no temp file left
    assert "Scored 48 examples" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--dataset", "./missing.csv"], "no such file or folder"),
        (["--dataset", "someone/not-cached-dataset"], "pass a local data file or folder"),
        (["--model_name_or_path", "someone/not-cached-model"], "Pass a local model folder"),
        (["--model_name_or_path", "./no/such/folder"], "no such folder"),
        (["--label_column", "sentiment"], "no label column 'sentiment'"),
        (["--band_lower", "-1"], "ZPDConfig.band_lower"),
        (["--task", "causal_lm"], "needs --model_name_or_path"),
    ],
)
def test_bad_input_gives_one_clear_line(flags, message, tmp_path, classifier_folder, sentences_csv, capsys):
    base = {"--model_name_or_path": classifier_folder, "--dataset": sentences_csv}
    for flag, value in zip(flags[::2], flags[1::2], strict=True):
        base[flag] = value
    if "--task" in base:
        del base["--model_name_or_path"]
    argv = [item for pair in base.items() for item in pair] + ["--output_dir", str(tmp_path)]
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hf-zpd train: error:") and message in err
    assert "Traceback" not in err


def test_task_model_mismatch_is_refused(tmp_path, tokenizer, sentences_csv, capsys):
    folder = tmp_path / "t5"
    tiny_t5(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    argv = ["train", "--model_name_or_path", str(folder), "--task", "causal_lm", "--dataset", sentences_csv]
    assert main([*argv, "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "cannot be loaded for task 'causal_lm'" in err and "T5Config" in err


def test_report_of_a_folder_without_a_run_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err


def test_unknown_command(capsys):
    assert main(["fit"]) == 2
    assert "unknown command 'fit'" in capsys.readouterr().err


def test_builtin_tweets_are_split_into_disjoint_prefixes():
    from hf_zpd.data import TWEET_LABELS, load_splits, load_tweets

    tweets = load_tweets(seed=42)
    splits = load_splits("tweets", seed=42)
    assert splits["train"].features["label"].names == list(TWEET_LABELS)
    assert len(splits["train"]) + len(splits["eval"]) == len(tweets)
    cut = len(splits["train"])
    assert splits["train"][0] == {"text": tweets[0][0], "label": tweets[0][1]}
    assert splits["eval"][0] == {"text": tweets[cut][0], "label": tweets[cut][1]}


@pytest.mark.slow
def test_compare_plain_trainer_prints_both_runs_side_by_side(tmp_path, classifier_folder, sentences_csv, capsys):
    run = tmp_path / "run"
    argv = ["train", "--model_name_or_path", classifier_folder, "--dataset", sentences_csv, "--no_report",
            "--compare_plain_trainer", *common_flags(run)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "ZPD curriculum summary" in out and "Plain Trainer (uniform baseline) summary" in out
    assert "ZPD curriculum against the plain Trainer (same data, seed and arguments):" in out
    zpd_state = json.loads((run / "trainer_state.json").read_text())
    plain_state = json.loads((tmp_path / "run-plain_trainer" / "trainer_state.json").read_text())
    ours = [e["eval_accuracy"] for e in zpd_state["log_history"] if "eval_accuracy" in e][-1]
    theirs = [e["eval_accuracy"] for e in plain_state["log_history"] if "eval_accuracy" in e][-1]
    assert (
        f"final accuracy: ZPD {ours:.4f}, plain {theirs:.4f} (ZPD - plain: {100 * (ours - theirs):+.2f} points" in out
    )
    assert zpd_state["global_step"] == plain_state["global_step"]
    # Epoch 1 is the Trainer's own (same batches, same order), so its evaluation is the plain run's: a paired run.
    first = [[e["eval_accuracy"] for e in state["log_history"] if e.get("epoch") == 1.0 and "eval_accuracy" in e]
             for state in (zpd_state, plain_state)]  # fmt: skip
    assert first[0] == pytest.approx(first[1], abs=1e-4)
    assert "both runs trained the same batches in the same order, so the comparison is paired" in out
    assert re.search(r"training time: ZPD \d+ s, of which \d+ s \(\d+%\) in 1 scoring passes; plain \d+ s", out)


def test_a_new_head_is_reported_in_one_plain_line(tmp_path, tokenizer, caplog):
    """transformers' load report is a colour table (raw escape codes in a log file); the CLI says it in one line."""
    from transformers import BertModel

    from hf_zpd.data import load_model_and_tokenizer

    folder = tmp_path / "encoder"
    tiny_bert_classifier(len(tokenizer)).bert.save_pretrained(folder)  # an encoder without a classification head
    assert isinstance(BertModel.from_pretrained(folder), BertModel)
    tokenizer.save_pretrained(folder)
    import logging

    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_warning()
    transformers_logging.get_logger().addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING):
            model, _ = load_model_and_tokenizer(str(folder), "classification", ["a", "b", "c"])
    finally:
        transformers_logging.get_logger().removeHandler(caplog.handler)
        transformers_logging.set_verbosity_error()
    assert "\x1b[" not in caplog.text and "LOAD REPORT" not in caplog.text
    assert "encoder: 2 weights are new and randomly initialised (classifier.bias, classifier.weight)" in caplog.text
