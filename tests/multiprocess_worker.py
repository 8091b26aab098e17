"""A training job run by `tests/test_multiprocess.py` under `torchrun --nproc_per_node 2` (gloo on CPU).

Each process writes what it saw to `OUT/rank{RANK}.json`: the zones, the scores, the global draws and the indices
its own batches held, the learning-rate schedule, the final weights' digest, and the same after a resume.

    torchrun --nproc_per_node 2 tests/multiprocess_worker.py OUT_DIR
"""

import hashlib
import json
import os
import sys

import torch
import torch.distributed as dist
from builders import build_tokenizer, causal_lm_dataset, tiny_gpt2
from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

from hf_zpd import ZPDConfig, ZPDTrainer
from hf_zpd.curriculum import Curriculum

NUM_EXAMPLES = 44  # 11 batches of 4: not a multiple of 2 processes, so accelerate pads the last global batch


def arguments(output_dir: str, cls=ZPDConfig, **overrides):
    values = dict(
        output_dir=output_dir,
        num_train_epochs=3,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=5,
        learning_rate=5e-3,
        logging_steps=1,
        save_strategy="steps",
        save_steps=4,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=11,
    )
    if cls is ZPDConfig:
        values.update(score_before_training=True, replay_fraction=0.2)
    values.update(overrides)
    return cls(**values)


class RecordingCurriculum(Curriculum):
    """Records the scores behind every planned epoch into `tables` (set by the trainer)."""

    tables: dict

    def _plan_epoch(self, epoch, running_ppl):
        super()._plan_epoch(epoch, running_ppl)
        table = self.record.scores_for(epoch)
        if table is not None:
            columns = ("loss", "confidence", "entropy", "num_tokens")
            self.tables.setdefault(epoch, {name: getattr(table, name).tolist() for name in columns})


class FirstEpochInputs:
    """Records the input ids of every training batch of the first epoch (6 optimizer steps) this process trains."""

    first_epoch_inputs: list

    def compute_loss(self, model, inputs, *args, **kwargs):
        if model.training and self.state.global_step < 6:
            self.first_epoch_inputs.append(inputs["input_ids"].tolist())
        return super().compute_loss(model, inputs, *args, **kwargs)


class RecordingTrainer(FirstEpochInputs, Trainer):
    pass


class RecordingZPDTrainer(FirstEpochInputs, ZPDTrainer):
    """Records the scores behind every planned epoch, and the example indices of every training batch this process
    computes a loss on."""

    curriculum_class = RecordingCurriculum
    seen: dict
    tables: dict

    def _begin_curriculum(self, train_dataloader):
        super()._begin_curriculum(train_dataloader)
        self._zpd_curriculum.tables = self.tables

    def compute_loss(self, model, inputs, *args, **kwargs):
        if model.training:
            epoch = self._zpd_epoch
            self.seen.setdefault(epoch, []).extend(inputs["zpd_index"].tolist())
        return super().compute_loss(model, inputs, *args, **kwargs)


def build(trainer_class, args, tokenizer, data_seed=0, dropout=0.1):
    trainer = trainer_class(
        model=tiny_gpt2(len(tokenizer), seed=5, dropout=dropout),
        args=args,
        train_dataset=causal_lm_dataset(tokenizer, NUM_EXAMPLES, seed=data_seed, prompt_tokens=2),
        data_collator=DataCollatorForSeq2Seq(tokenizer),
    )
    trainer.seen, trainer.tables, trainer.first_epoch_inputs = {}, {}, []
    return trainer


def digest(model) -> str:
    hasher = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        hasher.update(name.encode())
        hasher.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return hasher.hexdigest()


def _zones(trainer) -> dict:
    return {epoch: zone.tolist() for epoch, zone in trainer.curriculum.zones.items()}


def learning_rates(trainer):
    return [(entry["step"], entry["learning_rate"]) for entry in trainer.state.log_history if "learning_rate" in entry]


