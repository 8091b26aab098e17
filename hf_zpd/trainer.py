"""`ZPDTrainer`: the Hugging Face `Trainer` with a Zone-of-Proximal-Development curriculum.

Checked against transformers 5.24 and accelerate 1.15. The subclass stays narrow: `compute_loss` delegates to the
Trainer's own (so the loss is exactly the Trainer's) and reads per-example statistics from the outputs; the
curriculum runs from a callback at epoch boundaries; the sampler is hooked in through `_get_train_sampler`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from huggingface_hub import ModelCard
from torch.utils.data import Dataset, IterableDataset
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, has_length
from transformers.utils import logging

from .band import ZoneSelection, log_difficulty, minimum_zone_size, select_zone
from .config import ZPDConfig
from .curriculum import CurriculumState
from .fused import check_fused_support, fused_causal_lm_head
from .record import (
    RECORD_NAME,
    CurriculumRecord,
    ScoreHistory,
    detect_id_column,
    load_curriculum,
    read_example_ids,
    render_model_card_section,
)
from .sampler import ZPDSampler, samples_per_epoch
from .scoring import (
    INDEX_COLUMN,
    SCORE_COLUMNS,
    ScoreTable,
    TrainingPassScores,
    assert_same_on_every_process,
    length_grouped_batches,
    run_scoring_pass,
)
from .statistics import ExampleStatistics, align_causal_labels, competence, per_example_statistics

logger = logging.get_logger(__name__)

# The label smoother's own test for "this model shifts its labels" (see TRAINER_NOTES: `loss_type` is not reliable).
_CAUSAL_LM_CLASS_NAMES = frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())

# Layout of the per-process accumulators filled by `compute_loss` during training.
_WINDOW_FIELDS = ("loss_sum", "num_tokens", "confidence", "entropy", "competence", "num_examples", "num_nonfinite")


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The highest-numbered `checkpoint-N` folder in `output_dir` that the Trainer finished writing.

    `trainer_state.json` is the last file `Trainer._save_checkpoint` writes (transformers 5.24), so a folder with a
    readable one is complete. Incomplete folders (a run killed while saving) are skipped with a warning.
    """
    if not os.path.isdir(output_dir):
        return None
    candidates = []
    for name in os.listdir(output_dir):
        prefix, _, step = name.partition("-")
        if prefix == PREFIX_CHECKPOINT_DIR and step.isdigit() and os.path.isdir(os.path.join(output_dir, name)):
            candidates.append((int(step), os.path.join(output_dir, name)))
    for _, folder in sorted(candidates, reverse=True):
        try:
            with open(os.path.join(folder, TRAINER_STATE_NAME)) as handle:
                json.load(handle)
            return folder
        except (OSError, ValueError):
            logger.warning(f"Skipping {folder}: it has no readable {TRAINER_STATE_NAME} (a save was interrupted).")
    return None


