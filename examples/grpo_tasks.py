"""Tasks on which the plain `trl.GRPOTrainer` learns, for the GRPO curriculum study: a character-level tokenizer, a tiny
rotary policy, synthetic tasks with verifiable answers and a difficulty knob, a warm start by SFT on partly corrupted
answers, evaluation (pass@1 at temperature 1, greedy accuracy, per difficulty) and a uniform GRPO run that records its
curves (pass@1, greedy, generated tokens, TRL's `frac_reward_zero_std`).

Tasks (`TASKS`; each prompt is a plain string, TRL's standard format, and each completion ends with EOS):

| task | prompt | answer | difficulty |
|---|---|---|---|
| `add` | `"47+85="` | `"132"` | d = digits of each operand (1..4; one digit has only 100 prompts) |
| `reverse` | `"kqzv>"` | `"vzqk"` | L = length of the lowercase string (2..16) |
| `mul` | `"386*7="` | `"2702"` | d = digits of the first operand (1..5), times one digit 2..9 (no preset) |

`PRESETS` holds, per task, the warm start, the pool and the learning rate measured to make uniform GRPO gain, stably,
in 400 steps of 16 prompts x 8 completions on one CPU thread (numbers: pass@1 at temperature 1 with 8 samples per
evaluation prompt, the evaluation prompts unseen by SFT and GRPO; seeds 0, 1, 2 of GRPO from one warm start):

| preset | warm start pass@1 / greedy | after 400 steps at 1e-4 | zero-variance share (steps 1-100 / 301-400) | s/step | tokens/step |
|---|---|---|---|---|---|
| `add` | 0.34 / 0.37 (d=1 0.89, d=2 0.54, d=3 0.01) | 0.530 / 0.541 / 0.545, greedy 0.56 | 0.62 / 0.78 | 0.24-0.31 | 494 |
| `reverse` | 0.40 / 0.56 (L=2 0.94 ... L=16 0.01) | 0.880 / 0.874 / 0.881, greedy 0.94 | 0.46 / 0.70 | 0.67-0.70 | 1,277 |

Both pools look like a math set at the warm start: on a fixed sample of 256 pool prompts (8 samples each), `add` has
41% of its prompts at pass rate 0 and 16% at 1, `reverse` 27% and 12%. Uniform GRPO moves prompts out of both groups
into mastery (`add`: two digits; three digits stay out of reach), so the zero-variance share rises along the run.

Run from the repository root, on one thread (`--threads`):

    .venv/bin/python examples/grpo_tasks.py warm --task add        # builds (or reuses) the cached warm start, evaluates it
    .venv/bin/python examples/grpo_tasks.py grpo --task add --grpo_seed 0 --output add.json   # about 2 minutes

Python (from the repository root):

    from examples.grpo_tasks import run_preset
    curves = run_preset("reverse", seed=0)                    # about 6 minutes on one thread, evaluations included
    curves["pass@1"], curves["tokens"], curves["frac_reward_zero_std"]   # per evaluation, per evaluation, per step

The warm-started policy is cached under `~/.cache/hf_zpd/grpo_warm/<task>-<hash of its settings>` (`HF_ZPD_CACHE`
overrides `~/.cache/hf_zpd`), so later runs reuse it: SFT takes about 2 minutes for `reverse` (300 steps) and 9 for
`add` (2,000 steps).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

# Bump when a change makes cached warm starts stale (data generation, model, SFT recipe).
WARM_START_VERSION = 1

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]
DIGITS = "0123456789"
LETTERS = "abcdefghijklmnopqrstuvwxyz"
ALPHABET = DIGITS + LETTERS + "+-*=>| "


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizer and policy


def build_tokenizer():
    """A character-level fast tokenizer built in code: one token per character of `ALPHABET`, plus pad, bos, eos, unk.

    Every encoded text starts with `<bos>` (a post-processor, so TRL's `processing_class(text=prompts)` adds it too);
    padding is on the left, as generation needs.

    Example:

    ```python
    >>> tok = build_tokenizer()
    >>> ids = tok("12+7=")["input_ids"]
    >>> tok.convert_ids_to_tokens(ids)
    ['<bos>', '1', '2', '+', '7', '=']
    >>> tok.decode(ids[1:] + [tok.eos_token_id], skip_special_tokens=True)
    '12+7='

    ```
    """
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + list(ALPHABET))}
    backend = Tokenizer(WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


@dataclass(frozen=True)
class PolicySettings:
    """
    layers (`int`, *optional*, defaults to `3`), width (`int`, *optional*, defaults to `128`),
    heads (`int`, *optional*, defaults to `4`), mlp (`int`, *optional*, defaults to `512`):
        The Llama shape: decoder layers, hidden size, attention heads, MLP inner size.
    max_positions (`int`, *optional*, defaults to `64`):
        Longest prompt + completion, in tokens.
    """

    layers: int = 3
    width: int = 128
    heads: int = 4
    mlp: int = 512
    max_positions: int = 64


def build_policy(tokenizer, settings: PolicySettings = PolicySettings(), seed: int = 0):
    """A tiny rotary causal LM (`LlamaForCausalLM`, 0.80M parameters at the defaults), initialised from `seed`.

    Rotary, not GPT-2: TRL's training forward passes no `position_ids`, so an absolute-position model would be trained
    on left-padded prompts at other positions than it generated them (TRAINER_NOTES.md).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.width,
        intermediate_size=settings.mlp,
        num_hidden_layers=settings.layers,
        num_attention_heads=settings.heads,
        num_key_value_heads=settings.heads,
        max_position_embeddings=settings.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


# ---------------------------------------------------------------------------------------------------------------------
# Tasks


@dataclass(frozen=True)
class TaskSpec:
    """One synthetic task.

    name (`str`):
        The task's name in `TASKS`.
    difficulties (`tuple[int, ...]`):
        The values the difficulty knob takes (the `difficulty` column).
    sample (`Callable[[np.random.Generator, int], tuple[str, str]]`):
        Draws one (prompt, answer) pair of a given difficulty.
    corrupt (`Callable[[np.random.Generator, str], str]`):
        A plausible wrong answer: one character of the answer changed in place (never equal to the answer).
    space (`Callable[[int], int]`):
        How many distinct prompts a difficulty has (bounds the unique draws).
    max_completion_length (`int`):
        Longest answer in tokens, EOS included, at the largest difficulty.
    """

    name: str
    difficulties: tuple[int, ...]
    sample: Callable[[np.random.Generator, int], tuple[str, str]]
    corrupt: Callable[[np.random.Generator, str], str]
    space: Callable[[int], int]
    max_completion_length: int


def _number(rng: np.random.Generator, digits: int) -> int:
    """A number of exactly `digits` digits (0-9 for one digit)."""
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return int(rng.integers(low, 10**digits))


def _numbers_of(digits: int) -> int:
    return 10 if digits == 1 else 9 * 10 ** (digits - 1)


def _change_one(rng: np.random.Generator, answer: str, symbols: str) -> str:
    """The answer with one position replaced by another symbol (a leading digit stays non-zero)."""
    position = int(rng.integers(len(answer)))
    choices = [s for s in symbols if s != answer[position] and not (position == 0 and len(answer) > 1 and s == "0")]
    return answer[:position] + choices[int(rng.integers(len(choices)))] + answer[position + 1 :]


def _add_sample(rng: np.random.Generator, digits: int) -> tuple[str, str]:
    a, b = _number(rng, digits), _number(rng, digits)
    return f"{a}+{b}=", str(a + b)


def _mul_sample(rng: np.random.Generator, digits: int) -> tuple[str, str]:
    a, b = _number(rng, digits), int(rng.integers(2, 10))
    return f"{a}*{b}=", str(a * b)


def _reverse_sample(rng: np.random.Generator, length: int) -> tuple[str, str]:
    text = "".join(LETTERS[i] for i in rng.integers(0, 26, size=length))
    return f"{text}>", text[::-1]


TASKS: dict[str, TaskSpec] = {
    "add": TaskSpec(
        name="add",
        difficulties=(1, 2, 3, 4),
        sample=_add_sample,
        corrupt=lambda rng, answer: _change_one(rng, answer, DIGITS),
        space=lambda d: _numbers_of(d) ** 2,
        max_completion_length=6,  # 5 digits + EOS
    ),
    "reverse": TaskSpec(
        name="reverse",
        difficulties=tuple(range(2, 17)),
        sample=_reverse_sample,
        corrupt=lambda rng, answer: _change_one(rng, answer, LETTERS),
        space=lambda length: 26**length,
        max_completion_length=17,  # 16 letters + EOS
    ),
    "mul": TaskSpec(
        name="mul",
        difficulties=(1, 2, 3, 4, 5),
        sample=_mul_sample,
        corrupt=lambda rng, answer: _change_one(rng, answer, DIGITS),
        space=lambda d: _numbers_of(d) * 8,
        max_completion_length=7,  # 6 digits + EOS
    ),
}


def _normalise_mix(task: TaskSpec, mix: dict[int, float] | None) -> dict[int, float]:
    """Difficulty weights summing to 1 (uniform over the task's difficulties when `mix` is None)."""
    mix = {d: 1.0 for d in task.difficulties} if mix is None else {int(d): float(w) for d, w in mix.items()}
    unknown = sorted(set(mix) - set(task.difficulties))
    if unknown:
        raise ValueError(f"difficulties {unknown} are not in task {task.name!r}'s {task.difficulties}")
    total = sum(mix.values())
    return {d: w / total for d, w in sorted(mix.items()) if w > 0}


def _counts(mix: dict[int, float], total: int) -> dict[int, int]:
    """Largest-remainder split of `total` rows over the mix (deterministic)."""
    raw = {d: w * total for d, w in mix.items()}
    counts = {d: int(math.floor(r)) for d, r in raw.items()}
    for d in sorted(raw, key=lambda d: (counts[d] - raw[d], d))[: total - sum(counts.values())]:
        counts[d] += 1
    return counts


def _draw_unique(task, rng, difficulty: int, count: int, exclude: set[str], excluded_here: int = 0):
    """`count` distinct prompts of one difficulty outside `exclude`, of which `excluded_here` have this difficulty
    (refused when the difficulty has fewer prompts than that)."""
    if count + excluded_here > task.space(difficulty):
        raise ValueError(
            f"task {task.name!r} has {task.space(difficulty)} prompts of difficulty {difficulty}: too few for "
            f"{count} unique draws beside {excluded_here} evaluation prompts; lower that difficulty's share"
        )
    rows, seen = [], set()
    while len(rows) < count:
        prompt, answer = task.sample(rng, difficulty)
        if prompt in exclude or prompt in seen:
            continue
        seen.add(prompt)
        rows.append((prompt, answer))
    return rows


def _dataset(rows: list[tuple[str, str, int]]):
    from datasets import Dataset

    return Dataset.from_dict(
        {"prompt": [r[0] for r in rows], "answer": [r[1] for r in rows], "difficulty": [r[2] for r in rows]}
    )


@dataclass(frozen=True)
class PoolSettings:
    """
    size (`int`, *optional*, defaults to `2000`):
        Unique prompts in the GRPO training pool.
    mix (`tuple[tuple[int, float], ...]`, *optional*):
        (difficulty, weight) pairs; None is uniform over the task's difficulties.
    seed (`int`, *optional*, defaults to `0`):
        Seeds the pool's draws (its own stream: changing the pool leaves the warm start and the evaluation set alone).
    """

    size: int = 2000
    mix: tuple[tuple[int, float], ...] | None = None
    seed: int = 0


def build_datasets(warm: WarmStartSettings, pool: PoolSettings | None = None) -> dict:
    """The task's data: `{"eval", "sft"}` and, with `pool`, `"pool"`; each a `datasets.Dataset` with columns `prompt`
    (a plain string), `answer` and `difficulty`. The SFT set adds `clean_answer` and `corrupted` (its `answer` is what
    SFT trains on, corrupted in a share `warm.corruption` of its rows).

    Three independent random streams: the evaluation set (`warm.eval_per_difficulty` unique prompts per difficulty,
    at most an eighth of a difficulty's prompts), the SFT set (`warm.sft_size` draws with replacement, never an
    evaluation prompt) and the pool (`pool.size` unique prompts, never an evaluation prompt, and no SFT prompt where a
    difficulty has room: 10 times the prompts drawn of it; `add` with one digit has 100 prompts, so there the pool
    repeats SFT prompts). The evaluation prompts are therefore unseen by both SFT and GRPO.
    """
    task = TASKS[warm.task]
    eval_rng = np.random.default_rng([warm.data_seed, 1])
    eval_rows = []
    for d in task.difficulties:
        count = min(warm.eval_per_difficulty, task.space(d) // 8)
        eval_rows += [(p, a, d) for p, a in _draw_unique(task, eval_rng, d, count, set())]
    eval_prompts = {r[0] for r in eval_rows}
    eval_count = {d: sum(r[2] == d for r in eval_rows) for d in task.difficulties}

    sft_rng = np.random.default_rng([warm.data_seed, 2])
    sft_rows = []
    sft_mix = _normalise_mix(task, dict(warm.sft_mix) if warm.sft_mix else None)
    for d, count in _counts(sft_mix, warm.sft_size).items():
        drawn = 0
        while drawn < count:
            prompt, answer = task.sample(sft_rng, d)
            if prompt in eval_prompts:
                continue
            corrupted = bool(sft_rng.random() < warm.corruption)
            sft_rows.append((prompt, task.corrupt(sft_rng, answer) if corrupted else answer, d, answer, corrupted))
            drawn += 1
    order = sft_rng.permutation(len(sft_rows))
    sft_rows = [sft_rows[i] for i in order]
    sft = _dataset([r[:3] for r in sft_rows])
    sft = sft.add_column("clean_answer", [r[3] for r in sft_rows]).add_column("corrupted", [r[4] for r in sft_rows])
    result = {"eval": _dataset(eval_rows), "sft": sft}
    if pool is None:
        return result

    pool_rng = np.random.default_rng([pool.seed, 3])
    sft_prompts = {r[0] for r in sft_rows}
    sft_count = {d: sum(r[2] == d for r in sft_rows) for d in task.difficulties}
    pool_rows = []
    for d, count in _counts(_normalise_mix(task, dict(pool.mix) if pool.mix else None), pool.size).items():
        roomy = task.space(d) >= 10 * (count + eval_count[d] + sft_count[d])
        exclude = eval_prompts | sft_prompts if roomy else eval_prompts
        pool_rows += [(p, a, d) for p, a in _draw_unique(task, pool_rng, d, count, exclude, eval_count[d])]
    order = pool_rng.permutation(len(pool_rows))
    result["pool"] = _dataset([pool_rows[i] for i in order])
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Rewards


def _clean(text: str) -> str:
    return text.replace(EOS, "").replace(PAD, "").strip()


def exact_match_reward(completions: list[str], answer: list[str], **kwargs) -> list[float]:
    """1.0 where the completion (whitespace and EOS stripped) equals the answer, else 0.0 (TRL's reward signature)."""
    return [float(_clean(c) == a) for c, a in zip(completions, answer, strict=True)]


def char_match_reward(completions: list[str], answer: list[str], **kwargs) -> list[float]:
    """Share of characters right in place: `sum_i [c_i == a_i] / max(len(c), len(a))` (1.0 only on an exact match).

    A non-binary reward, for tests of code that must not assume rewards in {0, 1}.
    """
    scores = []
    for completion, target in zip(completions, answer, strict=True):
        completion = _clean(completion)
        longest = max(len(completion), len(target))
        scores.append(sum(x == y for x, y in zip(completion, target, strict=False)) / longest if longest else 1.0)
    return scores


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def generate_completions(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int,
    do_sample: bool,
    seed: int = 0,
    batch_size: int = 512,
) -> tuple[list[str], list[int]]:
    """Completions (decoded, special tokens dropped) and their lengths in tokens (EOS included, as TRL counts them).

    Sampling is at temperature 1 with no top-k / top-p, as `GRPOConfig`'s defaults generate. The global RNG is left
    untouched (`fork_rng`), so evaluating inside a training run does not change the run.
    """
    was_training = model.training
    model.eval()
    texts, lengths = [], []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True)
            batch = {k: v.to(model.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
            kwargs = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0) if do_sample else dict(do_sample=False)
            output = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **kwargs,
            )
            completion_ids = output[:, batch["input_ids"].shape[1] :].tolist()  # (B, T)
            for ids in completion_ids:
                if tokenizer.eos_token_id in ids:
                    ids = ids[: ids.index(tokenizer.eos_token_id) + 1]
                lengths.append(len(ids))
                texts.append(tokenizer.decode(ids, skip_special_tokens=True))
    model.train(was_training)
    return texts, lengths


def evaluate(
    model,
    tokenizer,
    dataset,
    *,
    n_samples: int = 8,
    seed: int = 0,
    max_new_tokens: int | None = None,
    greedy: bool = True,
) -> dict:
    """pass@1 at temperature 1 (the mean of `n_samples` exact-match draws per prompt), greedy accuracy and the mean
    completion length, overall (the mean over the dataset's prompts) and per difficulty.

    Returns a dict with `pass@1`, `greedy`, `mean_length`, `pass@1_by_difficulty`, `greedy_by_difficulty` (difficulty
    -> value), `pass_rates` (per prompt, in dataset order), `share_zero` / `share_one` (prompts with no / every sample
    right) and `share_zero_variance` (the mean over prompts of `p^8 + (1 - p)^8` with `p` the prompt's pass rate: the
    expected share of zero-variance groups of 8 if GRPO drew these prompts).
    """
    prompts, answers, difficulty = dataset["prompt"], dataset["answer"], dataset["difficulty"]
    if max_new_tokens is None:
        max_new_tokens = max(len(a) for a in answers) + 2
    repeated = [p for p in prompts for _ in range(n_samples)]
    texts, lengths = generate_completions(
        model, tokenizer, repeated, max_new_tokens=max_new_tokens, do_sample=True, seed=seed
    )
    right = np.array(exact_match_reward(texts, [a for a in answers for _ in range(n_samples)])).reshape(-1, n_samples)
    rates = right.mean(1)
    result = {
        "pass@1": float(rates.mean()),
        "mean_length": float(np.mean(lengths)),
        "pass_rates": rates.round(4).tolist(),
        "share_zero": float((rates == 0).mean()),
        "share_one": float((rates == 1).mean()),
        "share_zero_variance": float((rates**8 + (1 - rates) ** 8).mean()),
    }
    levels = sorted(set(difficulty))
    diff = np.array(difficulty)
    result["pass@1_by_difficulty"] = {int(d): float(rates[diff == d].mean()) for d in levels}
    if greedy:
        texts, _ = generate_completions(
            model, tokenizer, list(prompts), max_new_tokens=max_new_tokens, do_sample=False
        )
        hits = np.array(exact_match_reward(texts, list(answers)))
        result["greedy"] = float(hits.mean())
        result["greedy_by_difficulty"] = {int(d): float(hits[diff == d].mean()) for d in levels}
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Warm start


@dataclass(frozen=True)
class WarmStartSettings:
    """Everything the warm-started policy depends on (the cache key hashes all of it).

    task (`str`):
        A key of `TASKS`.
    sft_size (`int`, *optional*, defaults to `20000`):
        Examples in the SFT set (drawn with replacement; never an evaluation prompt).
    sft_mix (`tuple[tuple[int, float], ...]`, *optional*):
        (difficulty, weight) pairs of the SFT set; None is uniform over the task's difficulties.
    corruption (`float`, *optional*, defaults to `0.15`):
        Share of the SFT answers replaced by a plausible wrong one (one character changed in place), drawn per row.
    eval_per_difficulty (`int`, *optional*, defaults to `48`), data_seed (`int`, *optional*, defaults to `0`):
        The evaluation set's size per difficulty, and the seed of the evaluation and SFT draws.
    policy (`PolicySettings`):
        The policy's shape.
    sft_steps (`int`, *optional*, defaults to `2000`):
        Optimizer steps of the plain `transformers.Trainer` on the SFT set (epochs repeat it).
    sft_batch_size (`int`, *optional*, defaults to `128`), sft_learning_rate (`float`, *optional*, defaults to `2e-3`):
        Its batch and learning rate (AdamW, 50 warmup steps, then constant: a run of n steps is the first n steps of
        any longer run, so one run profiles every length).
    seed (`int`, *optional*, defaults to `0`):
        The policy's initialisation and the SFT order.
    """

    task: str
    sft_size: int = 20000
    sft_mix: tuple[tuple[int, float], ...] | None = None
    corruption: float = 0.15
    eval_per_difficulty: int = 48
    data_seed: int = 0
    policy: PolicySettings = PolicySettings()
    sft_steps: int = 2000
    sft_batch_size: int = 128
    sft_learning_rate: float = 2e-3
    seed: int = 0

    def key(self) -> str:
        """`<task>-<12 hex digits>`: the cache folder's name, a hash of every setting and `WARM_START_VERSION`."""
        blob = json.dumps([WARM_START_VERSION, ALPHABET, dataclasses.asdict(self)], sort_keys=True)
        return f"{self.task}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"

    def replace(self, **changes) -> WarmStartSettings:
        """A copy with some fields changed (`policy__width=64` style keys reach the policy's settings)."""
        policy = {k.split("__", 1)[1]: v for k, v in changes.items() if k.startswith("policy__")}
        top = {k: v for k, v in changes.items() if not k.startswith("policy__")}
        if policy:
            top["policy"] = dataclasses.replace(self.policy, **policy)
        return dataclasses.replace(self, **top)


def cache_root() -> str:
    return os.path.join(os.environ.get("HF_ZPD_CACHE", os.path.expanduser("~/.cache/hf_zpd")), "grpo_warm")


class _AnswerOnlyCollator:
    """Right-pads prompt + answer + EOS; labels are -100 on the prompt (and its BOS) and on padding."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, rows: list[dict]) -> dict:
        tok = self.tokenizer
        sequences, labels = [], []
        for row in rows:
            prompt_ids = tok(row["prompt"])["input_ids"]  # <bos> + prompt characters
            answer_ids = tok(row["answer"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            sequences.append(prompt_ids + answer_ids)
            labels.append([-100] * len(prompt_ids) + answer_ids)
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(rows), width), tok.pad_token_id)  # (B, T)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        target = torch.full((len(rows), width), -100)
        for i, (sequence, label) in enumerate(zip(sequences, labels, strict=True)):
            input_ids[i, : len(sequence)] = torch.tensor(sequence)
            attention[i, : len(sequence)] = 1
            target[i, : len(label)] = torch.tensor(label)
        return {"input_ids": input_ids, "attention_mask": attention, "labels": target}


def sft_warm_start(
    settings: WarmStartSettings, output_dir: str | None = None, verbose: bool = True, callbacks: list | None = None
):
    """Train the policy from scratch on the SFT set with the plain `transformers.Trainer` (loss on the answer tokens
    only) and return `(model, tokenizer, seconds)`; saved to `output_dir` when given. `callbacks` (`TrainerCallback`s)
    can watch the run, e.g. to evaluate it at several lengths."""
    from transformers import Trainer, TrainingArguments

    tokenizer = build_tokenizer()
    data = build_datasets(settings)
    model = build_policy(tokenizer, settings.policy, seed=settings.seed)
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            per_device_train_batch_size=settings.sft_batch_size,
            learning_rate=settings.sft_learning_rate,
            max_steps=settings.sft_steps,
            warmup_steps=min(50, settings.sft_steps),
            lr_scheduler_type="constant_with_warmup",  # so that a longer run passes through every shorter one
            weight_decay=0.0,
            logging_steps=max(1, settings.sft_steps // 10),
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            seed=settings.seed,
            remove_unused_columns=False,
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=data["sft"].select_columns(["prompt", "answer"]),
            data_collator=_AnswerOnlyCollator(tokenizer),
            callbacks=callbacks,
        )
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    if verbose:
        losses = [(h["step"], round(h["loss"], 3)) for h in trainer.state.log_history if "loss" in h]
        print(f"[warm start] {settings.key()}: {settings.sft_steps} SFT steps in {seconds:.1f}s; loss {losses}")
    model.eval()
    if output_dir is not None:
        model.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
    return model, tokenizer, seconds


def load_warm_start(settings: WarmStartSettings, verbose: bool = True):
    """The warm-started policy and its tokenizer, from the cache (`cache_root()/<settings.key()>`) or trained there."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    folder = os.path.join(cache_root(), settings.key())
    if not os.path.exists(os.path.join(folder, "settings.json")):
        os.makedirs(cache_root(), exist_ok=True)
        scratch = tempfile.mkdtemp(dir=cache_root(), prefix=".tmp-")
        _, _, seconds = sft_warm_start(settings, output_dir=scratch, verbose=verbose)
        with open(os.path.join(scratch, "settings.json"), "w") as f:
            json.dump({"key": settings.key(), "settings": dataclasses.asdict(settings), "sft_seconds": seconds}, f)
        if os.path.exists(folder):  # a half-written folder from an interrupted run
            shutil.rmtree(folder)
        os.replace(scratch, folder)
    elif verbose:
        print(f"[warm start] reusing {folder}")
    model = LlamaForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    return model, tokenizer, folder


def warm_start_report(
    settings: WarmStartSettings,
    pool: PoolSettings | None = None,
    n_samples: int = 8,
    pool_sample: int = 512,
    seed: int = 0,
) -> dict:
    """The warm start's evaluation on the evaluation set (and on a fixed sample of `pool`), cached beside it."""
    model, tokenizer, folder = load_warm_start(settings)
    pool_key = "none" if pool is None else hashlib.sha256(repr(pool).encode()).hexdigest()[:8]
    path = os.path.join(folder, f"report-n{n_samples}-p{pool_sample}-s{seed}-{pool_key}.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    data = build_datasets(settings, pool)
    task = TASKS[settings.task]
    start = time.perf_counter()
    report = {
        "key": settings.key(),
        "eval": evaluate(
            model, tokenizer, data["eval"], n_samples=n_samples, seed=seed, max_new_tokens=task.max_completion_length
        ),
    }
    if pool is not None:
        report["pool"] = evaluate(
            model,
            tokenizer,
            _pool_sample(data["pool"], pool_sample),
            n_samples=n_samples,
            seed=seed,
            max_new_tokens=task.max_completion_length,
            greedy=False,
        )
    report["eval_seconds"] = time.perf_counter() - start
    with open(path, "w") as f:
        json.dump(report, f)
    return report


def _pool_sample(pool, size: int):
    """The pool's first `size` rows (the pool is shuffled when built, so this is a fixed random sample)."""
    return pool.select(range(min(size, len(pool))))


# ---------------------------------------------------------------------------------------------------------------------
# Uniform GRPO


class _CountingReward:
    """Wraps a reward function and counts the completion tokens it is shown (EOS included). `run_grpo` gives the
    trainer no evaluation set, so every call is a training rollout."""

    def __init__(self, reward: Callable):
        self.reward = reward
        self.__name__ = getattr(reward, "__name__", "reward")
        self.tokens = 0
        self.calls = 0

    def __call__(self, completions, completion_ids=None, **kwargs):
        if completion_ids is not None:
            self.tokens += sum(len(ids) for ids in completion_ids)
        self.calls += 1
        return self.reward(completions, completion_ids=completion_ids, **kwargs)


def _curve_callback(recorder: dict, evaluate_now: Callable, counter: _CountingReward, eval_every: int):
    from transformers import TrainerCallback

    class CurveCallback(TrainerCallback):
        """Evaluates every `eval_every` steps (and before the first), and keeps TRL's per-step metrics."""

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            evaluate_now(model, 0, counter.tokens)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % eval_every == 0 or state.global_step == state.max_steps:
                evaluate_now(model, state.global_step, counter.tokens)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs is None or "frac_reward_zero_std" not in logs:
                return
            recorder["log_step"].append(state.global_step)
            recorder["frac_reward_zero_std"].append(float(logs["frac_reward_zero_std"]))
            recorder["reward"].append(float(logs.get("reward", float("nan"))))
            recorder["completion_mean_length"].append(float(logs.get("completions/mean_length", float("nan"))))
            recorder["step_time"].append(float(logs.get("step_time", float("nan"))))

    return CurveCallback()


def run_grpo(
    settings: WarmStartSettings,
    pool_settings: PoolSettings = PoolSettings(),
    *,
    learning_rate: float,
    max_steps: int = 400,
    seed: int = 0,
    prompts_per_step: int = 16,
    num_generations: int = 8,
    eval_every: int = 50,
    n_samples: int = 8,
    pool_sample: int = 256,
    reward: Callable = exact_match_reward,
    output_dir: str | None = None,
    verbose: bool = True,
    trainer_class: type | None = None,
    config_class: type | None = None,
    after_training: Callable | None = None,
    **grpo_overrides,
) -> dict:
    """Uniform GRPO (the plain `trl.GRPOTrainer`) on the task's pool from its cached warm start; returns the curves.

    `trainer_class` and `config_class` (default TRL's `GRPOTrainer` and `GRPOConfig`) run another trainer with the
    same recipe and evaluation, e.g. hf_zpd's `ZPDGRPOTrainer` (`examples/grpo_study.py`); `grpo_overrides` go to the
    config, and `after_training(trainer, curves)` may add to the curves before the trainer is dropped.

    Each step generates `prompts_per_step` x `num_generations` completions (one process, `per_device_train_batch_size`
    = their product and gradient accumulation 1, so `steps_per_generation` = 1 and `generation_batch_size` holds
    `prompts_per_step` whole groups: memo §1) at temperature 1, then takes one optimizer step.

    Returns a dict: `eval_step`, `tokens` (cumulative generated completion tokens at each eval step, EOS included),
    `pass@1`, `greedy`, `pass@1_by_difficulty`, `greedy_by_difficulty`, `mean_length`, `pool_pass@1`,
    `pool_share_zero` / `pool_share_one` / `pool_share_zero_variance` (on a fixed sample of the pool),
    `pool_transitions` (first against last eval: how many pool prompts went from out of reach / mixed / mastered to
    each), per logged step `log_step`, `frac_reward_zero_std`, `reward`, `completion_mean_length`, `step_time`;
    and `seconds_per_step` (training only, evaluation excluded), `tokens_per_step`, `eval_seconds`, `settings`.
    """
    from transformers import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    task = TASKS[settings.task]
    model, tokenizer, folder = load_warm_start(settings, verbose=verbose)
    data = build_datasets(settings, pool_settings)
    pool_eval = _pool_sample(data["pool"], pool_sample)
    # Evaluate on the difficulties the pool holds: a difficulty GRPO never draws would only dilute the overall numbers.
    levels = set(data["pool"]["difficulty"])
    eval_set = data["eval"].filter(lambda d: d in levels, input_columns="difficulty")
    counter = _CountingReward(reward)
    recorder: dict = {
        k: []
        for k in (
            "eval_step",
            "tokens",
            "pass@1",
            "greedy",
            "pass@1_by_difficulty",
            "greedy_by_difficulty",
            "mean_length",
            "pool_pass@1",
            "pool_share_zero",
            "pool_share_one",
            "pool_share_zero_variance",
            "log_step",
            "frac_reward_zero_std",
            "reward",
            "completion_mean_length",
            "step_time",
        )
    }
    recorder["eval_seconds"] = 0.0
    pool_rates: list[list[float]] = []

    def evaluate_now(policy, step: int, tokens: int):
        start = time.perf_counter()
        result = evaluate(
            policy, tokenizer, eval_set, n_samples=n_samples, seed=seed, max_new_tokens=task.max_completion_length
        )
        pool = evaluate(
            policy,
            tokenizer,
            pool_eval,
            n_samples=n_samples,
            seed=seed,
            max_new_tokens=task.max_completion_length,
            greedy=False,
        )
        recorder["eval_seconds"] += time.perf_counter() - start
        recorder["eval_step"].append(step)
        recorder["tokens"].append(tokens)
        for key in ("pass@1", "greedy", "pass@1_by_difficulty", "greedy_by_difficulty", "mean_length"):
            recorder[key].append(result[key])
        recorder["pool_pass@1"].append(pool["pass@1"])
        for key in ("share_zero", "share_one", "share_zero_variance"):
            recorder[f"pool_{key}"].append(pool[key])
        pool_rates.append(pool["pass_rates"])
        if verbose:
            by = " ".join(
                f"{d}:{v:.2f}/{g:.2f}"
                for (d, v), g in zip(
                    result["pass@1_by_difficulty"].items(), result["greedy_by_difficulty"].values(), strict=True
                )
            )
            print(
                f"[grpo] step {step:4d} tokens {tokens:8d} pass@1 {result['pass@1']:.3f} greedy "
                f"{result['greedy']:.3f} pool {pool['pass@1']:.3f} (0: {pool['share_zero']:.2f}, 1: "
                f"{pool['share_one']:.2f}) by difficulty pass/greedy {by}",
                flush=True,
            )

    with tempfile.TemporaryDirectory() as scratch:
        config = dict(
            output_dir=output_dir or scratch,
            bf16=False,
            use_cpu=True,
            report_to="none",
            gradient_checkpointing=False,
            per_device_train_batch_size=prompts_per_step * num_generations,
            gradient_accumulation_steps=1,
            num_generations=num_generations,
            max_completion_length=task.max_completion_length,
            temperature=1.0,
            learning_rate=learning_rate,
            max_steps=max_steps,
            logging_steps=1,
            save_strategy="no",
            seed=seed,
            disable_tqdm=True,
        )
        config.update(grpo_overrides)
        args = (config_class or GRPOConfig)(**config)
        assert args.generation_batch_size == prompts_per_step * num_generations, args.generation_batch_size
        model.train()
        trainer = (trainer_class or GRPOTrainer)(
            model=model,
            reward_funcs=counter,
            args=args,
            train_dataset=data["pool"],
            processing_class=tokenizer,
            callbacks=[_curve_callback(recorder, evaluate_now, counter, eval_every)],
        )
        trainer.remove_callback(PrinterCallback)  # one dict per step otherwise; the curves keep what matters
        start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - start

        if after_training is not None:
            after_training(trainer, recorder)

    recorder["pool_pass_rates"] = [list(map(float, rates)) for rates in pool_rates]
    first, last = np.array(pool_rates[0]), np.array(pool_rates[-1])
    group = lambda r: np.where(r == 0, 0, np.where(r == 1, 2, 1))  # noqa: E731  out of reach, mixed, mastered
    transitions = np.zeros((3, 3), dtype=int)
    for a, b in zip(group(first), group(last), strict=True):
        transitions[a, b] += 1
    steps = trainer.state.global_step
    recorder.update(
        pool_transitions=transitions.tolist(),
        steps=steps,
        seconds=total,
        seconds_per_step=(total - recorder["eval_seconds"]) / max(steps, 1),
        tokens_per_step=counter.tokens / max(steps, 1),
        warm_start=folder,
        settings=dict(
            warm=dataclasses.asdict(settings),
            pool=dataclasses.asdict(pool_settings),
            learning_rate=learning_rate,
            max_steps=max_steps,
            seed=seed,
            prompts_per_step=prompts_per_step,
            num_generations=num_generations,
            eval_every=eval_every,
            n_samples=n_samples,
            pool_sample=pool_sample,
            reward=getattr(reward, "__name__", str(reward)),
            grpo_overrides=grpo_overrides,
        ),
    )
    return recorder


# ---------------------------------------------------------------------------------------------------------------------
# Presets (measured; see the module docstring and `main`)


@dataclass(frozen=True)
class GRPOTask:
    """A task as the study runs it: the warm start, the pool and uniform GRPO's learning rate.

    warm (`WarmStartSettings`), pool (`PoolSettings`), learning_rate (`float`):
        The cached warm start, the GRPO pool, and the rate at which uniform GRPO was measured to gain and be stable.
    """

    warm: WarmStartSettings
    pool: PoolSettings
    learning_rate: float


# Warm start after 300 SFT steps: short strings mastered, the pass rate falling with the length, 14-16 letters (rare
# in the SFT set) out of reach. Shared by the two reverse presets, so they start from the same cached policy.
REVERSE_WARM_START = WarmStartSettings(
    task="reverse",
    sft_mix=tuple((length, 1.0 if length <= 10 else 0.3 if length <= 13 else 0.1) for length in range(2, 17)),
    corruption=0.05,
    sft_steps=300,
)

PRESETS: dict[str, GRPOTask] = {
    # Warm start after 2,000 SFT steps: one digit mastered, two digits in the middle (mid-grokking), three digits out
    # of reach; four digits (10% of the SFT set) are left out of the pool.
    "add": GRPOTask(
        WarmStartSettings(
            task="add", sft_mix=((1, 0.15), (2, 0.45), (3, 0.3), (4, 0.1)), corruption=0.05, sft_steps=2000
        ),
        PoolSettings(mix=((1, 0.04), (2, 0.66), (3, 0.3))),
        1e-4,
    ),
    "reverse": GRPOTask(
        REVERSE_WARM_START,
        PoolSettings(),
        1e-4,
    ),
    # The same warm start and rate, on a pool that wastes most of a uniform draw, as math sets do: half of it 2-3
    # letters (solved 87-94% of the time at the start), a quarter 15-16 (0.5-3%), a quarter 4-14 between.
    "reverse-skewed": GRPOTask(
        REVERSE_WARM_START,
        PoolSettings(
            mix=((2, 0.25), (3, 0.25), *((length, 0.25 / 11) for length in range(4, 15)), (15, 0.125), (16, 0.125))
        ),
        1e-4,
    ),
}


def run_preset(name: str, seed: int = 0, **kwargs) -> dict:
    """`run_grpo` on a preset: its warm start, its pool and its learning rate (`kwargs` override `run_grpo`'s)."""
    preset = PRESETS[name]
    kwargs.setdefault("learning_rate", preset.learning_rate)
    return run_grpo(preset.warm, preset.pool, seed=seed, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# CLI


def _mix(text: str | None):
    """`"1:1,2:3"` -> `((1, 1.0), (2, 3.0))`."""
    if text is None:
        return None
    return tuple((int(k), float(v)) for k, v in (item.split(":") for item in text.split(",")))


def _preset_from_args(args) -> GRPOTask:
    preset = PRESETS[args.task]
    warm = {
        name: getattr(args, name)
        for name in ("sft_steps", "sft_learning_rate", "sft_batch_size", "sft_size", "corruption", "seed")
        if getattr(args, name) is not None
    }
    if args.sft_mix is not None:
        warm["sft_mix"] = _mix(args.sft_mix)
    pool = {}
    if args.pool_size is not None:
        pool["size"] = args.pool_size
    if args.pool_mix is not None:
        pool["mix"] = _mix(args.pool_mix)
    return GRPOTask(
        preset.warm.replace(**warm),
        dataclasses.replace(preset.pool, **pool),
        args.learning_rate if args.learning_rate is not None else preset.learning_rate,
    )


def _summary(curves: dict) -> dict:
    """The numbers worth a line: start and end of each curve, the zero-variance share along the run."""
    zero = curves["frac_reward_zero_std"]
    quarters = [float(np.mean(zero[i * len(zero) // 4 : (i + 1) * len(zero) // 4])) for i in range(4)] if zero else []
    return {
        "pass@1": [round(curves["pass@1"][0], 4), round(curves["pass@1"][-1], 4)],
        "greedy": [round(curves["greedy"][0], 4), round(curves["greedy"][-1], 4)],
        "min_greedy": round(min(curves["greedy"]), 4),
        "pool_pass@1": [round(curves["pool_pass@1"][0], 4), round(curves["pool_pass@1"][-1], 4)],
        "frac_reward_zero_std_mean": round(float(np.mean(zero)), 4) if zero else None,
        "frac_reward_zero_std_quarters": [round(q, 4) for q in quarters],
        "seconds_per_step": round(curves["seconds_per_step"], 4),
        "tokens_per_step": round(curves["tokens_per_step"], 1),
        "pool_transitions": curves["pool_transitions"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "command",
        choices=["warm", "grpo", "data"],
        help="warm: build (or reuse) and evaluate the "
        "warm start; grpo: one uniform GRPO run; data: print a few rows of each set",
    )
    parser.add_argument("--task", choices=sorted(PRESETS), required=True, help="a preset (`mul` has none yet)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the study uses 1)")
    group = parser.add_argument_group("warm start (defaults: the task's preset)")
    group.add_argument("--sft_steps", type=int)
    group.add_argument("--sft_learning_rate", type=float)
    group.add_argument("--sft_batch_size", type=int)
    group.add_argument("--sft_size", type=int)
    group.add_argument("--sft_mix", help="difficulty:weight,... e.g. 1:1,2:2,3:1")
    group.add_argument("--corruption", type=float, help="share of corrupted SFT answers")
    group.add_argument("--seed", type=int, help="the policy's initialisation and the SFT order")
    group = parser.add_argument_group("GRPO (defaults: the task's preset)")
    group.add_argument("--pool_size", type=int)
    group.add_argument("--pool_mix", help="difficulty:weight,...")
    group.add_argument("--learning_rate", type=float)
    group.add_argument("--grpo_seed", type=int, default=0)
    group.add_argument("--max_steps", type=int, default=400)
    group.add_argument("--eval_every", type=int, default=50)
    group.add_argument("--n_samples", type=int, default=8, help="samples per evaluation prompt for pass@1")
    parser.add_argument("--output", help="write the result (JSON) here")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    torch.set_num_threads(args.threads)
    preset = _preset_from_args(args)

    if args.command == "data":
        for name, ds in build_datasets(preset.warm, preset.pool).items():
            print(name, len(ds), ds[:3])
        return
    if args.command == "warm":
        result = warm_start_report(preset.warm, preset.pool, n_samples=args.n_samples)
        brief = {part: {k: v for k, v in result[part].items() if k != "pass_rates"} for part in ("eval", "pool")}
        print(json.dumps({"key": result["key"], **brief}, indent=1))
    else:
        result = run_grpo(
            preset.warm,
            preset.pool,
            learning_rate=preset.learning_rate,
            max_steps=args.max_steps,
            seed=args.grpo_seed,
            eval_every=args.eval_every,
            n_samples=args.n_samples,
        )
        print(json.dumps(_summary(result)))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1:])
