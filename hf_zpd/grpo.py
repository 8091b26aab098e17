"""`ZPDGRPOTrainer` and `ZPDGRPOConfig`: TRL's `GRPOTrainer` with a pass-rate curriculum over its prompts.

The swap is one line: the arguments, datasets, reward functions, loss and metrics are TRL's (1.16). What changes is
which prompts each generation round draws: those whose next group of completions is likely to be mixed, where GRPO's
gradient is (grpo_curriculum.py says how). The curriculum's signal is the groups' rewards, observed where TRL
computes them; TRL's own trainer code is untouched.

Checked against trl 1.16.0, transformers 5.24 and accelerate 1.15. The private TRL methods overridden, each calling
TRL's own: `_get_train_sampler` (the sampler), `_generate_and_score_completions` (the index column, importance
weights), `_calculate_rewards` (the rewards, gathered over processes, by prompt), `_save_checkpoint` and
`_load_optimizer_and_scheduler` (the curriculum's state beside TRL's checkpoint files, as TRL's own
`entropy_ctrl_state.json` is).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Sampler
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

try:
    from trl import GRPOConfig, GRPOTrainer
except ImportError as error:  # pragma: no cover - the extra is documented
    raise ImportError(
        "ZPDGRPOTrainer needs TRL: `pip install 'hf_zpd[trl]'` (trl==1.16.0, the version hf_zpd is tested with)."
    ) from error

from ._io import atomic_write_bytes
from .grpo_curriculum import SELECTIONS, ZONE_SIGNALS, PromptCurriculum, RoundSchedule
from .grpo_record import PromptRecord
from .scoring import preserved_rng_and_mode

logger = logging.get_logger(__name__)

PROMPT_INDEX_COLUMN = "zpd_prompt_index"
GRPO_STATE_NAME = "zpd_grpo_state.safetensors"
GRPO_STATE_VERSION = 1


def _flag(default, help: str, choices=None):
    metadata = {"help": help} if choices is None else {"help": help, "choices": list(choices)}
    return field(default=default, metadata=metadata)


@dataclass
class GRPOCurriculumArguments:
    r"""
    The prompt curriculum's settings, on top of TRL's `GRPOConfig`. Every field is also a command-line flag through
    [`~transformers.HfArgumentParser`].

    > The zone

    zone_signal (`str`, *optional*, defaults to `"composite"`):
        How a prompt's chance of a mixed group is judged. `"composite"`: a logistic regression of the mixed outcome,
        refitted on the recent groups, on the policy's confidence and entropy at the prompt's first answer token, the
        prompt's length in tokens, and the prompt's own history (its pass-rate belief, how many groups back it, how
        long ago); the policy's features come from one forward pass over `candidates_per_round` x B candidate
        prompts per round (no generation). `"pass_rate"`: the seed's ablation A1, the prompts' pass-rate history
        alone (a prompt never drawn gets the recent share of mixed groups).
    zone_floor (`float`, *optional*, defaults to `0.05`):
        Every prompt's weight is at least this (a prompt in the zone weighs about 1): mastered prompts are revisited
        about once per 1 / floor visits of a zone prompt, so they are not forgotten, and out-of-reach ones are tried
        again. In (0, 1].
    zone_sharpness (`float`, *optional*, defaults to `1.0`):
        k: a prompt's weight is max(score ** k, zone_floor), its score the predicted chance of a mixed group. 1 draws
        in proportion to it; a larger k narrows the band to the prompts most likely to give a mixed group. At least 1.
    pass_rate_half_life (`float`, *optional*):
        Rounds after which a group's weight in a prompt's belief is halved, as the policy moves. Default: one pass
        over the prompts (len(train_dataset) / prompts per round).
    prior_strength (`float`, *optional*, defaults to `1.0`):
        A1's score: how many (decayed) groups of a prompt weigh as much as the recent share of mixed groups. It ranks
        A1's draw, the composite's candidates and the random control's weights.
    candidates_per_round (`int`, *optional*, defaults to `4`):
        `"composite"` only: the candidates scored by the forward pass, as a multiple of the prompts per round.
    prompt_selection (`str`, *optional*, defaults to `"zone"`):
        `"zone"` (the curriculum); `"random"`, its random control (the same weights permuted across the prompts
        each round); `"uniform"` (every round draws its prompts uniformly).
    importance_weighting (`bool`, *optional*, defaults to `False`):
        Weigh each prompt's advantages by (B / N) / pi_i, pi_i its chance to be drawn (self-normalised over the round,
        clipped at `max_importance_weight`), so that the objective is, in expectation, the uniform draw's.
    max_importance_weight (`float`, *optional*, defaults to `10.0`):
        The largest importance weight.
    zero_variance_filter (`bool`, *optional*, defaults to `False`):
        DAPO's dynamic sampling, after generation: the groups whose rewards did not vary are dropped and replaced by
        mixed groups from extra generations of fresh prompts (drawn uniformly), until the batch is full or
        `max_filter_generations` extra generations are spent (then the batch keeps zero-variance groups, whose
        advantage is 0, as TRL's does). It pays for the dropped generations; the curriculum's selection before
        rollout does not. Text prompts only (no tools, images or vLLM).
    max_filter_generations (`int`, *optional*, defaults to `4`):
        The most extra generations per round the filter may spend.
    replay_curriculum (`str`, *optional*):
        Draw every round as a recorded run drew it: a `zpd_grpo_curriculum.parquet`, a folder holding one (a run's
        `output_dir` or a checkpoint), or a Hub dataset repo pushed with `push_curriculum_to_hub`. The prompt dataset
        and the prompts per round must be the recorded run's.
    reward_range (`list[float]`, *optional*):
        `[lo, hi]`: the rewards' range, mapping them to a pass rate in [0, 1]. Default: learnt from the rewards seen.
        Binary rewards (two values) give the chance of a mixed group from the pass rate; other rewards from each
        prompt's share of groups whose rewards varied, so that the zone follows the reward variance of the group.
    """

    zone_signal: str = _flag(
        "composite", "'composite' (pass rates and the policy's confidence/entropy) or 'pass_rate' (A1).", ZONE_SIGNALS
    )
    zone_floor: float = _flag(0.05, "The smallest weight of a prompt (the zone weighs about 1), in (0, 1].")
    zone_sharpness: float = _flag(1.0, "k: a prompt's weight is max(score ** k, zone_floor); at least 1.")
    pass_rate_half_life: float | None = _flag(
        None, "Rounds for a group's weight to halve (default: one pass over the prompts)."
    )
    prior_strength: float = _flag(1.0, "A1: groups of a prompt that weigh as much as the recent mixed share.")
    candidates_per_round: int = _flag(4, "'composite': candidates scored per round, times the prompts per round.")
    prompt_selection: str = _flag("zone", "'zone', 'random' (its control) or 'uniform'.", SELECTIONS)
    importance_weighting: bool = _flag(False, "Weigh each prompt's advantages back to a uniform draw.")
    max_importance_weight: float = _flag(10.0, "The largest importance weight.")
    zero_variance_filter: bool = _flag(
        False, "DAPO's dynamic sampling: replace zero-variance groups after generation."
    )
    max_filter_generations: int = _flag(4, "The most extra generations per round the zero-variance filter spends.")
    replay_curriculum: str | None = _flag(None, "Draw every round as a recorded GRPO curriculum drew it.")
    reward_range: list[float] | None = field(
        default=None, metadata={"help": "[lo, hi] of the rewards (default: learnt from the rewards seen)."}
    )

    _argument_group_name = "the GRPO prompt curriculum (ZPDGRPOConfig's own fields)"

    def _validate_curriculum_fields(self) -> None:
        def fail(name: str, problem: str, fix: str) -> None:
            raise ValueError(f"ZPDGRPOConfig.{name}: {problem}. {fix}")

        if self.zone_signal not in ZONE_SIGNALS:
            fail("zone_signal", f"got {self.zone_signal!r}", f"Use one of {ZONE_SIGNALS}.")
        if self.prompt_selection not in SELECTIONS:
            fail("prompt_selection", f"got {self.prompt_selection!r}", f"Use one of {SELECTIONS}.")
        if not 0 < self.zone_floor <= 1:
            fail("zone_floor", f"must be in (0, 1], got {self.zone_floor}", "The default is 0.05.")
        if not (math.isfinite(self.zone_sharpness) and self.zone_sharpness >= 1):
            fail(
                "zone_sharpness", f"must be a finite number >= 1, got {self.zone_sharpness}", "1 draws in proportion."
            )
        if self.pass_rate_half_life is not None and not self.pass_rate_half_life > 0:
            fail("pass_rate_half_life", f"must be positive, got {self.pass_rate_half_life}", "Leave it unset.")
        if not (math.isfinite(self.prior_strength) and self.prior_strength > 0):
            fail("prior_strength", f"must be positive, got {self.prior_strength}", "The default is 1.0.")
        if isinstance(self.candidates_per_round, bool) or int(self.candidates_per_round) < 1:
            fail("candidates_per_round", f"must be at least 1, got {self.candidates_per_round}", "The default is 4.")
        if isinstance(self.max_filter_generations, bool) or int(self.max_filter_generations) < 1:
            fail(
                "max_filter_generations", f"must be at least 1, got {self.max_filter_generations}", "The default is 4."
            )
        if not self.max_importance_weight >= 1:
            fail(
                "max_importance_weight", f"must be at least 1, got {self.max_importance_weight}", "The default is 10."
            )
        if self.reward_range is not None:
            values = list(self.reward_range)
            if len(values) != 2 or not all(math.isfinite(v) for v in values) or values[0] >= values[1]:
                fail("reward_range", f"must be [lo, hi] with lo < hi, got {self.reward_range}", "E.g. 0 1.")


@dataclass
class ZPDGRPOConfig(GRPOCurriculumArguments, GRPOConfig):
    __doc__ = (
        "\n    Configuration for [`ZPDGRPOTrainer`]: every field of TRL's `GRPOConfig`, plus the prompt curriculum's"
        "\n    fields below (those of [`GRPOCurriculumArguments`]).\n"
        + GRPOCurriculumArguments.__doc__.split("\n", 3)[3]
    )

    _argument_group_name = "GRPOConfig and the GRPO prompt curriculum (ZPDGRPOConfig)"

    def __post_init__(self):
        self._validate_curriculum_fields()
        if self.num_generations is not None and self.num_generations < 2:
            raise ValueError(
                f"ZPDGRPOConfig.num_generations={self.num_generations}: a group of one completion has no reward "
                "variance, so GRPO's advantage is 0 for every prompt and there is no zone to draw from. Use 2 or more "
                "(TRL's default is 8)."
            )
        if self.use_vllm:
            raise ValueError(
                "ZPDGRPOConfig.use_vllm=True: vLLM generation (server or colocate mode) is not tested with the prompt "
                "curriculum here, so it is refused rather than risked. Generate with the model (use_vllm=False), or "
                "use TRL's GRPOTrainer for vLLM."
            )
        super().__post_init__()

    @classmethod
    def from_grpo_config(cls, args: GRPOConfig) -> ZPDGRPOConfig:
        """This config with every field of `args`, and the curriculum's defaults."""
        if isinstance(args, cls):
            return args
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init and f.name in names}
        # GRPOConfig.__post_init__ filled in both from one of them, and refuses to be given both.
        values.pop("generation_batch_size", None)
        return cls(**values)


