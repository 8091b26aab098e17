"""Scoring-pass throughput against its limits, and the scoring pass as a fraction of a training epoch.

    python benchmarks/scoring_throughput.py                 # prints the tables, appends to results/scoring_throughput.csv
    python benchmarks/scoring_throughput.py --pool 384 --repeats 3

The model is a GPT-2 built from a config (32,000-token vocabulary, 2 layers of 256) and the pool is `--pool` random
sequences of 16 to 128 tokens, a quarter of each masked with -100. All figures come from one process, in one run,
over the same tokens; each pass is timed `--repeats` times and the median is kept.

Throughput (tokens per second over the pool's tokens):

- `scoring pass`: `ZPDTrainer.score_dataset`, the code the trainer runs at an epoch end (length-grouped batches of
  `--batch`, the Trainer's collator, the index scatter and the gather);
- `scoring pass, fixed order`: the same, with batches in dataset order (padding to each batch's longest example);
- `zero-padding forward + statistics`: the same forward and statistics on batches of examples of identical length,
  so no position is padding: the limit for the batching;
- `zero-padding forward`: those batches through the model alone, no statistics: what the statistics cost.

Epoch fraction: two short ZPDTrainer runs on the pool (batch `--train-batch`), one per score source, each timing its
first epoch and logging the `zpd/scoring_seconds` of the zone chosen after it. `scoring_pass` runs a full pass;
`training_pass` only merges the statistics that the training steps already computed.
"""

import argparse
import csv
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from transformers import DataCollatorForSeq2Seq, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, TrainerCallback
from transformers.utils import logging as transformers_logging

from hf_zpd import ZPDConfig, ZPDTrainer
from hf_zpd.statistics import align_causal_labels, per_example_statistics

HERE = Path(__file__).resolve().parent
VOCAB = 32_000


def build_pool(size: int, seed: int = 1) -> Dataset:
    rng = np.random.default_rng(seed)
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for length in rng.integers(16, 129, size=size):
        ids = rng.integers(1, VOCAB, size=int(length)).tolist()
        rows["input_ids"].append(ids)
        rows["attention_mask"].append([1] * len(ids))
        rows["labels"].append([-100] * (len(ids) // 4) + ids[len(ids) // 4 :])
    return Dataset.from_dict(rows)


def build_model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=128, n_embd=256, n_layer=2, n_head=4))