def _dataset_sketch(dataset) -> list[float]:
    """The size and a hash of three rows: enough to catch processes that built different training sets."""
    size = len(dataset)
    rows = repr([dataset[index] for index in sorted({0, size // 2, size - 1})])
    return [float(size), float(int(hashlib.sha256(rows.encode()).hexdigest()[:12], 16))]


class _IndexedDataset(Dataset):
    """A map-style dataset of dicts, each item extended with its own index under [`INDEX_COLUMN`]."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        if not isinstance(item, Mapping):
            raise TypeError(
                f"ZPDTrainer needs dataset items that are dicts (like a datasets.Dataset row), got {type(item)}. "
                "Wrap your dataset so that __getitem__ returns a dict of model inputs and labels."
            )
        return {**item, INDEX_COLUMN: index}


class _CurriculumCallback(TrainerCallback):
    """Runs the curriculum at the Trainer's epoch boundaries. Callbacks get neither the trainer nor the accelerator,
    so this one holds its trainer."""

    def __init__(self, trainer: ZPDTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.trainer._begin_curriculum(train_dataloader)

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.trainer._begin_epoch()

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._end_optimizer_step()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.trainer._end_epoch()

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer._end_curriculum_record()


class ZPDTrainer(Trainer):
    """
    A drop-in [`~transformers.Trainer`] that trains every epoch after the first on the examples in the zone of
    proximal development: those whose difficulty lies in `[band_lower x D, band_upper x D]`, slightly harder than
    the model's current level D.

    It takes exactly the Trainer's arguments. `args` may be a [`ZPDConfig`] or a plain
    [`~transformers.TrainingArguments`] (then the ZPD defaults apply). The loss it optimises is the Trainer's,
    unchanged. At each epoch end a scoring pass (eval mode, no gradient, sharded over processes) measures every
    example's loss, confidence and entropy; the next epoch draws its fixed number of samples from the zone.

    Example:

    ```python
    >>> from transformers import AutoModelForSequenceClassification
    >>> from hf_zpd import ZPDConfig, ZPDTrainer
    >>> trainer = ZPDTrainer(model=model, args=ZPDConfig("out", num_train_epochs=3), train_dataset=train)  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP
    >>> trainer.curriculum.zones[1]  # the dataset indices that epoch 1 drew from  # doctest: +SKIP

    ```
    """

    def __init__(self, model=None, args: TrainingArguments | None = None, *trainer_args, **trainer_kwargs):
        if args is None:
            args = ZPDConfig(output_dir="trainer_output")
        elif not isinstance(args, ZPDConfig):
            args = ZPDConfig.from_training_arguments(args)
        if args.train_sampling_strategy != "random":
            raise ValueError(
                f"ZPDTrainer cannot honour train_sampling_strategy={args.train_sampling_strategy!r}: it draws each "
                "epoch from the ZPD band with its own shuffled sampler. Use train_sampling_strategy='random' (the "
                "default), or the plain Trainer for length-grouped or sequential order."
            )
        launched_processes = int(os.environ.get("WORLD_SIZE", "1"))
        if launched_processes > 1 and args.world_size == 1:
            raise ValueError(
                f"The launcher started {launched_processes} processes (WORLD_SIZE={launched_processes}), but each "
                "sees a world size of 1, so they would train independent copies that overwrite each other's "
                "checkpoints and curricula. On a machine without GPUs pass --use_cpu (TrainingArguments.use_cpu=True) "
                "so that the processes join one gloo process group."
            )
        super().__init__(model, args, *trainer_args, **trainer_kwargs)
        self.args: ZPDConfig
        self.curriculum: CurriculumState | None = None
        self._zpd_sampler: ZPDSampler | None = None
        self._zpd_loader = None
        self._zpd_lengths: np.ndarray | None = None
        self._zpd_epoch = 0
        self._zpd_resume_from: str | None = None
        self._zpd_indexed: tuple[int, Dataset] | None = None
        self._training_pass_scores: TrainingPassScores | None = None
        self._reset_training_accumulators()
        self.add_callback(_CurriculumCallback(self))
        if self.args.fused_cross_entropy:
            self._check_fused_path()

    def _check_fused_path(self) -> None:
        """Refuses `fused_cross_entropy` where it would not give the Trainer's loss, before any step runs."""
        if self.args.label_smoothing_factor > 0 or self.compute_loss_func is not None:
            raise ValueError(
                "fused_cross_entropy computes the model's own cross-entropy without the full logits, but label "
                "smoothing and compute_loss_func read those logits. Set fused_cross_entropy=False, or drop "
                "label_smoothing_factor / compute_loss_func."
            )
        check_fused_support(self.accelerator.unwrap_model(self.model))

    # ---- Data: the index column and the sampler ----

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """[`~transformers.Trainer.train`], where `resume_from_checkpoint=True` takes the last *complete* checkpoint.

        The Trainer would take the highest-numbered folder, which a run killed while saving leaves incomplete.
        """
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = last_complete_checkpoint(self.args.output_dir)
            if checkpoint is None:
                raise ValueError(f"No complete checkpoint found in output directory ({self.args.output_dir})")
        elif checkpoint is False:
            checkpoint = None
        # Resolved here, not in Trainer.train, so that the curriculum state is read from the same folder.
        self._zpd_resume_from = checkpoint
        return super().train(checkpoint, *args, **kwargs)

    def _indexed_train_dataset(self) -> Dataset:
        dataset = self.train_dataset
        if self._zpd_indexed is None or self._zpd_indexed[0] != id(dataset):
            self._zpd_indexed = (id(dataset), self._with_index_column(dataset))
        return self._zpd_indexed[1]

    @staticmethod
    def _with_index_column(dataset: Dataset) -> Dataset:
        """`dataset` with each item's own index under [`INDEX_COLUMN`], after checking that it can be scored."""
        if isinstance(dataset, IterableDataset) or isinstance(dataset, datasets.IterableDataset):
            raise ValueError(
                "ZPDTrainer needs a map-style training dataset with a length: it scores every example and draws "
                f"epochs by index, which an {type(dataset).__name__} cannot do. Load the data as a datasets.Dataset "
                "(for example `Dataset.from_generator(...)` or `load_dataset(..., streaming=False)`), or use the "
                "plain Trainer for streaming data."
            )
        if not has_length(dataset):
            raise ValueError(
                f"ZPDTrainer needs a training dataset with a length; {type(dataset).__name__} has no __len__."
            )
        if len(dataset) == 0:
            raise ValueError("The training dataset is empty: ZPDTrainer has no example to score or draw.")
        if isinstance(dataset, datasets.Dataset):
            if INDEX_COLUMN in dataset.column_names:
                raise ValueError(
                    f"The training dataset already has a column named {INDEX_COLUMN!r}, which ZPDTrainer reserves "
                    "for the example index. Rename or remove that column."
                )
            return dataset.add_column(INDEX_COLUMN, np.arange(len(dataset), dtype=np.int64))
        return _IndexedDataset(dataset)

    def get_train_dataloader(self):
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        # Same as `Trainer.get_train_dataloader` (transformers 5.24, private `_get_dataloader`), on the training set
        # with its index column added.
        loader = self._get_dataloader(
            dataset=self._indexed_train_dataset(),
            description="Training",
            batch_size=self._train_batch_size,
            sampler_fn=self._get_train_sampler,
            is_training=True,
        )
        self._zpd_loader = loader
        return loader

    def _get_train_sampler(self, train_dataset: Dataset | None = None) -> ZPDSampler:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        self._zpd_sampler = ZPDSampler(
            dataset_size=len(dataset),
            num_samples=samples_per_epoch(len(dataset), self.args.epoch_fraction),
            zone_for_epoch=self._zone_for_epoch,
            replay_fraction=self.args.replay_fraction,
            seed=self._curriculum_seed,
        )
        return self._zpd_sampler

    def _set_signature_columns_if_needed(self) -> None:
        # Keep the index column through `remove_unused_columns=True`, which would otherwise drop it both from a
        # datasets.Dataset and through RemoveColumnsCollator.
        super()._set_signature_columns_if_needed()
        if INDEX_COLUMN not in self._signature_columns:
            self._signature_columns.append(INDEX_COLUMN)

    @property
    def _curriculum_seed(self) -> int:
        return self.args.data_seed if self.args.data_seed is not None else self.args.seed

    def _zone_for_epoch(self, epoch: int) -> np.ndarray | None:
        return None if self.curriculum is None else self.curriculum.zones.get(epoch)

    # ---- The loss and the per-example statistics ----

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Returns exactly `Trainer.compute_loss`'s loss; in training it also records per-example statistics."""
        # The model would swallow the index column through **kwargs: take it out before the forward.
        index = inputs.pop(INDEX_COLUMN, None)
        # Read the labels first: with label smoothing or `compute_loss_func` the Trainer pops them from `inputs`.
        labels = self._labels_of(inputs) if model.training else None
        if model.training and self.args.fused_cross_entropy:
            # The model's lm_head and loss function are swapped for the fused ones during this forward only (the
            # backward runs later, on the gradients the fused function computed); `outputs.logits` are hidden states.
            unwrapped = self.accelerator.unwrap_model(model)
            with fused_causal_lm_head(unwrapped, chunk_size=self.args.statistics_chunk_size) as capture:
                loss, outputs = super().compute_loss(
                    model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
                )
            stats = capture.statistics
            self._record_training_statistics(stats)
            if self._training_pass_scores is not None and index is not None:
                self._training_pass_scores.add(index, self.state.global_step, stats)
            return (loss, outputs) if return_outputs else loss
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training:
            stats = self._statistics_from_outputs(model, outputs, labels)
            self._record_training_statistics(stats)
            if self._training_pass_scores is not None and index is not None:
                self._training_pass_scores.add(index, self.state.global_step, stats)
        return (loss, outputs) if return_outputs else loss

    def _labels_of(self, inputs: Mapping[str, Any]) -> torch.Tensor:
        if len(self.label_names) != 1:
            raise ValueError(
                f"ZPDTrainer scores each example by cross-entropy against one label tensor, but this model has label "
                f"names {self.label_names}. Set TrainingArguments.label_names to the one that holds the targets."
            )
        labels = inputs.get(self.label_names[0])
        if labels is None:
            raise ValueError(
                f"ZPDTrainer needs labels to score examples, but the training batch has no {self.label_names[0]!r} "
                f"(keys: {sorted(inputs)}). Add a 'labels' (or 'label') column to the dataset, or use a collator that "
                "makes them, e.g. DataCollatorForLanguageModeling(tokenizer, mlm=False) for causal LM."
            )
        return labels

    def _statistics_from_outputs(self, model, outputs, labels: torch.Tensor) -> ExampleStatistics:
        unwrapped = self.accelerator.unwrap_model(model)
        logits = outputs.get("logits") if isinstance(outputs, Mapping) else None
        if logits is None:
            keys = list(outputs.keys()) if isinstance(outputs, Mapping) else f"a {type(outputs).__name__}"
            raise ValueError(
                f"ZPDTrainer needs the model's logits to score examples, but {type(unwrapped).__name__} returned "
                f"{keys}. Use a model with a language-modelling or classification head that returns `logits` "
                "(and keep return_dict=True)."
            )
        if labels.is_floating_point():
            raise ValueError(
                "ZPDTrainer scores examples by cross-entropy against class indices, but the labels are floating point "
                "(a regression or multi-label head). Use integer class labels."
            )
        if unwrapped._get_name() in _CAUSAL_LM_CLASS_NAMES:
            logits, labels = align_causal_labels(logits, labels)
        return per_example_statistics(logits.detach(), labels, chunk_size=self.args.statistics_chunk_size)

    def _reset_training_accumulators(self) -> None:
        device = self.args.device
        # Sums since the last log (for the zpd/train_* means) and for the current optimizer step (running PPL).
        self._window = torch.zeros(len(_WINDOW_FIELDS), dtype=torch.float64, device=device)
        self._step_totals = torch.zeros(2, dtype=torch.float64, device=device)
        self._pending_steps: list[torch.Tensor] = []

    @torch.no_grad()
    def _record_training_statistics(self, stats: ExampleStatistics) -> None:
        loss, confidence, entropy = stats.loss, stats.confidence, stats.entropy
        has_targets = stats.num_tokens > 0
        finite = torch.isfinite(loss) & torch.isfinite(confidence) & torch.isfinite(entropy)
        example_competence = competence(
            loss, confidence, entropy, stats.vocab_size, self.args.effective_competence_weights
        )
        # Non-finite examples (NaN/inf logits) are left out of every sum, so they cannot poison the running PPL,
        # and counted instead. Examples without supervised tokens carry no statistic at all.
        zero = torch.zeros((), dtype=torch.float64, device=loss.device)
        step = torch.stack([torch.where(finite, stats.loss_sum, zero).sum(), stats.num_tokens[finite].sum()])
        window = torch.stack(
            [
                step[0],
                step[1],
                torch.where(finite, confidence, zero).sum(),
                torch.where(finite, entropy, zero).sum(),
                torch.where(finite, example_competence, zero).sum(),
                finite.sum().double(),
                (has_targets & ~finite).sum().double(),
            ]
        )
        self._step_totals += step.to(self._step_totals.device)
        self._window += window.to(self._window.device)

    def _end_optimizer_step(self) -> None:
        # Kept on device and folded into the moving average lazily (at log, save and epoch end), so the running
        # perplexity costs no host sync and no collective per step.
        self._pending_steps.append(self._step_totals.clone())
        self._step_totals.zero_()

    def _fold_running_loss(self) -> None:
        """Folds the steps since the last fold into the moving average, from token sums over all processes."""
        # Every process has run the same optimizer steps, so all of them take this branch together.
        if not self._pending_steps:
            return
        steps = self.accelerator.reduce(torch.stack(self._pending_steps), reduction="sum").cpu().tolist()
        self._pending_steps = []
        decay = self.args.running_ppl_decay
        for loss_sum, num_tokens in steps:
            if num_tokens == 0:
                continue
            mean_loss = loss_sum / num_tokens
            previous = self.curriculum.running_loss
            self.curriculum.running_loss = (
                mean_loss if previous is None else decay * previous + (1 - decay) * mean_loss
            )

    def _running_ppl(self) -> float:
        running_loss = self.curriculum.running_loss if self.curriculum is not None else None
        return math.exp(running_loss) if running_loss is not None else math.nan

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        # Training logs (they carry "loss") get the running PPL and the means of the per-example statistics since
        # the last log, averaged over all processes.
        if "loss" in logs and self.curriculum is not None:
            self._fold_running_loss()
            window = self.accelerator.reduce(self._window.clone(), reduction="sum").cpu().tolist()
            self._window.zero_()
            totals = dict(zip(_WINDOW_FIELDS, window, strict=True))
            logs["zpd/running_ppl"] = self._running_ppl()
            if totals["num_tokens"] > 0:
                logs["zpd/train_loss"] = totals["loss_sum"] / totals["num_tokens"]
            if totals["num_examples"] > 0:
                for name in ("confidence", "entropy", "competence"):
                    logs[f"zpd/train_{name}"] = totals[name] / totals["num_examples"]
            logs["zpd/train_nonfinite"] = totals["num_nonfinite"]
        super().log(logs, *args, **kwargs)

    # ---- The curriculum at epoch boundaries ----

    def _begin_curriculum(self, train_dataloader) -> None:
        dataset_size = len(self.train_dataset)
        self._reset_training_accumulators()
        self.curriculum = None
        if self._zpd_resume_from is not None:
            self.curriculum = CurriculumState.load(self._zpd_resume_from, dataset_size)
            if self.curriculum is None:
                logger.warning(
                    f"The checkpoint {self._zpd_resume_from} has no curriculum state (it was not written by "
                    "ZPDTrainer). Training resumes, and the pool is scored with the restored model at the start of "
                    "the next epoch that needs a zone."
                )
        if self.curriculum is None:
            self.curriculum = CurriculumState(dataset_size=dataset_size)
        self._training_pass_scores = None
        if self.args.score_source == "training_pass":
            self._training_pass_scores = TrainingPassScores(dataset_size)
            if self.curriculum.training_pass_scores is not None:  # restored from the checkpoint
                table, step = self.curriculum.training_pass_scores
                self._training_pass_scores.table, self._training_pass_scores.step = table, step
        assert_same_on_every_process(_dataset_sketch(self.train_dataset), "training set", self.accelerator)
        # The epoch to resume in, by the Trainer's own formula (`_init_training_state`).
        num_batches = len(train_dataloader)
        accumulation = self.args.gradient_accumulation_steps
        steps_per_epoch = max(num_batches // accumulation + int(num_batches % accumulation > 0), 1)
        self._zpd_epoch = self.state.global_step // steps_per_epoch
        self._begin_curriculum_record()

    def _begin_epoch(self) -> None:
        epoch = self._zpd_epoch
        if epoch not in self.curriculum.zones and (epoch > 0 or self.args.score_before_training):
            # Normally the zone was chosen at the previous epoch's end. It is missing after a resume from a
            # checkpoint saved before that (a step save on an epoch's last step), and before the first epoch.
            self._choose_zone(epoch)
        self._zpd_sampler.set_epoch(epoch)

    def _end_epoch(self) -> None:
        self._fold_running_loss()
        next_epoch = self._zpd_epoch + 1
        self._zpd_epoch = next_epoch
        more_to_train = next_epoch < self.state.num_train_epochs and self.state.global_step < self.state.max_steps
        if more_to_train and next_epoch not in self.curriculum.zones:
            self._choose_zone(next_epoch)

    def _is_scoring_boundary(self, epoch: int) -> bool:
        """Scoring passes run before epoch `first` and every `rescore_every` epochs after it."""
        first = 0 if self.args.score_before_training else 1
        return epoch >= first and (epoch - first) % self.args.rescore_every == 0

    def _choose_zone(self, epoch: int) -> None:
        curriculum = self.curriculum
        rescored = self._is_scoring_boundary(epoch) or curriculum.latest_scores is None
        if rescored:
            if not self._is_scoring_boundary(epoch):
                logger.warning(f"No scores to reuse for epoch {epoch}: scoring the pool now.")
            table, seconds = self._scores_for_zone(epoch)
            progress = self._learning_progress(curriculum.latest_scores, table, curriculum.zones.get(epoch - 1))
            curriculum.previous_scores = curriculum.latest_scores
            curriculum.latest_scores, curriculum.latest_scores_epoch = table, epoch
        table = curriculum.latest_scores
        pool = np.flatnonzero(~np.isnan(table.num_tokens))
        selection = self._select(table, pool)
        curriculum.zones[epoch] = pool[selection.indices]
        metrics = self._selection_metrics(epoch, table, pool, selection)
        metrics["zpd/rescored"] = float(rescored)
        if rescored:
            metrics["zpd/scoring_seconds"] = seconds
            metrics.update(progress)
        curriculum.epoch_metrics[epoch] = metrics
        self._zpd_history.remember(epoch, curriculum.latest_scores_epoch, curriculum.latest_scores)
        self.log(dict(metrics))

    def _scores_for_zone(self, epoch: int) -> tuple[ScoreTable, float]:
        """The scores behind epoch `epoch`'s zone and the seconds they took: a scoring pass, or the training passes'
        statistics since the last zone laid over the latest scores (`score_source="training_pass"`)."""
        source = self._training_pass_scores
        if source is None:
            return self._score_pool(epoch)
        start = time.perf_counter()
        source.merge(self.accelerator)
        if source.num_scored() == 0:  # nothing trained yet (score_before_training): a real pass
            return self._score_pool(epoch)
        latest = self.curriculum.latest_scores
        table = ScoreTable.empty(len(self.train_dataset)) if latest is None else latest.copy()
        fresh = ~np.isnan(source.step)
        for column in SCORE_COLUMNS:
            getattr(table, column)[fresh] = getattr(source.table, column)[fresh]
        table.vocab_size = source.table.vocab_size
        source.clear()
        return table, time.perf_counter() - start

    def _select(self, table: ScoreTable, pool: np.ndarray) -> ZoneSelection:
        weights = self.args.effective_competence_weights
        log_d = log_difficulty(table.competence(weights)[pool], table.vocab_size)
        valid = table.finite()[pool]
        if not valid.any():
            no_targets = int((table.num_tokens[pool] == 0).sum())
            raise RuntimeError(
                f"None of the {pool.size} scored examples has finite statistics ({no_targets} have no supervised "
                f"token, the rest gave NaN or inf logits). If the labels are all -100, check the collator and the "
                "label column; if the model diverged, lower the learning rate, set max_grad_norm, or use bf16 "
                "instead of fp16. The last checkpoint is intact."
            )
        min_size = minimum_zone_size(
            pool.size, self.args.min_zone_fraction, self.get_total_train_batch_size(self.args)
        )
        selection = select_zone(log_d, self.args.band_lower, self.args.band_upper, min_size, valid=valid)
        if selection.num_widened:
            logger.info(
                f"The ZPD band held {selection.num_in_band} of {pool.size} examples, fewer than the minimum "
                f"{min_size}: widened by the {selection.num_widened} examples nearest to it (zpd/num_widened)."
            )
        return selection

    def _selection_metrics(self, epoch: int, table: ScoreTable, pool: np.ndarray, selection: ZoneSelection):
        weights = self.args.effective_competence_weights
        finite = table.finite()
        example_competence = table.competence(weights)
        no_targets = table.num_tokens[pool] == 0
        metrics = {
            "zpd/epoch": float(epoch),
            "zpd/ppl": float(np.exp(table.loss[pool][finite[pool]].mean())),
            "zpd/level": selection.level,
            "zpd/band_lower": selection.band_lower,
            "zpd/band_upper": selection.band_upper,
            "zpd/zone_fraction": selection.zone_fraction,
            "zpd/num_scored": float(pool.size),
            "zpd/num_in_band": float(selection.num_in_band),
            "zpd/num_selected": float(selection.indices.size),
            "zpd/num_widened": float(selection.num_widened),
            "zpd/num_nonfinite": float((~finite[pool] & ~no_targets).sum()),
            "zpd/num_no_targets": float(no_targets.sum()),
        }
        if self.curriculum.running_loss is not None:  # none before the first training step
            metrics["zpd/running_ppl"] = self._running_ppl()
        groups = {"pool": pool[finite[pool]], "selected": pool[selection.indices]}
        for group, members in groups.items():
            for name, values in (
                ("loss", table.loss),
                ("confidence", table.confidence),
                ("entropy", table.entropy),
                ("competence", example_competence),
            ):
                metrics[f"zpd/{group}_{name}"] = float(values[members].mean())
        return metrics

    @staticmethod
    def _learning_progress(before: ScoreTable | None, after: ScoreTable, zone: np.ndarray | None) -> dict[str, float]:
        """How much the loss of the zone that was trained on fell, against the rest of the pool (the hit rate)."""
        if before is None or zone is None:
            return {}
        both = before.finite() & after.finite()
        selected = np.zeros(len(after), dtype=bool)
        selected[zone] = True
        drop = before.loss - after.loss
        in_zone, others = drop[both & selected], drop[both & ~selected]
        if in_zone.size == 0 or others.size == 0:
            return {}
        return {
            "zpd/selected_loss_drop": float(in_zone.mean()),
            "zpd/other_loss_drop": float(others.mean()),
            "zpd/hit_rate": float((in_zone > others.mean()).mean()),
        }

    # ---- The scoring pass ----

    def _pool_indices(self, epoch: int) -> np.ndarray:
        size = len(self.train_dataset)
        pool_size = self.args.scoring_pool_size
        if pool_size is None or pool_size >= size:
            return np.arange(size, dtype=np.int64)
        rng = np.random.default_rng([self._curriculum_seed, epoch, 1])
        return np.sort(rng.choice(size, size=pool_size, replace=False)).astype(np.int64)

    def _example_lengths(self, dataset) -> np.ndarray | None:
        # The training set's lengths, read once per run.
        if self._zpd_lengths is None or len(self._zpd_lengths) != len(dataset):
            self._zpd_lengths = self._lengths_of(dataset)
        return self._zpd_lengths

    def _lengths_of(self, dataset) -> np.ndarray | None:
        """Each example's length, from `length_column_name` or the first model input; `None` if unknown."""
        if not isinstance(dataset, datasets.Dataset):
            return None
        names = [self.args.length_column_name]
        if self.processing_class is not None and getattr(self.processing_class, "model_input_names", None):
            names.append(self.processing_class.model_input_names[0])
        names.append("input_ids")
        for name in names:
            if name in dataset.column_names:
                column = dataset.with_format(None)[name]
                lengths = column if name == self.args.length_column_name else [len(row) for row in column]
                return np.asarray(lengths, dtype=np.int64)
        return None

    def _forward_statistics(self, model, inputs: dict[str, Any]) -> ExampleStatistics:
        inputs = self._prepare_inputs(inputs)
        labels = self._labels_of(inputs)
        unwrapped = self.accelerator.unwrap_model(model)
        model_inputs = {key: value for key, value in inputs.items() if key not in self.label_names}
        if getattr(getattr(unwrapped, "config", None), "is_encoder_decoder", False):
            if "decoder_input_ids" not in model_inputs:
                if hasattr(unwrapped, "prepare_decoder_input_ids_from_labels"):
                    model_inputs["decoder_input_ids"] = unwrapped.prepare_decoder_input_ids_from_labels(labels=labels)
                else:  # the model builds its decoder inputs from the labels
                    model_inputs[self.label_names[0]] = labels
        # Without labels the model computes no loss, which for causal LMs would upcast the full logits to fp32.
        outputs = model(**model_inputs)
        return self._statistics_from_outputs(model, outputs, labels)

    def _score_pool(self, epoch: int) -> tuple[ScoreTable, float]:
        loader = self._zpd_loader
        pool = self._pool_indices(epoch)
        batch_size = self.args.scoring_batch_size or self.args.per_device_eval_batch_size
        batches = length_grouped_batches(pool, self._example_lengths(loader.dataset), batch_size)
        return run_scoring_pass(
            model=self.model_wrapped,
            dataset=loader.dataset,
            batches=batches,
            collate_fn=loader.collate_fn,
            forward_statistics=self._forward_statistics,
            accelerator=self.accelerator,
            num_examples=len(self.train_dataset),
            num_workers=self.args.dataloader_num_workers,
            show_progress=not self.args.disable_tqdm,
        )

    def _model_for_inference(self) -> torch.nn.Module:
        """The model as `evaluate()` runs it. Outside `train()` the accelerator has not prepared it yet, and without
        that its forward has no mixed-precision autocast (and, under DeepSpeed or FSDP, no engine)."""
        # Mirrors the preparation at the top of the private Trainer.evaluation_loop (checked against
        # transformers 5.24); the public evaluate() cannot be reused because it computes no per-example statistics.
        if self.is_deepspeed_enabled and self.deepspeed is None:
            from transformers.integrations.deepspeed import deepspeed_init

            deepspeed_init(self, num_training_steps=0, inference=True)
        model = self._wrap_model(self.model, training=False)
        if len(self.accelerator._models) == 0 and model is self.model:
            sharded = self.is_deepspeed_enabled or (self.is_fsdp_enabled and not self.args.torch_compile)
            model = (
                self.accelerator.prepare(model)
                if sharded
                else self.accelerator.prepare_model(model, evaluation_mode=True)
            )
            if self.is_fsdp_enabled:
                self.model = model
            if model is not self.model:
                self.model_wrapped = model
            if self.is_deepspeed_enabled:
                self.deepspeed = self.model_wrapped
        return model

    def score_dataset(self, dataset: Dataset | None = None, id_column: str | None = None) -> datasets.Dataset:
        """Scores every example of `dataset` with the current model, as the scoring pass does, outside training.

        The pass runs on every process (launch it with `accelerate launch` to shard it) in eval mode without
        gradient, under the mixed-precision setting (`bf16`/`fp16`) as `evaluate()` runs, in length-grouped batches of
        `scoring_batch_size`, and every process returns the same table.

        Args:
            dataset (`torch.utils.data.Dataset`, *optional*, defaults to `train_dataset`):
                A map-style dataset of model inputs with labels, prepared like the training set.
            id_column (`str`, *optional*):
                A column of stable example ids to copy into the result; `None` detects `id`, `idx`, `example_id` or
                `guid`.

        Returns:
            `datasets.Dataset`: one row per example in dataset order, with `zpd_example_index`, the ids (if any),
            `loss`, `confidence`, `entropy`, `competence` and `difficulty` (from `difficulty_mode`; METHOD.md) and
            `num_tokens`. Examples without supervised tokens have NaN statistics and `num_tokens` 0.
        """
        dataset = dataset if dataset is not None else self.train_dataset
        if dataset is None:
            raise ValueError("score_dataset needs a dataset: pass one, or give the trainer a train_dataset.")
        indexed = self._with_index_column(dataset)
        loader = self._get_dataloader(
            dataset=indexed, description="Scoring", batch_size=1, sampler_fn=None, is_training=False
        )
        lengths = self._lengths_of(loader.dataset)
        batch_size = self.args.scoring_batch_size or self.args.per_device_eval_batch_size
        table, _ = run_scoring_pass(
            model=self._model_for_inference(),
            dataset=loader.dataset,
            batches=length_grouped_batches(np.arange(len(dataset)), lengths, batch_size),
            collate_fn=loader.collate_fn,
            forward_statistics=self._forward_statistics,
            accelerator=self.accelerator,
            num_examples=len(dataset),
            num_workers=self.args.dataloader_num_workers,
            show_progress=not self.args.disable_tqdm,
        )
        example_competence = table.competence(self.args.effective_competence_weights)
        columns = {"zpd_example_index": np.arange(len(dataset), dtype=np.int64)}
        column = detect_id_column(dataset, id_column)
        if column is not None:
            columns[column] = read_example_ids(dataset, column)
        columns.update(
            loss=table.loss,
            confidence=table.confidence,
            entropy=table.entropy,
            competence=example_competence,
            difficulty=np.exp(log_difficulty(example_competence, table.vocab_size)),
            num_tokens=table.num_tokens.astype(np.int64),
        )
        return datasets.Dataset.from_dict(columns)

    # ---- Checkpoints ----

    def _save_checkpoint(self, model, trial) -> None:
        # Private Trainer method (checked against transformers 5.24): the one place every checkpoint passes
        # through, the just-in-time path included (which skips `on_save`). The curriculum state goes in first and
        # atomically, so a checkpoint folder with model weights always has the state that matches them.
        if self.curriculum is not None:
            self._fold_running_loss()
            if self._training_pass_scores is not None:  # collective; the merged table goes into the checkpoint
                self._training_pass_scores.merge(self.accelerator)
                scores = self._training_pass_scores
                self.curriculum.training_pass_scores = (scores.table, scores.step)
            if self.args.should_save:
                folder = os.path.join(
                    self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
                )
                self.curriculum.save(folder)
                self._save_curriculum_record(folder)
        super()._save_checkpoint(model, trial)

    # ---- The curriculum as data ----
    # The record (hf_zpd/record.py) is built on demand from `self.curriculum` (zones, epoch metrics) and
    # `self._zpd_history` (every scoring pass, remembered by `_choose_zone`), and written as `zpd_curriculum.parquet`
    # into each checkpoint (`_save_checkpoint`) and into output_dir at the end of training (`on_train_end`).

    curriculum_id_column: str | None = None
    """The training set's column of stable example ids stored in the record; `None` detects a column named `id`,
    `idx`, `example_id` or `guid`. Set it on the trainer before `train()` to name another."""

    _zpd_history: ScoreHistory | None = None
    _zpd_replayed: CurriculumRecord | None = None
    _zpd_curriculum_repo_id: str | None = None

    def curriculum_record(self, id_column: str | None = None) -> CurriculumRecord:
        """The run's curriculum so far as a [`CurriculumRecord`]: every zone, the scores behind it, the settings.

        Args:
            id_column (`str`, *optional*): the column of example ids; defaults to `curriculum_id_column`, then to
                the first of `id`, `idx`, `example_id`, `guid` in the training set.
        """
        if self.curriculum is None:
            raise ValueError(
                "This trainer has no curriculum yet: call train() first, or read a saved one with "
                "hf_zpd.load_curriculum(path_or_repo_id)."
            )
        if self._zpd_replayed is not None:
            settings = dict(self._zpd_replayed.settings, replayed_from=self.args.replay_curriculum)
        else:
            settings = self._record_settings()
        column = detect_id_column(self.train_dataset, id_column or self.curriculum_id_column)
        return CurriculumRecord(
            settings=settings,
            zones=dict(self.curriculum.zones),
            history=self._zpd_history if self._zpd_history is not None else ScoreHistory(),
            epoch_metrics={epoch: dict(metrics) for epoch, metrics in self.curriculum.epoch_metrics.items()},
            example_ids=read_example_ids(self.train_dataset, column) if column is not None else None,
            id_column=column,
        )

    def save_curriculum(self, path: str | None = None, id_column: str | None = None) -> str:
        """Writes the curriculum record (atomically) and returns its path; only the main process writes.

        Args:
            path (`str`, *optional*, defaults to `args.output_dir`):
                A folder (it gets `zpd_curriculum.parquet`) or a file name ending in `.parquet`.
            id_column (`str`, *optional*): see [`~ZPDTrainer.curriculum_record`].
        """
        path = os.fspath(path if path is not None else self.args.output_dir)
        record = self.curriculum_record(id_column)
        if not path.endswith(".parquet"):
            path = os.path.join(path, RECORD_NAME)
        if self.args.should_save:
            record.save(path)
        return path

    def curated_dataset(self, epoch: int | None = None, id_column: str | None = None) -> datasets.Dataset:
        """The training examples `epoch` selected (all epochs' when `None`) with their scores, as a `datasets.Dataset`.

        The examples keep their own columns and gain `zpd_epoch`, `zpd_example_index`, `zpd_in_band`, `zpd_loss`,
        `zpd_confidence`, `zpd_entropy`, `zpd_competence`, `zpd_difficulty` and `zpd_num_tokens`; `save_to_disk`,
        `push_to_hub` and `load_dataset` read it back like any dataset.
        """
        return self.curriculum_record(id_column).curated_dataset(self.train_dataset, epoch)

    def default_curriculum_repo_id(self) -> str:
        """The model's repo id, derived as `Trainer.init_hf_repo` does (transformers 5.24), plus `-curriculum`."""
        model_repo = self.hub_model_id or self.args.hub_model_id or Path(self.args.output_dir).absolute().name
        return f"{model_repo}-curriculum"

    def curriculum_card(self, repo_id: str | None = None, license: str | None = None, id_column: str | None = None):
        """The dataset card (`huggingface_hub.DatasetCard`) that [`~ZPDTrainer.push_curriculum_to_hub`] pushes."""
        return self.curriculum_record(id_column).card(
            repo_id or self.default_curriculum_repo_id(), license=license, model_repo_id=self.hub_model_id
        )

    def push_curriculum_to_hub(
        self,
        repo_id: str | None = None,
        token: str | None = None,
        private: bool | None = None,
        revision: str | None = None,
        commit_message: str = "Upload ZPD curriculum",
        license: str | None = None,
        id_column: str | None = None,
    ):
        """Pushes the curriculum record and its dataset card to a Hub dataset repo; returns the `CommitInfo`.

        The record is first written to `args.output_dir` (the local copy, kept if the push fails). Only the main
        process pushes; the others return `None`.

        Args:
            repo_id (`str`, *optional*):
                Defaults to the model's repo id (`hub_model_id`, else the name of `output_dir`, as the Trainer
                derives it) with the suffix `-curriculum`.
            token (`str`, *optional*): defaults to `args.hub_token`, then to the logged-in token.
            private (`bool`, *optional*): defaults to `args.hub_private_repo`.
            revision (`str`, *optional*): the branch to commit to.
            commit_message (`str`, *optional*): the commit's title.
            license (`str`, *optional*): the licence written into the card's metadata (e.g. the training data's).
            id_column (`str`, *optional*): see [`~ZPDTrainer.curriculum_record`].

        Raises:
            `PermissionError`: the Hub refused the write (no token, or a read-only one).
            `ConnectionError`: the Hub could not be reached, or offline mode is on.
        """
        if not self.is_world_process_zero():
            return None
        record = self.curriculum_record(id_column)
        local_path = record.save(self.args.output_dir)
        commit = record.push_to_hub(
            repo_id or self.default_curriculum_repo_id(),
            token=token if token is not None else self.args.hub_token,
            private=private if private is not None else self.args.hub_private_repo,
            revision=revision,
            commit_message=commit_message,
            license=license,
            model_repo_id=self.hub_model_id,
            local_path=local_path,
        )
        self._zpd_curriculum_repo_id = commit.repo_url.repo_id
        logger.info(f"Pushed the curriculum to the dataset repo {self._zpd_curriculum_repo_id}.")
        return commit

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs,
    ):
        """[`~transformers.Trainer.push_to_hub`]; with `args.push_to_hub=True` the curriculum goes to its own dataset
        repo ([`~ZPDTrainer.push_curriculum_to_hub`]) first, so that the model card can link it."""
        # Same signature as Trainer.push_to_hub (transformers 5.24), which saves the model, writes the card through
        # `create_model_card` and uploads output_dir (the record file included, since train() wrote it there).
        if self.args.push_to_hub and self.curriculum is not None and self.is_world_process_zero():
            self.push_curriculum_to_hub(token=token, private=private, license=kwargs.get("license"))
        with warnings.catch_warnings():
            # huggingface_hub warns about "a data file in a model repository" for the record in output_dir: the copy
            # beside the weights is intended.
            warnings.filterwarnings(
                "ignore", message=rf"It seems that you are about to commit a data file \({re.escape(RECORD_NAME)}\)"
            )
            return super().push_to_hub(commit_message, blocking, token, revision, private, **kwargs)

    def create_model_card(self, *args, **kwargs) -> None:
        """[`~transformers.Trainer.create_model_card`], plus a curriculum section and the `hf_zpd` tags."""
        super().create_model_card(*args, **kwargs)
        if not self.is_world_process_zero() or self.curriculum is None:
            return
        path = os.path.join(self.args.output_dir, "README.md")
        card = render_model_card_section(ModelCard.load(path), self.curriculum_record(), self._zpd_curriculum_repo_id)
        card.save(path)

    def _record_settings(self) -> dict[str, Any]:
        args, dataset = self.args, self.train_dataset
        config = getattr(self.model, "config", None)
        info = getattr(dataset, "info", None)
        return {
            "dataset_size": len(dataset),
            "num_samples_per_epoch": samples_per_epoch(len(dataset), args.epoch_fraction),
            "epoch_fraction": args.epoch_fraction,
            "replay_fraction": args.replay_fraction,
            "seed": self._curriculum_seed,
            "score_before_training": args.score_before_training,
            "band_lower": args.band_lower,
            "band_upper": args.band_upper,
            "difficulty_mode": args.difficulty_mode,
            "competence_weights": list(args.effective_competence_weights),
            "min_zone_fraction": args.min_zone_fraction,
            "global_batch_size": self.get_total_train_batch_size(args),
            "rescore_every": args.rescore_every,
            "scoring_pool_size": args.scoring_pool_size,
            "num_train_epochs": self.state.num_train_epochs or args.num_train_epochs,
            "base_model": getattr(config, "_name_or_path", None) or None,
            "source_dataset": getattr(info, "dataset_name", None) or None,
        }

    def _begin_curriculum_record(self) -> None:
        """At train start: the score history (restored on resume), and with `replay_curriculum` the recorded zones."""
        self._zpd_history, self._zpd_replayed = ScoreHistory(), None
        if self._zpd_resume_from is not None:
            # The checkpoint's record holds the scoring passes before it; a checkpoint without one (older, or of the
            # plain Trainer) resumes with the earlier epochs' selection only (their scores are left NaN).
            path = os.path.join(self._zpd_resume_from, RECORD_NAME)
            if os.path.isfile(path):
                self._zpd_history = CurriculumRecord.load(path).history
        if self.args.replay_curriculum is None:
            return
        record = load_curriculum(self.args.replay_curriculum)
        first = 0 if self.args.score_before_training else 1
        record.check_replay(
            dataset_size=len(self.train_dataset),
            example_ids=lambda column: read_example_ids(self.train_dataset, column),
            settings={
                "epoch_fraction": self.args.epoch_fraction,
                "replay_fraction": self.args.replay_fraction,
                "seed": self._curriculum_seed,
                "score_before_training": self.args.score_before_training,
            },
            epochs=list(range(first, self.state.num_train_epochs)),
        )
        for epoch, zone in self.curriculum.zones.items():  # restored from a checkpoint of an earlier replay
            if epoch in record.zones and not np.array_equal(zone, record.zones[epoch]):
                raise ValueError(
                    f"The checkpoint {self._zpd_resume_from} drew epoch {epoch} from another zone than the replayed "
                    f"curriculum {record.source}: resume it with the replay_curriculum it was trained with."
                )
        # Every epoch's zone is known up front, so `_begin_epoch` and `_end_epoch` never call `_choose_zone`: no
        # scoring pass runs, and the draws are those of the recorded run.
        self.curriculum.zones = {epoch: zone.copy() for epoch, zone in record.zones.items()}
        self.curriculum.epoch_metrics = {epoch: dict(metrics) for epoch, metrics in record.epoch_metrics.items()}
        self._zpd_history, self._zpd_replayed = record.history, record
        logger.info(f"Replaying the curriculum {record.source}: epochs {sorted(record.zones)} draw from its zones.")

    def _save_curriculum_record(self, folder: str) -> None:
        self.curriculum_record().save(folder)

    def _end_curriculum_record(self) -> None:
        if self.curriculum is not None and self.args.should_save:
            self.curriculum_record().save(self.args.output_dir)