class RoundSampler(Sampler):
    """The prompts of every round in TRL's layout: each index `num_generations` times in a row, each round's block
    `repeat_count` times (TRL's `RepeatSampler`, with the curriculum choosing the indices).

    Every process iterates the same sequence (accelerate gives each its slice). Its random choices live in the
    curriculum (seeded by round), not in an attribute named `generator`, which accelerate would replace.
    """

    def __init__(self, curriculum: PromptCurriculum, rounds_per_epoch: int, group_size: int, repeat_count: int):
        self.curriculum = curriculum
        self.rounds_per_epoch = rounds_per_epoch
        self.group_size = group_size
        self.repeat_count = repeat_count
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.rounds_per_epoch * self.curriculum.prompts_per_round * self.group_size * self.repeat_count

    def __iter__(self):
        first = self.epoch * self.rounds_per_epoch
        for round in range(first, first + self.rounds_per_epoch):
            prompts = self.curriculum.plan(round).prompts.tolist()
            for _ in range(self.repeat_count):
                for index in prompts:
                    for _ in range(self.group_size):
                        yield index


class _CurriculumCallback(TrainerCallback):
    """Sets the sampler's epoch at each epoch start (the Trainer's `set_epoch` does not reach it after a resume with
    several processes), and writes the record into `output_dir` at the end of training."""

    def __init__(self, trainer: ZPDGRPOTrainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        sampler = self.trainer._zpd_sampler
        if sampler is not None:
            steps_per_epoch = max(self.trainer._zpd_steps_per_epoch, 1)
            sampler.set_epoch(state.global_step // steps_per_epoch)

    def on_train_end(self, args, state, control, **kwargs):
        if args.should_save:
            self.trainer.save_curriculum()


class ZPDGRPOTrainer(GRPOTrainer):
    """TRL's [`GRPOTrainer`] whose generation rounds draw the prompts whose groups are likely to be mixed.

    Same arguments as `GRPOTrainer`; `args` may be a [`ZPDGRPOConfig`] or TRL's `GRPOConfig` (the curriculum's
    defaults apply). The loss, the advantages and TRL's metrics are TRL's; the `zpd/*` metrics come on top.

    Example:

    ```python
    >>> from hf_zpd import ZPDGRPOConfig, ZPDGRPOTrainer
    >>> args = ZPDGRPOConfig("out", per_device_train_batch_size=16, num_generations=8, bf16=False)  # doctest: +SKIP
    >>> trainer = ZPDGRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=prompts)  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP
    >>> trainer.curriculum.to_pandas().groupby("round").mixed.mean()  # the share of mixed groups per round  # doctest: +SKIP

    ```
    """

    _tag_names = ["trl", "grpo", "hf_zpd", "curriculum"]

    def __init__(self, model, reward_funcs=None, args=None, train_dataset=None, eval_dataset=None, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", "")
            args = ZPDGRPOConfig(f"{os.path.basename(str(name)) or 'model'}-ZPD-GRPO")
        elif not isinstance(args, ZPDGRPOConfig):
            args = ZPDGRPOConfig.from_grpo_config(args)
        train_dataset = self._indexed(train_dataset)
        self._zpd_sampler: RoundSampler | None = None
        self._zpd_steps_per_epoch = 1
        self._zpd_local_index: list[int] | None = None
        self._zpd_dataset_sketch = _dataset_sketch(train_dataset)
        super().__init__(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, **kwargs)  # fmt: skip
        self._zpd_curriculum = self._new_curriculum()
        if self.args.replay_curriculum is not None:
            record = PromptRecord.load_from_hub(self.args.replay_curriculum)
            if record.settings.get("num_prompts") != len(self.train_dataset):
                raise ValueError(
                    f"Cannot replay {self.args.replay_curriculum}: it was recorded on "
                    f"{record.settings.get('num_prompts')} prompts, but train_dataset has {len(self.train_dataset)}. "
                    "Replay it on its prompt dataset."
                )
            self._zpd_curriculum.replay(record.round_prompts(), self.args.replay_curriculum)
        self.add_callback(_CurriculumCallback(self))

    # ---- the prompts ----

    @staticmethod
    def _indexed(dataset):
        """The prompt dataset with each row's index, which travels with the prompt to the rewards."""
        import datasets

        if dataset is None:
            raise ValueError(
                "ZPDGRPOTrainer needs a train_dataset of prompts: the curriculum draws its rounds from it by index "
                "(an environment that owns the data, with no dataset, has no prompts to choose between)."
            )
        if isinstance(dataset, (torch.utils.data.IterableDataset, datasets.IterableDataset)):
            raise ValueError(
                "ZPDGRPOTrainer needs a map-style prompt dataset (a datasets.Dataset), but got an IterableDataset: the "
                "curriculum draws prompts by index and revisits them. Load it with streaming=False, or materialise "
                "it (e.g. datasets.Dataset.from_list(list(iterable)))."
            )
        if not isinstance(dataset, datasets.Dataset):
            dataset = datasets.Dataset.from_list([dict(dataset[i]) for i in range(len(dataset))])
        if PROMPT_INDEX_COLUMN in dataset.column_names:
            raise ValueError(
                f"The prompt dataset has a column named {PROMPT_INDEX_COLUMN!r}, which ZPDGRPOTrainer reserves for "
                "the prompt index: rename it."
            )
        if len(dataset) == 0:
            raise ValueError("The prompt dataset is empty.")
        return dataset.add_column(PROMPT_INDEX_COLUMN, list(range(len(dataset))))

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if PROMPT_INDEX_COLUMN not in self._signature_columns:  # survives remove_unused_columns=True
            self._signature_columns = [*self._signature_columns, PROMPT_INDEX_COLUMN]

    @property
    def _prompts_per_round(self) -> int:
        return self.args.generation_batch_size // self.num_generations

    @property
    def _repeat_count(self) -> int:
        return self.num_iterations * self.args.steps_per_generation

    def _new_curriculum(self) -> PromptCurriculum:
        args = self.args
        workers = (
            args.dataloader_num_workers * (args.dataloader_prefetch_factor or 2) if args.dataloader_num_workers else 0
        )
        schedule = RoundSchedule(
            rounds_per_epoch=max(len(self.train_dataset) // self._prompts_per_round, 1),
            repeat_count=self._repeat_count,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            worker_batches=workers,
        )
        return PromptCurriculum(
            num_prompts=len(self.train_dataset),
            prompts_per_round=self._prompts_per_round,
            group_size=self.num_generations,
            seed=args.seed,
            zone_signal=args.zone_signal,
            selection=args.prompt_selection,
            zone_floor=args.zone_floor,
            zone_sharpness=args.zone_sharpness,
            half_life=args.pass_rate_half_life,
            prior_strength=args.prior_strength,
            candidates_per_round=args.candidates_per_round,
            importance_weighting=args.importance_weighting,
            max_importance_weight=args.max_importance_weight,
            reward_range=tuple(args.reward_range) if args.reward_range is not None else None,
            schedule=schedule,
            features=self._prompt_features,
        )

    def _get_train_sampler(self, dataset=None) -> RoundSampler:
        rounds_per_epoch = len(self.train_dataset) // self._prompts_per_round
        if rounds_per_epoch < 1:
            raise ValueError(
                f"A round draws {self._prompts_per_round} prompts but the dataset has {len(self.train_dataset)}."
            )
        self._zpd_steps_per_epoch = max(
            rounds_per_epoch * self._repeat_count // self.args.gradient_accumulation_steps, 1
        )
        self._zpd_sampler = RoundSampler(
            self._zpd_curriculum, rounds_per_epoch, self.num_generations, self._repeat_count
        )
        return self._zpd_sampler

    @torch.no_grad()
    def _prompt_features(self, indices: np.ndarray) -> np.ndarray:
        """The composite's features of prompts (`POLICY_FEATURE_NAMES`): the policy's confidence (max probability) and
        entropy (divided by log V) at the first answer token, at the sampling temperature, and the prompt's length in
        tokens; one forward pass, no generation. Collective: every process scores its share of `indices` and every
        process gets all the rows."""
        indices = np.asarray(indices, dtype=np.int64)
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        share = math.ceil(indices.size / world)
        mine = indices[rank * share : (rank + 1) * share]
        device = self.accelerator.device
        rows = torch.zeros((share, 4), dtype=torch.float64, device=device)  # (position, confidence, entropy, tokens)
        rows[:, 0] = -1
        model = self.model
        if mine.size:
            prompts = [self.train_dataset[int(i)]["prompt"] for i in mine]
            prompt_ids, _, _ = self._tokenize_prompts(prompts)
            with preserved_rng_and_mode(model):
                values = []
                batch = max(self.args.per_device_train_batch_size, 1)
                for start in range(0, len(prompt_ids), batch):
                    chunk = prompt_ids[start : start + batch]
                    width = max(len(ids) for ids in chunk)
                    pad = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else 0
                    input_ids = torch.tensor([[pad] * (width - len(ids)) + list(ids) for ids in chunk], device=device)
                    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in chunk], device=device)
                    with self.accelerator.autocast():
                        logits = model(input_ids=input_ids, attention_mask=mask, logits_to_keep=1).logits[:, -1, :]
                    log_p = torch.log_softmax(logits.float() / self.temperature, dim=-1)
                    p = log_p.exp()
                    entropy = -(p * log_p).sum(dim=-1) / math.log(p.shape[-1])
                    lengths = torch.tensor([len(ids) for ids in chunk], device=device, dtype=torch.float64)
                    values.append(torch.stack([p.max(dim=-1).values.double(), entropy.double(), lengths], dim=1))
                values = torch.cat(values)
            rows[: mine.size, 0] = torch.arange(mine.size, device=device, dtype=torch.float64) + rank * share
            rows[: mine.size, 1:] = values
        if world > 1:
            rows = self.accelerator.gather(rows)
        rows = rows[rows[:, 0] >= 0].cpu().numpy()
        features = np.zeros((indices.size, 3))
        features[rows[:, 0].astype(np.int64)] = rows[:, 1:]
        return features

    # ---- the rewards ----

    def _generate_and_score_completions(self, inputs):
        # The index column travels with each row to here; it is taken out before TRL sees the rows, so that reward
        # functions and environments never receive it.
        training = self.model.training
        self._zpd_local_index = [row.pop(PROMPT_INDEX_COLUMN, None) for row in inputs]
        self._zpd_refill = None
        self._zpd_new_outcome = None
        output = super()._generate_and_score_completions(inputs)
        outcome = self._zpd_new_outcome
        if training and outcome is not None:
            if self.args.zero_variance_filter:
                output = self._filter_zero_variance(output, len(inputs))
            for key, value in self._zpd_curriculum.round_metrics(outcome).items():
                self._metrics["train"][key].append(value)
        if training and self.args.importance_weighting:
            weights = self._zpd_round_weights()
            if weights is not None:
                local = torch.tensor(
                    [weights.get(int(i), 1.0) for i in self._zpd_local_index],
                    dtype=output["advantages"].dtype,
                    device=output["advantages"].device,
                )
                output["advantages"] = output["advantages"] * (
                    local if output["advantages"].dim() == 1 else local[:, None]
                )
        return output

    def _zpd_round_weights(self) -> dict[int, float] | None:
        outcome = self._zpd_last_outcome
        if outcome is None:
            return None
        plan = self._zpd_curriculum.plans[outcome.round]
        return {int(p): float(w) for p, w in zip(plan.prompts, plan.weights, strict=True)}

    _zpd_last_outcome = None

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if not self.model.training or self._zpd_local_index is None or None in self._zpd_local_index:
            return rewards_per_func
        from accelerate.utils import gather

        device = rewards_per_func.device
        index = gather(torch.tensor(self._zpd_local_index, dtype=torch.long, device=device))
        lengths = gather(torch.tensor([len(ids) for ids in completion_ids_list], dtype=torch.float64, device=device))
        # The total reward exactly as TRL sums it ("sum_then_normalize"); a completion every function returned None
        # for is unscorable (NaN) and left out of its group, as TRL does.
        total = (rewards_per_func * self.reward_weights.to(device).unsqueeze(0)).nansum(dim=1)
        total[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
        groups = index.view(-1, self.num_generations)
        if not bool((groups == groups[:, :1]).all()):
            raise RuntimeError(
                "A generation batch's groups mix prompts: the sampler's layout (each prompt num_generations times in a "
                "row) did not reach the rewards. Do not override the train dataloader of ZPDGRPOTrainer."
            )
        observed = dict(
            prompts=groups[:, 0].cpu().numpy(),
            rewards=total.view(-1, self.num_generations).double().cpu().numpy(),
            tokens=lengths.view(-1, self.num_generations).sum(dim=1).cpu().numpy(),
            step=self.state.global_step,
        )
        if self._zpd_refill is not None:  # one of the zero-variance filter's extra generations
            self._zpd_refill_outcome = self._zpd_curriculum.observe_refill(self._zpd_refill, **observed)
            return rewards_per_func
        outcome = self._zpd_curriculum.observe(**observed)
        self._zpd_new_outcome = outcome
        if outcome is not None:
            self._zpd_last_outcome = outcome
        return rewards_per_func

    # ---- the zero-variance filter (DAPO's dynamic sampling) ----

    _FILTER_KEYS = {"prompt_ids": "left", "prompt_mask": "left", "completion_ids": "right", "completion_mask": "right",
                    "old_per_token_logps": "right", "ref_per_token_logps": "right", "advantages": None,
                    "num_items_in_batch": None}  # fmt: skip

    def _filter_zero_variance(self, output: dict, local_rows: int) -> dict:
        """Replaces the round's zero-variance groups by mixed ones from extra generations of fresh prompts.

        Every process joins every extra generation (TRL gathers rewards), so the number of extra generations is
        decided from the gathered outcomes, identically everywhere. The kept groups live on several processes, so
        every output tensor is gathered and each process takes its slice of the new batch.
        """
        unsupported = set(output) - set(self._FILTER_KEYS)
        if unsupported:
            raise ValueError(
                f"zero_variance_filter=True supports text prompts only, but the generation batch has {sorted(unsupported)} "
                "(tools, images or vLLM sampling corrections). Turn the filter off for this setup."
            )
        outcome = self._zpd_last_outcome
        size = self._prompts_per_round
        parts = [(self._gathered(output), outcome.summary.mixed)]
        have = int(outcome.summary.mixed.sum())
        attempt = 0
        while have < size and attempt < self.args.max_filter_generations:
            prompts = self._zpd_curriculum.refill_prompts(outcome.round, attempt)
            if prompts.size < size:
                break  # too few prompts left to fill a whole generation batch
            rows = np.repeat(prompts, self.num_generations)
            mine = rows[
                self.accelerator.process_index * local_rows : (self.accelerator.process_index + 1) * local_rows
            ]
            inputs = []
            for index in mine.tolist():
                row = dict(self.train_dataset[index])
                row.pop(PROMPT_INDEX_COLUMN)
                inputs.append(row)
            self._zpd_local_index = mine.tolist()
            self._zpd_refill = outcome.round
            extra = super()._generate_and_score_completions(inputs)
            self._zpd_refill = None
            mixed = self._zpd_refill_outcome.summary.mixed
            parts.append((self._gathered(extra), mixed))
            have += int(mixed.sum())
            attempt += 1
        # The batch: the mixed groups in the order generated, then (if short) the round's own zero-variance groups.
        chosen = [(p, g) for p, (_, mixed) in enumerate(parts) for g in np.flatnonzero(mixed)][:size]
        chosen += [(0, g) for g in np.flatnonzero(~parts[0][1])][: size - len(chosen)]
        return self._slice_groups([part for part, _ in parts], chosen, local_rows)

    def _gathered(self, output: dict) -> dict:
        """Every process's rows of a generation batch's tensors, in process order, padded to common lengths."""
        gathered = {}
        pad_id = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else 0
        for key, side in self._FILTER_KEYS.items():
            if key not in output or key == "num_items_in_batch":
                continue
            tensor = output[key]
            if side is not None:
                value = pad_id if key.endswith("_ids") else 0
                tensor = self.accelerator.pad_across_processes(
                    tensor, dim=1, pad_index=value, pad_first=side == "left"
                )
            gathered[key] = self.accelerator.gather(tensor) if self.accelerator.num_processes > 1 else tensor
        return gathered

    def _slice_groups(self, parts: list[dict], chosen: list[tuple[int, int]], local_rows: int) -> dict:
        """This process's rows of the batch made of the `chosen` (part, group) groups."""
        group = self.num_generations
        pad_id = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else 0
        batch = {}
        for key, side in self._FILTER_KEYS.items():
            if key not in parts[0]:
                continue
            pieces = [parts[p][key][g * group : (g + 1) * group] for p, g in chosen]
            if side is not None:
                width = max(piece.shape[1] for piece in pieces)
                value = pad_id if key.endswith("_ids") else 0
                padded = []
                for piece in pieces:
                    fill = piece.new_full((piece.shape[0], width - piece.shape[1]), value)
                    padded.append(torch.cat([fill, piece] if side == "left" else [piece, fill], dim=1))
                pieces = padded
            batch[key] = torch.cat(pieces)
        # The loss normaliser counts the new batch's completion tokens, over every process (as TRL counts them).
        batch["num_items_in_batch"] = batch["completion_mask"].sum()
        rank = self.accelerator.process_index
        local = {key: value[rank * local_rows : (rank + 1) * local_rows] for key, value in batch.items()
                 if key != "num_items_in_batch"}  # fmt: skip
        local["num_items_in_batch"] = batch["num_items_in_batch"]
        # Trim the padding columns no local row needs (TRL's batches are as wide as their longest row).
        for mask_key, keys in (("prompt_mask", ("prompt_ids", "prompt_mask")),
                               ("completion_mask", ("completion_ids", "completion_mask", "old_per_token_logps",
                                                    "ref_per_token_logps"))):  # fmt: skip
            keep = local[mask_key].sum(dim=0) > 0
            if bool(keep.any()):
                for key in keys:
                    if key in local:
                        local[key] = local[key][:, keep]
        return local

    _zpd_refill_outcome = None
    _zpd_new_outcome = None

    # ---- the record ----

    @property
    def curriculum(self) -> PromptRecord:
        """The run's record ([`PromptRecord`]): every round's prompts, what the curriculum predicted for them, and
        what their groups gave."""
        return PromptRecord.from_curriculum(self._zpd_curriculum, self._record_settings())

    def _record_settings(self) -> dict:
        args = self.args
        fields = [f.name for f in dataclasses.fields(GRPOCurriculumArguments)]
        settings = {name: getattr(args, name) for name in fields}
        settings.update(
            num_prompts=len(self.train_dataset),
            prompts_per_round=self._prompts_per_round,
            num_generations=self.num_generations,
            repeat_count=self._repeat_count,
            seed=args.seed,
            lag=self._zpd_curriculum.lag,
            half_life=self._zpd_curriculum.half_life,
            learning_rate=args.learning_rate,
            base_model=getattr(getattr(self.model, "config", None), "_name_or_path", None),
        )
        return settings

    def default_curriculum_repo_id(self) -> str:
        """The model's repo id (`hub_model_id`, else the name of `output_dir`) with `-curriculum` appended."""
        base = self.args.hub_model_id or os.path.basename(os.path.normpath(self.args.output_dir))
        return f"{base}-curriculum"

    def push_curriculum_to_hub(self, repo_id: str | None = None, token: str | None = None,
                               private: bool | None = None, license: str | None = None):  # fmt: skip
        """Writes the record locally (`output_dir`), then pushes it with a dataset card to a Hub dataset repo.

        Args follow the Trainer's conventions: `token` defaults to `hub_token`, `private` to `hub_private_repo`, and
        `repo_id` to [`default_curriculum_repo_id`].
        """
        local = self.save_curriculum()
        return self.curriculum.push_to_hub(
            repo_id or self.default_curriculum_repo_id(),
            token=token if token is not None else self.args.hub_token,
            private=private if private is not None else self.args.hub_private_repo,
            license=license,
            local_path=local,
        )

    def save_curriculum(self, path: str | None = None) -> str:
        """Writes the record (`zpd_grpo_curriculum.parquet`) atomically into `path` (default `output_dir`)."""
        return self.curriculum.save(path or self.args.output_dir)

    # ---- checkpoints ----

    def _save_checkpoint(self, model, trial):
        # Private Trainer method (transformers 5.24; TRL 1.16 overrides it too and calls it): the curriculum's state and
        # record go into the checkpoint folder first, through a temporary file and a rename.
        if self.args.should_save:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            self._save_curriculum_state(folder)
        super()._save_checkpoint(model, trial)

    def _save_curriculum_state(self, folder: str) -> None:
        from safetensors.numpy import save as save_safetensors

        arrays, meta = self._zpd_curriculum.state_arrays()
        meta.update(format_version=GRPO_STATE_VERSION, dataset_sketch=self._zpd_dataset_sketch)
        os.makedirs(folder, exist_ok=True)
        atomic_write_bytes(
            os.path.join(folder, GRPO_STATE_NAME), save_safetensors(arrays, metadata={"zpd": json.dumps(meta)})
        )
        self.curriculum.save(folder)

    def _load_optimizer_and_scheduler(self, checkpoint):
        # TRL 1.16 restores its own state here on every process, before the sampler first iterates: so does the
        # curriculum.
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self._load_curriculum_state(checkpoint)

    def _load_curriculum_state(self, checkpoint: str) -> None:
        from safetensors import safe_open

        path = os.path.join(checkpoint, GRPO_STATE_NAME)
        if not os.path.isfile(path):
            logger.warning(
                f"The checkpoint {checkpoint} has no prompt curriculum state ({GRPO_STATE_NAME}): it was not written "
                "by ZPDGRPOTrainer. Training resumes, and the curriculum starts from no observations."
            )
            return
        try:
            with safe_open(path, framework="numpy") as handle:
                meta = json.loads(handle.metadata()["zpd"])
                arrays = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
        except Exception as error:  # any parse failure means a damaged file
            raise ValueError(
                f"The prompt curriculum state {path} is unreadable ({error}): resume from an earlier checkpoint."
            ) from error
        if meta.get("format_version") != GRPO_STATE_VERSION:
            raise ValueError(
                f"The prompt curriculum state {path} has format version {meta.get('format_version')}; this hf_zpd "
                f"reads version {GRPO_STATE_VERSION}. Resume with the hf_zpd version that wrote it."
            )
        if meta.get("dataset_sketch") != self._zpd_dataset_sketch:
            raise ValueError(
                f"The checkpoint {checkpoint} was trained on another prompt dataset (size or rows differ): its "
                "curriculum's beliefs are about other prompts. Resume with the prompt dataset it was trained on, in "
                "the same order, or start a new run (a new output_dir)."
            )
        self._zpd_curriculum.load_state_arrays(arrays, meta)


def _dataset_sketch(dataset) -> list:
    """The size and a hash of three rows: enough to refuse a resume on another prompt dataset."""
    size = len(dataset)
    rows = repr([dataset[index] for index in sorted({0, size // 2, size - 1})])
    return [size, hashlib.sha256(rows.encode()).hexdigest()[:16]]