def padding_tokenizer() -> PreTrainedTokenizerFast:
    """The collator only needs a pad id; a one-token tokenizer built in code provides it offline."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel({"[PAD]": 0}, unk_token="[PAD]")), pad_token="[PAD]"
    )


def zero_padding_batches(pool: Dataset, batch: int) -> list[dict[str, torch.Tensor]]:
    """Batches of examples of identical length: every position is a real token."""
    by_length = defaultdict(list)
    for index, ids in enumerate(pool["input_ids"]):
        by_length[len(ids)].append(index)
    batches = []
    for indices in by_length.values():
        for start in range(0, len(indices), batch):
            rows = pool[indices[start : start + batch]]
            batches.append({name: torch.tensor(values) for name, values in rows.items()})
    return batches


def time_median(function, repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class EpochTimer(TrainerCallback):
    def on_epoch_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        if not hasattr(self, "first_epoch"):
            self.first_epoch = time.perf_counter() - self.start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=int, default=384)
    parser.add_argument("--batch", type=int, default=16, help="scoring batch size")
    parser.add_argument("--train-batch", type=int, default=8, help="training batch size for the epoch fraction")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    transformers_logging.set_verbosity_error()
    pool = build_pool(args.pool)
    num_tokens = sum(len(ids) for ids in pool["input_ids"])
    collator = DataCollatorForSeq2Seq(padding_tokenizer())

    with tempfile.TemporaryDirectory() as out:
        config = ZPDConfig(out, report_to=[], use_cpu=True, disable_tqdm=True, scoring_batch_size=args.batch)
        trainer = ZPDTrainer(model=build_model(), args=config, data_collator=collator)
        model = trainer.model
        seconds = {"scoring pass": time_median(lambda: trainer.score_dataset(pool), args.repeats)}
        # The same pass without lengths: the batches follow dataset order.
        lengths_of = trainer._lengths_of
        trainer._lengths_of = lambda dataset: None
        seconds["scoring pass, fixed order"] = time_median(lambda: trainer.score_dataset(pool), args.repeats)
        trainer._lengths_of = lengths_of

        batches = zero_padding_batches(pool, args.batch)
        model.eval()

        def forward_and_statistics():
            with torch.inference_mode():
                for batch in batches:
                    inputs = {key: value for key, value in batch.items() if key != "labels"}
                    logits = model(**inputs).logits
                    per_example_statistics(*align_causal_labels(logits, batch["labels"]), chunk_size=128)

        def forward_only():
            with torch.inference_mode():
                for batch in batches:
                    model(**{key: value for key, value in batch.items() if key != "labels"})

        seconds["zero-padding forward + statistics"] = time_median(forward_and_statistics, args.repeats)
        seconds["zero-padding forward"] = time_median(forward_only, args.repeats)

        epoch = {}
        for source in ("scoring_pass", "training_pass"):
            timer = EpochTimer()
            run = ZPDTrainer(
                model=build_model(),
                args=ZPDConfig(
                    f"{out}/{source}",
                    report_to=[],
                    use_cpu=True,
                    disable_tqdm=True,
                    num_train_epochs=2,
                    max_steps=len(pool) // args.train_batch + 1,  # the first epoch and one step of the second
                    epoch_fraction=1.0,  # whole-pass epochs (a budget this short would otherwise get small ones)
                    per_device_train_batch_size=args.train_batch,
                    scoring_batch_size=args.batch,
                    score_source=source,
                    save_strategy="no",
                    logging_steps=1000,
                ),
                train_dataset=pool,
                data_collator=collator,
                callbacks=[timer],
            )
            run.train()
            scoring = next(e["zpd/scoring_seconds"] for e in run.state.log_history if "zpd/scoring_seconds" in e)
            epoch[source] = (scoring, timer.first_epoch)

    limit = seconds["zero-padding forward + statistics"]
    print(f"pool {args.pool} sequences, {num_tokens} tokens, vocab {VOCAB}, scoring batch {args.batch}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")  # fmt: skip
    print("| pass | seconds | tokens/s | throughput / zero-padding forward + statistics |")
    print("|---|---|---|---|")
    for name, value in seconds.items():
        print(f"| {name} | {value:.3f} | {num_tokens / value:,.0f} | {limit / value:.3f} |")
    print(f"statistics cost: zero-padding forward + statistics / forward alone = "
          f"{limit / seconds['zero-padding forward']:.3f}x the time")  # fmt: skip
    print("| score source | zone scores seconds | first epoch seconds | fraction of the epoch |")
    print("|---|---|---|---|")
    for source, (scoring, epoch_seconds) in epoch.items():
        print(f"| {source} | {scoring:.3f} | {epoch_seconds:.2f} | {scoring / epoch_seconds:.4f} |")

    results = HERE / "results" / "scoring_throughput.csv"
    new = not results.exists()
    with results.open("a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(["date", "machine", "threads", "pool", "tokens", "batch", "measure", "seconds", "ratio"])
        common = [time.strftime("%Y-%m-%d"), platform.machine(), torch.get_num_threads(), args.pool, num_tokens]
        for name, value in seconds.items():
            writer.writerow(common + [args.batch, name, f"{value:.4f}", f"{limit / value:.4f}"])
        for source, (scoring, epoch_seconds) in epoch.items():
            writer.writerow(
                common
                + [args.train_batch, f"{source} / training epoch", f"{scoring:.4f}", f"{scoring / epoch_seconds:.4f}"]
            )


if __name__ == "__main__":
    main()
