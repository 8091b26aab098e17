"""The example scripts run end to end on tiny models saved to folders (the real models are the scripts' defaults)."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
from builders import build_chat_tokenizer, tiny_bert_classifier, tiny_llama

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples")


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_sft_example_trains_with_the_curriculum(tmp_path, capsys):
    folder = tmp_path / "tiny-chat-llama"
    tokenizer = build_chat_tokenizer()
    tiny_llama(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    argv = ["--model_name_or_path", str(folder), "--max_train_samples", "24", "--max_eval_samples", "8",
            "--output_dir", str(tmp_path / "out"), "--num_train_epochs", "2", "--use_cpu", "true",
            "--disable_tqdm", "true", "--bf16", "false"]  # fmt: skip
    assert load("sft").main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["epoch", "drawn", "from"])
    rows = {line.split()[0]: line for line in lines[header + 2 : header + 4]}
    assert "whole set (uniform)" in rows["1"] and "zone" in rows["2"]  # the second epoch drawn around the zone


@pytest.mark.slow
def test_the_classification_example_trains_with_the_curriculum(tmp_path, tokenizer, capsys, monkeypatch):
    folder = tmp_path / "tiny-bert"
    tiny_bert_classifier(len(tokenizer), num_labels=3).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    argv = ["classification.py", "--model_name_or_path", str(folder), "--max_train_samples", "32",
            "--max_eval_samples", "16", "--output_dir", str(tmp_path / "out"), "--num_train_epochs", "2",
            "--per_device_train_batch_size", "8", "--disable_tqdm", "true"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    load("classification").main()
    out = capsys.readouterr().out
    assert "ZPD curriculum summary" in out and "accuracy" in out
