"""A GRPO job run by `tests/test_grpo_multiprocess.py` under `torchrun --nproc_per_node 2` (gloo on CPU).

Each process writes to `OUT/rank{RANK}.json` the rounds the curriculum planned, the prompt indices of the groups it
generated itself, the final weights' digest, and the same after a resume from a mid-run checkpoint.

    torchrun --nproc_per_node 2 tests/grpo_multiprocess_worker.py OUT_DIR
"""

import hashlib
import json
import os
import sys

import torch
import torch.distributed as dist
from builders import WORDS, build_tokenizer, tiny_llama
from datasets import Dataset

from hf_zpd import ZPDGRPOConfig, ZPDGRPOTrainer
from hf_zpd.grpo import PROMPT_INDEX_COLUMN


def says_cat(completions, **kwargs):
    return [float("cat" in completion) for completion in completions]


def build(out_dir: str, **overrides) -> ZPDGRPOTrainer:
    tokenizer = build_tokenizer()
    tokenizer.padding_side = "left"
    prompts = Dataset.from_dict(
        {"prompt": [" ".join(WORDS[(i + k) % len(WORDS)] for k in range(3)) for i in range(32)]}
    )
    values = dict(
        output_dir=out_dir,
        bf16=False,
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=6,
        num_generations=4,
        max_completion_length=3,
        max_steps=6,
        logging_steps=1,
        save_strategy="steps",
        save_steps=3,
        seed=0,
        gradient_checkpointing=False,
        disable_tqdm=True,
        learning_rate=1e-2,
    )
    values.update(overrides)
    trainer = ZPDGRPOTrainer(
        model=tiny_llama(len(tokenizer.get_vocab()), seed=0),
        reward_funcs=says_cat,
        args=ZPDGRPOConfig(**values),
        train_dataset=prompts,
        processing_class=tokenizer,
    )
    local = []
    generate = trainer._generate_and_score_completions

    def recording(inputs):
        if trainer.model.training:
            local.append([row.get(PROMPT_INDEX_COLUMN) for row in inputs])
        return generate(inputs)

    trainer._generate_and_score_completions = recording
    trainer.local_prompts = local
    return trainer


def digest(model) -> str:
    sha = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        sha.update(name.encode())
        sha.update(value.detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()


def main(out_dir: str) -> None:
    whole = build(os.path.join(out_dir, "whole"))
    whole.train()
    curriculum = whole._zpd_curriculum
    record = {
        "rank": dist.get_rank(),
        "world_size": dist.get_world_size(),
        "distributed_type": str(whole.accelerator.distributed_type),
        "plans": {str(r): p.prompts.tolist() for r, p in sorted(curriculum.plans.items())},
        "features": {
            str(r): p.features.tolist() for r, p in sorted(curriculum.plans.items()) if p.features is not None
        },
        "observed": {str(r): o.prompts.tolist() for r, o in sorted(curriculum.outcomes.items())},
        "local": whole.local_prompts,
        "digest": digest(whole.model),
    }
    resumed = build(os.path.join(out_dir, "resumed"))
    resumed.train(resume_from_checkpoint=os.path.join(out_dir, "whole", "checkpoint-3"))
    record["resumed_digest"] = digest(resumed.model)
    record["resumed_plans"] = {str(r): p.prompts.tolist() for r, p in sorted(resumed._zpd_curriculum.plans.items())}
    with open(os.path.join(out_dir, f"rank{dist.get_rank()}.json"), "w") as handle:
        json.dump(record, handle)
    # Tear the gloo group down before the interpreter exits: left to the exit handlers, its threads were once still
    # joinable when their destructors ran and the process aborted ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1])
