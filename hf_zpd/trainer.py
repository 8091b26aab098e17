"""`ZPDTrainer`: the Hugging Face `Trainer` with a Zone-of-Proximal-Development curriculum.

Checked against transformers 5.24 and accelerate 1.15. The curriculum lives in [`ZPDTrainerMixin`], so that the same
code extends the Trainer (`ZPDTrainer`, here) and TRL's `SFTTrainer` (`ZPDSFTTrainer`, in sft.py). The subclass
stays narrow: `compute_loss` delegates to the parent's own (so the loss is exactly the parent's) and reads
per-example statistics from the same forward; the curriculum runs from a callback at epoch boundaries; the sampler
is hooked in through `_get_train_sampler`.

Epochs are numbered as the Trainer logs them: the first epoch is epoch 1.
"""

from __future__ import annotations

import copy
import math
import os
import re
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from .alignment import SHIFTED, alignment_from_structure, base_model, decide_alignment, model_class_name
from .band import log_difficulty
from .budget import EpochSizes, epoch_sizes
from .cards import MODEL_TAGS, dataset_display_name, model_display_name, with_curriculum_section
from .config import ZPDArguments, ZPDConfig
from .curriculum import Curriculum
from .fused import check_fused_support, fused_causal_lm_head, fused_head_setting
from .hub import load_curriculum, push_curriculum
from .indexing import INDEX_COLUMN, IndexKeepingCollator, with_index_column
from .monitor import TrainingMonitor
from .record import RECORD_NAME, CurriculumRecord, class_labels, detect_id_column, read_example_ids
from .reference import check_reference_settings, read_reference_scores
from .sampler import ZPDSampler, uniform_plan
from .scoring import (
    ScoreTable,
    assert_same_on_every_process,
    dataset_sketch,
    example_lengths,
    length_grouped_batches,
    run_scoring_pass,
)
from .selection import EpochPlan
from .state import TrainingState, last_complete_checkpoint
from .statistics import ExampleStatistics, align_causal_labels, per_example_statistics
from .weighting import token_selector, weighted_loss

logger = logging.get_logger(__name__)

# The label alignment agreed by every process at the first training batch, as a number for a gather.
_ALIGNMENT_CODES = {None: 0.0, SHIFTED: 1.0, "aligned": 2.0}


class _CurriculumCallback(TrainerCallback):
    """Runs the curriculum at the Trainer's epoch boundaries. Callbacks get neither the trainer nor the accelerator,
    so this one holds its trainer."""

    def __init__(self, trainer: ZPDTrainerMixin):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.trainer._begin_curriculum(train_dataloader)

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.trainer._begin_epoch()

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._zpd_monitor.end_step()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.trainer._end_epoch()

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer._end_curriculum()