def main(out_dir: str) -> None:
    tokenizer = build_tokenizer()
    # Processes that built different training sets must fail loudly, on every process, before any step.
    rank = int(os.environ["RANK"])
    mismatched = build(RecordingZPDTrainer, arguments(os.path.join(out_dir, "mismatch")), tokenizer, data_seed=rank)
    try:
        mismatched.train()
        mismatch_error = None
    except RuntimeError as error:
        mismatch_error = str(error)

    full = build(RecordingZPDTrainer, arguments(os.path.join(out_dir, "full")), tokenizer)
    full.train()
    rank, world_size = full.args.process_index, full.args.world_size
    record = {
        "rank": rank,
        "world_size": world_size,
        "backend": dist.get_backend(),
        "distributed_type": str(full.accelerator.distributed_type),
        "zones": {epoch: zone.tolist() for epoch, zone in full.curriculum.zones.items()},
        "counts": {epoch: draw.counts.tolist() for epoch, draw in full.curriculum.epochs.items()},
        "draws": {epoch: full._zpd_sampler.epoch_indices(epoch).tolist() for epoch in (1, 2, 3)},
        "seen": full.seen,
        "learning_rates": learning_rates(full),
        "global_step": full.state.global_step,
        "digest": digest(full.model),
        "zpd_logs": [entry for entry in full.state.log_history if "zpd/epoch" in entry],
        "tables": full.tables,
        "mismatch_error": mismatch_error,
    }

    plain = build(RecordingTrainer, arguments(os.path.join(out_dir, "plain"), cls=TrainingArguments), tokenizer)
    plain.train()
    record["plain_learning_rates"] = learning_rates(plain)
    record["plain_global_step"] = plain.state.global_step
    record["plain_first_epoch_inputs"] = plain.first_epoch_inputs

    # 6 steps per epoch: resume in the middle of epoch 1 (step 4), of epoch 2 (step 8), and on epoch 2's last step.
    record["resumed"] = {}
    for step in (4, 8, 12):
        checkpoint = os.path.join(out_dir, "full", f"checkpoint-{step}")
        resumed = build(RecordingZPDTrainer, arguments(os.path.join(out_dir, f"resumed-{step}")), tokenizer)
        resumed.train(resume_from_checkpoint=checkpoint)
        record["resumed"][step] = {
            "digest": digest(resumed.model),
            "zones": {epoch: zone.tolist() for epoch, zone in resumed.curriculum.zones.items()},
            "counts": {epoch: draw.counts.tolist() for epoch, draw in resumed.curriculum.epochs.items()},
            "seen": resumed.seen,
        }
    # The training-pass score source: a frozen model (no dropout, learning rate 0) gives the scoring pass's table,
    # and a learning one resumes mid-epoch to the same zones and weights.
    training_pass = dict(score_source="training_pass", score_before_training=False, replay_fraction=0.0)
    frozen = build(
        RecordingZPDTrainer,
        arguments(os.path.join(out_dir, "frozen"), learning_rate=0.0, num_train_epochs=2, **training_pass),
        tokenizer,
        dropout=0.0,
    )
    frozen.train()
    record["training_pass_frozen_table"] = frozen.tables[2]  # epoch 2's scores: epoch 1's training passes
    learning = build(RecordingZPDTrainer, arguments(os.path.join(out_dir, "tp-full"), **training_pass), tokenizer)
    learning.train()
    record["training_pass"] = {"digest": digest(learning.model), "zones": _zones(learning), "resumed": {}}
    record["uniform_first_epoch_inputs"] = learning.first_epoch_inputs  # no score_before_training: epoch 1 is uniform
    for step in (4, 8):
        resumed = build(
            RecordingZPDTrainer, arguments(os.path.join(out_dir, f"tp-{step}"), **training_pass), tokenizer
        )
        resumed.train(resume_from_checkpoint=os.path.join(out_dir, "tp-full", f"checkpoint-{step}"))
        record["training_pass"]["resumed"][step] = {"digest": digest(resumed.model), "zones": _zones(resumed)}
    # A reference model's scores of the training set, sharded over the processes at train start.
    reference = RecordingZPDTrainer(
        model=tiny_gpt2(len(tokenizer), seed=5),
        reference_model=tiny_gpt2(len(tokenizer), seed=9),
        args=arguments(os.path.join(out_dir, "reference"), max_steps=1, difficulty_mode="reducible"),
        train_dataset=causal_lm_dataset(tokenizer, NUM_EXAMPLES, prompt_tokens=2),
        data_collator=DataCollatorForSeq2Seq(tokenizer),
    )
    reference.seen, reference.tables, reference.first_epoch_inputs = {}, {}, []
    reference.train()
    table = reference.curriculum.reference
    record["reference_table"] = {name: getattr(table, name).tolist() for name in ("loss", "confidence", "entropy")}
    dist.barrier()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(record, handle)
    # Tear the gloo group down before the interpreter exits (left to the exit handlers, the GRPO worker's group once
    # aborted the process: "terminate called without an active exception"); the barrier above ended the collectives.
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1])