class ZPDTrainerMixin:
    """The ZPD curriculum for a subclass of [`~transformers.Trainer`]: see [`ZPDTrainer`].

    A class using it lists the mixin first (`class ZPDTrainer(ZPDTrainerMixin, Trainer)`) and sets `config_class`
    to its config, a subclass of [`ZPDArguments`] and of its parent's arguments.
    """

    config_class: type = ZPDConfig
    curriculum_class: type = Curriculum
    """The [`Curriculum`] that plans the epochs; a subclass can change how an epoch is composed (the study's random
    control does)."""
    curriculum_id_column: str | None = None
    """The training set's column of stable example ids stored in the record; `None` detects a column named `id`,
    `idx`, `example_id` or `guid`. Set it on the trainer before `train()` to name another."""

    def __init__(
        self, model=None, args: TrainingArguments | None = None, *trainer_args, reference_model=None, **trainer_kwargs
    ):
        if args is None:
            args = self.config_class(output_dir="trainer_output")
        elif not isinstance(args, self.config_class):
            args = self.config_class.from_training_arguments(args)
        if args.train_sampling_strategy != "random":
            raise ValueError(
                f"{type(self).__name__} cannot honour train_sampling_strategy={args.train_sampling_strategy!r}: it "
                "draws each epoch from the ZPD composition with its own shuffled sampler. Use "
                "train_sampling_strategy='random' (the default), or the plain Trainer for length-grouped or sequential "
                "order."
            )
        launched_processes = int(os.environ.get("WORLD_SIZE", "1"))
        if launched_processes > 1 and args.world_size == 1:
            raise ValueError(
                f"The launcher started {launched_processes} processes (WORLD_SIZE={launched_processes}), but each "
                "sees a world size of 1, so they would train independent copies that overwrite each other's "
                "checkpoints and curricula. On a machine without GPUs pass --use_cpu (TrainingArguments.use_cpu=True) "
                "so that the processes join one gloo process group."
            )
        check_reference_settings(args, reference_model, type(self).__name__)
        super().__init__(model, args, *trainer_args, **trainer_kwargs)
        self.reference_model = reference_model
        self.args: ZPDArguments
        self._zpd_curriculum: Curriculum | None = None
        self._zpd_state: TrainingState | None = None
        self._zpd_sampler: ZPDSampler | None = None
        self._zpd_loader = None
        self._zpd_lengths: np.ndarray | None = None
        self._zpd_epoch = 1
        self._zpd_resume_from: str | None = None
        self._zpd_indexed: tuple[int, Dataset] | None = None
        self._zpd_alignment: str | None = None
        self._zpd_curriculum_repo_id: str | None = None
        self._shuffle_seed = self._curriculum_seed
        self._zpd_sizes: EpochSizes | None = None
        self._zpd_monitor = self._new_monitor()
        self.add_callback(_CurriculumCallback(self))
        if hasattr(self.model, "add_model_tags"):  # the Hub card's tags, as trl does
            self.model.add_model_tags(list(MODEL_TAGS))
        self._uses_fused_head = self._resolve_fused_head()
        if self.args.token_selection_fraction is not None:
            self._check_token_selection()
        if self.args.prune_fraction > 0 and (self.args.label_smoothing_factor > 0 or self.compute_loss_func):
            raise ValueError(
                "prune_fraction weighs each example's cross-entropy, which label smoothing and compute_loss_func "
                "replace: set prune_fraction=0, or drop label_smoothing_factor / compute_loss_func."
            )

    def _check_token_selection(self) -> None:
        """Token selection needs a reference model and the fused head, for the model and for the reference."""
        if self.reference_model is None:
            raise ValueError(
                "token_selection_fraction selects tokens by their excess loss over a reference model: pass "
                "reference_model=... to the trainer (a causal LM with the same tokenizer)."
            )
        if not self._uses_fused_head:
            raise ValueError(
                f"token_selection_fraction weighs each token's loss through the fused causal-LM head, which is off for "
                f"{model_class_name(self.model)}. Use a causal LM that fused_cross_entropy supports (GPT-2, Llama, "
                "Mistral, Qwen2/3, SmolLM3), or token_selection_fraction=None."
            )
        check_fused_support(base_model(self.reference_model))

    supports_fused_head: bool = True
    """Whether this trainer can train through hf_zpd's fused causal-LM head (`fused_cross_entropy`)."""

    def _resolve_fused_head(self) -> bool:
        """`fused_cross_entropy`: as set, or with `None` on where it is safe (fused.py's `fused_head_setting`), with
        one log line that says which path a causal LM takes and why."""
        choice = self.args.fused_cross_entropy
        if choice is None and not self.supports_fused_head:
            return False
        wrappers = [name for name, on in (("torch_compile", self.args.torch_compile), ("FSDP", self.is_fsdp_enabled),
                                          ("DeepSpeed", self.is_deepspeed_enabled)) if on]  # fmt: skip
        # peft's wrapper forwards to the transformers model inside it, whose lm_head the fused head replaces.
        use, reason = fused_head_setting(
            base_model(self.model), choice, self.args.label_smoothing_factor > 0 or self.compute_loss_func is not None,
            wrappers,
        )  # fmt: skip
        name = model_class_name(self.model)
        if use and choice is None:
            logger.info(
                f"ZPDTrainer: {name} trains through the fused causal-LM head (loss, gradient and statistics from the "
                "hidden states, no full logits); fused_cross_entropy=False gives the standard path."
            )
        elif reason is not None and choice is None and ("ForCausalLM" in name or "LMHead" in name):
            logger.info(f"ZPDTrainer: the standard path (full logits) for {name}: {reason}")
        return use

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
            self._zpd_indexed = (id(dataset), with_index_column(dataset))
        return self._zpd_indexed[1]

    @contextmanager
    def _index_keeping_collator(self):
        """While active, `self.data_collator` keeps the index column through the user's collator."""
        collator = self.data_collator
        self.data_collator = IndexKeepingCollator(collator)
        try:
            yield
        finally:
            self.data_collator = collator

    def get_train_dataloader(self):
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        dataset = self._indexed_train_dataset()  # refuses, first, a dataset that cannot be scored and drawn
        self._zpd_sizes = sizes = self._epoch_sizes()
        if sizes.chosen:
            logger.info(
                f"ZPDTrainer: the budget of {sizes.budget} optimizer steps is under one pass over the "
                f"{len(self.train_dataset)} training examples ({sizes.steps_per_pass} steps), so it trains as epochs "
                f"of {math.ceil(sizes.num_samples / self.get_total_train_batch_size(self.args))} steps "
                f"({sizes.num_samples} samples; epoch_fraction={sizes.epoch_fraction:.4g}, chosen because "
                "epoch_fraction is None): the curriculum composes every epoch after the first within the budget. Set "
                "epoch_fraction=1.0 for the Trainer's epochs."
            )
        # Same as `Trainer.get_train_dataloader` (checked against transformers 5.24: private `_get_dataloader` and
        # `_train_batch_size`), on the training set with its index column added, and a collator that carries the
        # index through the user's.
        with self._index_keeping_collator():
            loader = self._get_dataloader(
                dataset=dataset,
                description="Training",
                batch_size=self._train_batch_size,
                sampler_fn=self._get_train_sampler,
                is_training=True,
            )
        self._zpd_loader = loader
        return loader

    def _get_train_sampler(self, train_dataset: Dataset | None = None) -> ZPDSampler:
        # Private Trainer hook (transformers 5.24), the one `_get_dataloader` calls for the training sampler.
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        # The seed accelerate 1.15's SeedableRandomSampler takes when the Trainer's loader is prepared, right after
        # this hook: uniform epochs are drawn in the Trainer's own order (sampler.trainer_order).
        self._shuffle_seed = self.args.data_seed if self.args.data_seed is not None else torch.random.initial_seed()
        self._zpd_sampler = ZPDSampler(
            dataset_size=len(dataset),
            num_samples=self._num_samples,
            plan_for_epoch=self._plan_for_epoch,
            seed=self._curriculum_seed,
        )
        return self._zpd_sampler

    def _set_signature_columns_if_needed(self) -> None:
        # Private Trainer hook (transformers 5.24; trl overrides it too). Keep the index column through
        # `remove_unused_columns=True`, which would otherwise drop it from a datasets.Dataset and through
        # RemoveColumnsCollator.
        super()._set_signature_columns_if_needed()
        if INDEX_COLUMN not in self._signature_columns:
            self._signature_columns.append(INDEX_COLUMN)

    @property
    def _curriculum_seed(self) -> int:
        return self.args.data_seed if self.args.data_seed is not None else self.args.seed

    @property
    def _sizes(self) -> EpochSizes:
        """Every epoch's length, the pruned draws and the scoring pool (budget.py), from the training set and the
        budget; worked out when the training loader is built (before that, from the arguments as they are)."""
        if self._zpd_sizes is None:
            self._zpd_sizes = self._epoch_sizes()
        return self._zpd_sizes

    def _epoch_sizes(self) -> EpochSizes:
        args = self.args
        return epoch_sizes(
            len(self.train_dataset), self._train_batch_size, args.world_size, args.gradient_accumulation_steps,
            args.max_steps, args.num_train_epochs, args.epoch_fraction, args.prune_fraction, args.scoring_pool_size,
        )  # fmt: skip

    @property
    def _num_samples(self) -> int:
        return self._sizes.num_samples

    def set_initial_training_values(self, args, dataloader):
        # Public Trainer method (transformers 5.24), called right after get_train_dataloader: with epochs shortened
        # for a budget under one pass, a `num_train_epochs` budget is kept as the steps it meant over whole passes.
        if self._sizes.budget_steps is not None:
            args = copy.copy(args)
            args.max_steps = self._sizes.budget_steps
        return super().set_initial_training_values(args, dataloader)

    @property
    def curriculum(self) -> CurriculumRecord | None:
        """The run's live record ([`CurriculumRecord`]): every epoch's draws and zones, and the scores behind them;
        `None` before `train()`."""
        return self._zpd_curriculum.record if self._zpd_curriculum is not None else None

    def _plan_for_epoch(self, epoch: int) -> EpochPlan:
        """The sampler's view of an epoch's draws (1 = the first): the curriculum's, or uniform before training."""
        if self._zpd_curriculum is not None:
            return self._zpd_curriculum.plan_for(epoch)
        return uniform_plan(len(self.train_dataset), self._num_samples, self._shuffle_seed, epoch)

    # ---- The loss and the per-example statistics ----

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Returns exactly the parent's `compute_loss` loss; in training it also records per-example statistics."""
        # The model would swallow the index column through **kwargs: take it out before the forward.
        index = inputs.pop(INDEX_COLUMN, None)
        if not model.training:  # evaluation and prediction: the parent's, untouched
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        # Read the labels first: with label smoothing or `compute_loss_func` the Trainer pops them from `inputs`.
        labels = self._labels_of(inputs)
        if self._zpd_alignment is None:  # the first training batch: what the statistics need, before its forward
            self._check_first_batch(labels, index)
        weights = None
        if self._zpd_curriculum is not None and index is not None:
            epoch_weights = self._zpd_curriculum.loss_weights(self._zpd_epoch)
            if epoch_weights is not None:
                weights = torch.as_tensor(epoch_weights[index.cpu().numpy()], device=labels.device)  # (B,)
        loss, outputs, stats = self._loss_and_statistics(
            model, inputs, labels, return_outputs, num_items_in_batch, weights
        )
        self._zpd_monitor.record(stats)
        if self._zpd_curriculum is not None:
            self._zpd_curriculum.observe(index, self.state.global_step, stats)
        return (loss, outputs) if return_outputs else loss

    def _loss_and_statistics(self, model, inputs, labels, return_outputs, num_items_in_batch, weights=None):
        """The parent's loss and outputs for a training batch, and the batch's per-example statistics; with
        per-example `weights` (pruning), the loss each example contributes is weighed."""
        if self._uses_fused_head:
            # The model's lm_head and loss function are swapped for the fused ones during this forward only (the
            # backward runs later, on the gradients the fused function computed); `outputs.logits` are hidden states.
            selector = None
            if self.args.token_selection_fraction is not None:
                selector = token_selector(
                    self.reference_model,
                    {**inputs, self.label_names[0]: labels},
                    self.args.token_selection_fraction,
                    self.args.statistics_chunk_size,
                )
            with fused_causal_lm_head(base_model(model), chunk_size=self.args.statistics_chunk_size) as capture:
                capture.example_weights, capture.row_selector = weights, selector
                loss, outputs = super().compute_loss(
                    model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
                )
            self._zpd_alignment = SHIFTED  # the fused head serves causal LMs only (fused.py's allowlist)
            return loss, outputs, capture.statistics
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        stats = self._statistics_from_outputs(model, outputs, labels, num_items_in_batch)
        if weights is not None:
            loss = weighted_loss(loss, self._logits_of(model, outputs), labels, weights)
        return loss, outputs, stats

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
                "keeps or makes them, e.g. DataCollatorForLanguageModeling(tokenizer, mlm=False) for causal LM."
            )
        if labels.is_floating_point():
            raise ValueError(
                "ZPDTrainer scores examples by cross-entropy against class indices, but the labels are floating "
                "point (a regression or multi-label head). Use integer class labels."
            )
        return labels

    def _logits_of(self, model, outputs) -> torch.Tensor:
        logits = outputs.get("logits") if isinstance(outputs, Mapping) else None
        if logits is None:
            keys = list(outputs.keys()) if isinstance(outputs, Mapping) else f"a {type(outputs).__name__}"
            raise ValueError(
                f"ZPDTrainer needs the model's logits to score examples, but {model_class_name(model)} returned "
                f"{keys}. Use a model with a language-modelling or classification head that returns `logits` "
                "(and keep return_dict=True)."
            )
        return logits

    def _check_model_supported(self, model) -> None:
        """Refuses, before any step, a model whose logits cannot line up with the labels of the batch."""
        peft_config = getattr(self.accelerator.unwrap_model(model), "active_peft_config", None)
        if getattr(peft_config, "is_prompt_learning", False):
            raise ValueError(
                f"ZPDTrainer does not support the peft method {peft_config.peft_type.value}: prompt-learning methods "
                "(prompt tuning, prefix tuning, P-tuning) add virtual tokens, so the model's logits no longer line up "
                "with the labels of the batch and the per-example statistics would be wrong. Use an adapter method "
                "(LoRA, IA3, ...), or the plain Trainer."
            )

    def _check_first_batch(self, labels: torch.Tensor, index: torch.Tensor | None) -> None:
        """Before the first training forward: the collator kept one row per example (the statistics are per row).

        The checks ride on the first batch the Trainer draws anyway, so a model sees no forward the plain Trainer
        would not run. Every process checks its own batch, and all stop together if one finds a problem.
        """
        problem = None
        if index is not None and labels.shape[0] != len(index):
            problem = (
                f"The data collator put {len(index)} examples into {labels.shape[0]} rows: it packs several examples "
                "into one sequence (padding-free or flattening collators, packing). ZPDTrainer scores each example on "
                "its own row; use a padding collator (e.g. DataCollatorWithPadding, or padding_free=False / "
                "packing=False)."
            )
        failed = self._gather_first_batch([float(problem is not None)])
        if problem is not None or any(row[0] for row in failed):
            raise ValueError(problem or "Another process stopped at its first training batch; its error says why.")

    def _gather_first_batch(self, values: list[float]) -> list[list[float]]:
        """`values` from every process (a collective that every process reaches at its first batch)."""
        local = torch.tensor([values], dtype=torch.float64, device=self.args.device)
        if self.accelerator.num_processes == 1:
            return local.tolist()
        return self.accelerator.gather(local).cpu().tolist()

    def _own_loss(self, outputs, num_items_in_batch) -> tuple[float | None, float | None]:
        """The loss the model computed itself in this forward, undone from the Trainer's scaling, and the token count
        it may have divided by (`num_items_in_batch`), for the label-alignment probe."""
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else None
        if loss is None or loss.numel() != 1:
            return None, None
        value = float(loss.detach())
        passed_count = self.model_accepts_loss_kwargs and num_items_in_batch is not None
        # transformers 5.24 `Trainer.compute_loss` multiplies the model's loss in place by the number of processes
        # when it passed num_items_in_batch with average_tokens_across_devices.
        if passed_count and self.args.average_tokens_across_devices:
            value /= self.accelerator.num_processes // self.get_tp_size() if self.args.n_gpu <= 1 else self.args.n_gpu
        return value, float(num_items_in_batch) if passed_count else None

    def _statistics_from_outputs(self, model, outputs, labels: torch.Tensor, num_items_in_batch=None):
        logits = self._logits_of(model, outputs)
        if self._zpd_alignment is None:
            self._decide_alignment(model, logits, labels, *self._own_loss(outputs, num_items_in_batch))
        if self._zpd_alignment == SHIFTED:
            logits, labels = align_causal_labels(logits, labels)
        return per_example_statistics(logits.detach(), labels, chunk_size=self.args.statistics_chunk_size)

    def _decide_alignment(self, model, logits, labels, model_loss: float | None, num_items: float | None) -> None:
        """Decides the label alignment (alignment.py) from the first batch's forward; every process must agree."""
        problem, alignment = None, None
        try:
            alignment = decide_alignment(model, logits, labels, model_loss, self.args.label_alignment, num_items)
        except ValueError as error:
            problem = error
        decisions = {row[0] for row in self._gather_first_batch([_ALIGNMENT_CODES[alignment]])}
        if problem is not None:
            raise problem
        if decisions != {_ALIGNMENT_CODES[alignment]}:
            raise ValueError(
                f"The processes read {model_class_name(model)}'s logits differently from their first batches (one "
                "could not tell or disagreed). Set ZPDConfig.label_alignment to 'shifted' (causal LM) or 'aligned'."
            )
        self._zpd_alignment = alignment
        logger.info(f"ZPDTrainer: {model_class_name(model)} logits are read {alignment} to the labels.")

    def _new_monitor(self, running_loss: float | None = None) -> TrainingMonitor:
        return TrainingMonitor(
            self.args.device,
            self.args.effective_competence_weights,
            self.args.running_ppl_decay,
            lambda tensor: self.accelerator.reduce(tensor, reduction="sum"),
            running_loss,
        )

    def _running_ppl(self) -> float:
        return self._zpd_monitor.running_ppl()

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        # Training logs (they carry "loss") get the running PPL and the means of the per-example statistics since
        # the last log, averaged over all processes (monitor.py).
        if "loss" in logs and self._zpd_state is not None:
            logs.update(self._zpd_monitor.log_entries())
        super().log(logs, *args, **kwargs)

    # ---- The curriculum at epoch boundaries ----

    def _begin_curriculum(self, train_dataloader) -> None:
        dataset_size = len(self.train_dataset)
        self._zpd_monitor = self._new_monitor()
        self._check_model_supported(self.model_wrapped)
        # Every classifier's record keeps the labels (the label audit reads them); the draw balances by them only with
        # class_balance.
        record_labels = class_labels(self.train_dataset, self.label_names)
        labels = record_labels if self.args.class_balance else None
        record = CurriculumRecord(settings=self._record_settings())
        self._zpd_state = TrainingState(dataset_size=dataset_size)
        column = detect_id_column(self.train_dataset, self.curriculum_id_column)
        if column is not None:
            record.id_column = column
            record.example_ids = read_example_ids(self.train_dataset, column)
        record.labels = record_labels
        assert_same_on_every_process(dataset_sketch(self.train_dataset), "training set", self.accelerator)
        # The epoch to resume in, by the Trainer's own formula (`_init_training_state`), and the samples of the whole
        # run (for annealing), from the steps the Trainer will take.
        num_batches = len(train_dataloader)
        accumulation = self.args.gradient_accumulation_steps
        steps_per_epoch = max(num_batches // accumulation + int(num_batches % accumulation > 0), 1)
        self._zpd_epoch = self.state.global_step // steps_per_epoch + 1
        full_epochs, extra_steps = divmod(self.state.max_steps, steps_per_epoch)
        samples_per_step = self.get_total_train_batch_size(self.args)
        total_samples = full_epochs * self._num_samples + min(extra_steps * samples_per_step, self._num_samples)
        if self.reference_model is not None:
            self.reference_model.to(self.args.device).eval()
        self._zpd_reference_seconds = None
        reference = self._reference_scores() if self.args.needs_reference else None
        record.reference = reference
        if self._zpd_reference_seconds is not None:
            record.settings["reference_seconds"] = self._zpd_reference_seconds
            self.log({"zpd/reference_seconds": self._zpd_reference_seconds})
        self._zpd_curriculum = self.curriculum_class(
            self.args,
            record,
            num_samples=self._num_samples,
            total_samples=total_samples,
            global_batch_size=samples_per_step,
            seed=self._curriculum_seed,
            shuffle_seed=self._shuffle_seed,
            labels=labels,
            scoring_pool_size=self._sizes.scoring_pool_size,
            prune_draws=self._sizes.prune_draws,
            reference=reference,
            score_pool=self._score_pool,
            merge=lambda scores: scores.merge(self.accelerator),
            log=self.log,
        )
        if self._zpd_resume_from is not None:
            self._restore_curriculum(self._zpd_resume_from, dataset_size)
        last_epoch = math.ceil(self.state.max_steps / steps_per_epoch)
        if self.args.replay_curriculum is not None:
            self._begin_replay(last_epoch)
        self._zpd_curriculum.warn_if_inactive(last_epoch, self.state.max_steps, steps_per_epoch)

    def _reference_scores(self) -> ScoreTable:
        """The reference's scores of the training set: from the checkpoint resumed (the run's own), from
        `reference_scores`, or from a scoring pass of `reference_model` now (every process; its seconds go into the
        record's settings)."""
        dataset = self.train_dataset
        if self._zpd_resume_from is not None:
            state = TrainingState.load(self._zpd_resume_from, len(dataset))
            if state is not None and state.reference is not None:
                return state.reference
        if self.args.reference_scores is not None:
            column = detect_id_column(dataset, self.curriculum_id_column)
            ids = read_example_ids(dataset, column) if column is not None else None
            return read_reference_scores(
                self.args.reference_scores, len(dataset), ids, column, class_labels(dataset, self.label_names)
            )
        model = self.reference_model.to(self.args.device)
        table, seconds = self._run_scoring_pass(model, self._zpd_loader, np.arange(len(dataset), dtype=np.int64))
        logger.info(f"ZPDTrainer: the reference model scored the {len(dataset)} training examples in {seconds:.1f} s.")
        # Its cost, where the study and the user count compute: a record setting and a logged metric.
        self._zpd_reference_seconds = seconds
        return table

    def _restore_curriculum(self, checkpoint: str, dataset_size: int) -> None:
        """Reads the checkpoint's record (draws, zones, scoring passes) and state (running PPL, pending statistics)."""
        state = TrainingState.load(checkpoint, dataset_size)
        record_path = os.path.join(checkpoint, RECORD_NAME)
        if state is None or not os.path.isfile(record_path):
            logger.warning(
                f"The checkpoint {checkpoint} has no curriculum state (it was not written by ZPDTrainer). Training "
                "resumes, and the pool is scored with the restored model when the next epoch is planned."
            )
            return
        record = CurriculumRecord.load(record_path)
        if record.format_version != self.curriculum.format_version or record.dataset_size != dataset_size:
            raise ValueError(
                f"The curriculum record {record_path} does not belong to this training set or hf_zpd version "
                f"(format {record.format_version}, {record.dataset_size} examples). Resume with the run's own "
                "data and hf_zpd version, or start a new run (a new output_dir)."
            )
        self._zpd_state = state
        self._zpd_monitor.running_loss = state.running_loss
        self._zpd_curriculum.restore(record, state.training_pass_scores)

    def _begin_replay(self, last_epoch: int) -> None:
        """With `replay_curriculum`: every epoch's draws come from the record, so no scoring pass runs."""
        record = load_curriculum(self.args.replay_curriculum)
        record.check_replay(
            dataset_size=len(self.train_dataset),
            example_ids=lambda column: read_example_ids(self.train_dataset, column),
            num_samples=self._num_samples,
            seed=self._curriculum_seed,
            epochs=list(range(1, last_epoch + 1)),
        )
        self._zpd_curriculum.replay(record, list(range(1, last_epoch + 1)), self._zpd_resume_from)

    def _begin_epoch(self) -> None:
        self._zpd_curriculum.begin_epoch(self._zpd_epoch, self._running_ppl())
        self._zpd_sampler.set_epoch(self._zpd_epoch - 1)  # the sampler takes the Trainer's 0-based loop index

    def _end_epoch(self) -> None:
        self._zpd_monitor.fold()
        epoch = self._zpd_epoch
        self._zpd_epoch += 1
        more_to_train = epoch + 1 <= self.state.num_train_epochs and self.state.global_step < self.state.max_steps
        self._zpd_curriculum.end_epoch(epoch, more_to_train, self._running_ppl())

    # ---- The scoring pass ----

    def _example_lengths(self, dataset) -> np.ndarray | None:
        # The training set's lengths, read once per run.
        if self._zpd_lengths is None or len(self._zpd_lengths) != len(dataset):
            self._zpd_lengths = self._lengths_of(dataset)
        return self._zpd_lengths

    def _lengths_of(self, dataset) -> np.ndarray | None:
        """Each example's length, from `length_column_name` or the first model input; `None` if unknown."""
        names = [self.args.length_column_name]
        if self.processing_class is not None and getattr(self.processing_class, "model_input_names", None):
            names.append(self.processing_class.model_input_names[0])
        return example_lengths(dataset, [*names, "input_ids"], self.args.length_column_name)

    def _forward_statistics(self, model, inputs: dict[str, Any]) -> ExampleStatistics:
        inputs = self._prepare_inputs(inputs)  # private Trainer method (transformers 5.24): device placement
        labels = self._labels_of(inputs)
        unwrapped = base_model(model)
        model_inputs = {key: value for key, value in inputs.items() if key not in self.label_names}
        if getattr(getattr(unwrapped, "config", None), "is_encoder_decoder", False):
            if "decoder_input_ids" not in model_inputs:
                if hasattr(unwrapped, "prepare_decoder_input_ids_from_labels"):
                    model_inputs["decoder_input_ids"] = unwrapped.prepare_decoder_input_ids_from_labels(labels=labels)
                else:  # the model builds its decoder inputs from the labels
                    model_inputs[self.label_names[0]] = labels
        if self._uses_fused_head and self._zpd_alignment is not None:
            # The fused head's statistics, from the supervised rows' hidden states a chunk at a time, without
            # gradient: no full logits, so a pass costs about what the training forward does.
            model_inputs[self.label_names[0]] = labels
            with fused_causal_lm_head(unwrapped, chunk_size=self.args.statistics_chunk_size) as capture:
                model(**model_inputs)
            return capture.statistics
        if self._zpd_alignment is None and alignment_from_structure(unwrapped) is None:
            # Scoring before any training step (score_dataset) of a model whose class says nothing: its own loss on
            # this first batch decides the label alignment.
            model_inputs[self.label_names[0]] = labels
        # Without labels the model computes no loss, which for causal LMs would upcast the full logits to fp32.
        outputs = model(**model_inputs)
        return self._statistics_from_outputs(model, outputs, labels)

    def _score_pool(self, indices: np.ndarray) -> tuple[ScoreTable, float]:
        """The scoring pass over the training examples `indices`, with the model being trained (collective)."""
        return self._run_scoring_pass(self.model_wrapped, self._zpd_loader, indices)

    def _run_scoring_pass(self, model, loader, indices: np.ndarray) -> tuple[ScoreTable, float]:
        """The scoring pass over `indices` of `loader`'s dataset, in length-grouped batches of `scoring_batch_size`."""
        lengths = (
            self._example_lengths(loader.dataset) if loader is self._zpd_loader else self._lengths_of(loader.dataset)
        )
        batch_size = self.args.scoring_batch_size or self.args.per_device_eval_batch_size
        return run_scoring_pass(
            model=model,
            dataset=loader.dataset,
            batches=length_grouped_batches(indices, lengths, batch_size),
            collate_fn=loader.collate_fn,
            forward_statistics=self._forward_statistics,
            accelerator=self.accelerator,
            num_examples=len(loader.dataset),
            num_workers=self.args.dataloader_num_workers,
            show_progress=not self.args.disable_tqdm,
        )

    def _model_for_inference(self) -> torch.nn.Module:
        """The model as `evaluate()` runs it. Outside `train()` the accelerator has not prepared it yet, and without
        that its forward has no mixed-precision autocast (and, under DeepSpeed or FSDP, no engine)."""
        # Mirrors the preparation at the top of the private Trainer.evaluation_loop (checked against transformers 5.24:
        # private `_wrap_model` and `accelerator._models`); the public evaluate() cannot be reused because it returns
        # no per-example statistics, and gathering full logits through it would not fit in memory for an LM.
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
            `loss`, `confidence`, `entropy`, `competence` and `difficulty` (composite, or the loss in `"loss"` mode),
            `num_tokens`, `vocab_size` (the size of the output distribution) and, for a classification dataset,
            `label` and `probabilities` (the class probabilities, for at most 128 classes). Examples without supervised tokens have NaN statistics and `num_tokens` 0. Written to parquet
            (`hf-zpd score`), it is what `reference_scores` reads.
        """
        dataset = dataset if dataset is not None else self.train_dataset
        if dataset is None:
            raise ValueError("score_dataset needs a dataset: pass one, or give the trainer a train_dataset.")
        with (
            self._index_keeping_collator()
        ):  # `_get_dataloader`: private, transformers 5.24 (see get_train_dataloader)
            loader = self._get_dataloader(
                dataset=with_index_column(dataset), description="Scoring", batch_size=1, sampler_fn=None
            )
        model = self._model_for_inference()
        self._check_model_supported(model)
        table, _ = self._run_scoring_pass(model, loader, np.arange(len(dataset), dtype=np.int64))
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
            vocab_size=np.full(len(dataset), table.vocab_size, dtype=np.int64),
        )
        labels = class_labels(dataset, self.label_names)
        if labels is not None:  # a reference's scores are checked against the training set's labels
            columns["label"] = labels
        if table.probabilities is not None:  # a classifier's: what `hf-zpd label-errors` audits
            columns["probabilities"] = table.probabilities.tolist()
        return datasets.Dataset.from_dict(columns)

    # ---- Checkpoints ----

    def _save_checkpoint(self, model, trial) -> None:
        # Private Trainer method (checked against transformers 5.24): the one place every checkpoint passes
        # through, the just-in-time path included (which skips `on_save`). The curriculum (record and state) goes in
        # first and atomically, so a checkpoint folder with model weights always has the curriculum that matches them.
        if self._zpd_state is not None:
            self._zpd_monitor.fold()
            self._zpd_state.running_loss = self._zpd_monitor.running_loss
            # Collective: the training passes' statistics that a later draw needs, merged over the processes.
            self._zpd_state.training_pass_scores = self._zpd_curriculum.training_pass_state()
            self._zpd_state.reference = self._zpd_curriculum.reference
            if self.args.should_save:
                # The folder `Trainer._save_checkpoint` writes to (transformers 5.24, private `_get_output_dir`).
                folder = os.path.join(
                    self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
                )
                self.curriculum.save(folder)
                self._zpd_state.save(folder)
        super()._save_checkpoint(model, trial)

    def _end_curriculum(self) -> None:
        if self._zpd_curriculum is not None:
            self._zpd_curriculum.finish()  # collective: an epoch the run ended inside keeps its training passes
        if self.curriculum is not None and self.args.should_save:
            self.curriculum.save(self.args.output_dir)

    # ---- The curriculum as data ----

    def _record_settings(self) -> dict[str, Any]:
        args, dataset = self.args, self.train_dataset
        config = getattr(base_model(self.model), "config", None)
        return {
            "dataset_size": len(dataset),
            "num_samples_per_epoch": self._num_samples,
            "epoch_fraction": self._sizes.epoch_fraction,
            "seed": self._curriculum_seed,
            "shuffle_seed": self._shuffle_seed,
            "composition": args.composition,
            "zone_repeats": args.zone_repeats,
            "fill": args.fill,
            "fill_temperature": args.fill_temperature,
            "class_balance": args.class_balance,
            "anneal_fraction": args.anneal_fraction,
            "replay_fraction": args.replay_fraction,
            "score_before_training": args.score_before_training,
            "band_lower": args.band_lower,
            "band_upper": args.band_upper,
            "difficulty_mode": args.difficulty_mode,
            "competence_weights": list(args.effective_competence_weights),
            "min_zone_fraction": args.min_zone_fraction,
            "global_batch_size": self.get_total_train_batch_size(args),
            "rescore_every": args.rescore_every,
            "scoring_pool_size": self._sizes.scoring_pool_size,
            "prune_fraction": args.prune_fraction,
            "token_selection_fraction": args.token_selection_fraction,
            "out_of_reach": args.out_of_reach,
            "max_out_of_reach_fraction": args.max_out_of_reach_fraction,
            "pacing": args.pacing,
            "score_source": args.score_source,
            "fused_cross_entropy": self._uses_fused_head,
            "num_train_epochs": self.state.num_train_epochs or args.num_train_epochs,
            "base_model": model_display_name(getattr(config, "_name_or_path", None)),
            "source_dataset": dataset_display_name(dataset),
        }

    def _require_curriculum(self) -> CurriculumRecord:
        if self.curriculum is None:
            raise ValueError(
                "This trainer has no curriculum yet: call train() first, or read a saved one with "
                "hf_zpd.load_curriculum(path_or_repo_id)."
            )
        return self.curriculum

    def save_curriculum(self, path: str | None = None) -> str:
        """Writes the curriculum record (atomically) and returns its path; only the main process writes.

        Args:
            path (`str`, *optional*, defaults to `args.output_dir`):
                A folder (it gets `zpd_curriculum.parquet`) or a file name ending in `.parquet`.
        """
        path = os.fspath(path if path is not None else self.args.output_dir)
        record = self._require_curriculum()
        if not path.endswith(".parquet"):
            path = os.path.join(path, RECORD_NAME)
        if self.args.should_save:
            record.save(path)
        return path

    def curated_dataset(self, epoch: int | None = None) -> datasets.Dataset:
        """The training examples `epoch` drew (all epochs' when `None`) with their scores, as a `datasets.Dataset`.

        The examples keep their own columns and gain `zpd_epoch`, `zpd_example_index`, `zpd_draws`, `zpd_in_zone`,
        `zpd_in_band`, `zpd_out_of_reach`, `zpd_loss`, `zpd_confidence`, `zpd_entropy`, `zpd_competence`,
        `zpd_difficulty` and `zpd_num_tokens`; `save_to_disk`, `push_to_hub` and `load_dataset` read it back.
        """
        return self._require_curriculum().curated_dataset(self.train_dataset, epoch)

    def default_curriculum_repo_id(self) -> str:
        """The model's repo id, derived as `Trainer.init_hf_repo` does (transformers 5.24), plus `-curriculum`."""
        model_repo = self.hub_model_id or self.args.hub_model_id or Path(self.args.output_dir).absolute().name
        return f"{model_repo}-curriculum"

    def push_curriculum_to_hub(
        self,
        repo_id: str | None = None,
        token: str | None = None,
        private: bool | None = None,
        revision: str | None = None,
        commit_message: str = "Upload ZPD curriculum",
        license: str | None = None,
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

        Raises:
            `PermissionError`: the Hub refused the write (no token, or a read-only one).
            `ConnectionError`: the Hub could not be reached, or offline mode is on.
        """
        if not self.is_world_process_zero():
            return None
        record = self._require_curriculum()
        local_path = record.save(self.args.output_dir)
        commit = push_curriculum(
            record,
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
        """The parent's `create_model_card`, plus a curriculum section (cards.py)."""
        super().create_model_card(*args, **kwargs)
        if not self.is_world_process_zero() or self.curriculum is None:
            return
        from huggingface_hub import ModelCard

        path = os.path.join(self.args.output_dir, "README.md")
        card = with_curriculum_section(ModelCard.load(path), self.curriculum, self._zpd_curriculum_repo_id)
        card.save(path)


class ZPDTrainer(ZPDTrainerMixin, Trainer):
    """
    A drop-in [`~transformers.Trainer`] whose epochs are drawn around the zone of proximal development: the examples
    whose difficulty lies in `[band_lower x D, band_upper x D]`, slightly harder than the model's current level D.

    It takes exactly the Trainer's arguments. `args` may be a [`ZPDConfig`] or a plain
    [`~transformers.TrainingArguments`] (then the ZPD defaults apply). The loss it optimises is the Trainer's,
    unchanged, and so are the steps and the learning-rate schedule. At each epoch end a scoring pass (eval mode, no
    gradient, sharded over processes) measures every example's loss, confidence and entropy; the next epoch's fixed
    number of samples is then composed around the zone (`composition`; see [`ZPDConfig`]).

    Example:

    ```python
    >>> from transformers import AutoModelForSequenceClassification
    >>> from hf_zpd import ZPDConfig, ZPDTrainer
    >>> trainer = ZPDTrainer(model=model, args=ZPDConfig("out", num_train_epochs=3), train_dataset=train)  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP
    >>> trainer.curriculum.zones[2]  # the zone epoch 2 was drawn around (dataset indices)  # doctest: +SKIP
    >>> trainer.curriculum.epochs[2].counts  # how many times epoch 2 drew each example  # doctest: +SKIP

    ```
    """
