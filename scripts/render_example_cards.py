"""Renders the example cards in `model_cards/` from tiny real runs (tiny models from `tests/builders.py`, 2 CPU cores,
under a minute): the dataset card that `push_curriculum_to_hub` pushes and the model card with its curriculum section
(a tiny GPT-2); a classifier's dataset card with the label audit and the data map (a tiny BERT whose labels are a
third wrong); and a GRPO run's dataset card (a tiny Llama under `ZPDGRPOTrainer`). The templates are
`model_cards/templates/`, shipped in the wheel as the package `hf_zpd.templates`.

    python scripts/render_example_cards.py
"""

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from builders import (  # noqa: E402
    WORDS,
    build_tokenizer,
    causal_lm_dataset,
    classification_dataset,
    tiny_bert_classifier,
    tiny_gpt2,
    tiny_llama,
)
from datasets import Dataset  # noqa: E402
from huggingface_hub import ModelCard  # noqa: E402
from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding  # noqa: E402

from hf_zpd import ZPDConfig, ZPDGRPOConfig, ZPDGRPOTrainer, ZPDTrainer  # noqa: E402
from hf_zpd.cards import data_map_png, dataset_card, with_curriculum_section  # noqa: E402

REPO_ID = "your-name/tiny-zpd"


def main() -> None:
    tokenizer = build_tokenizer()
    dataset = causal_lm_dataset(tokenizer, 48, prompt_tokens=2)
    dataset = dataset.add_column("id", [f"ex-{i:03d}" for i in range(len(dataset))])
    with tempfile.TemporaryDirectory() as output_dir:
        args = ZPDConfig(
            output_dir,
            num_train_epochs=3,
            per_device_train_batch_size=8,
            learning_rate=5e-3,
            replay_fraction=0.25,
            min_zone_fraction=0.2,
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
            seed=7,
            hub_model_id=REPO_ID,
        )
        trainer = ZPDTrainer(
            model=tiny_gpt2(len(tokenizer)),
            args=args,
            train_dataset=dataset,
            data_collator=DataCollatorForSeq2Seq(tokenizer),
        )
        trainer.train()
        curriculum_repo = trainer.default_curriculum_repo_id()
        dataset_card(trainer.curriculum, curriculum_repo, license="apache-2.0").save(
            ROOT / "model_cards" / "curriculum_card.md"
        )
        # The card the Trainer writes, with the section added as `create_model_card` does after a push.
        trainer.create_model_card(license="apache-2.0", model_name=REPO_ID.split("/")[1])
        card = ModelCard.load(Path(output_dir) / "README.md")
        card = with_curriculum_section(card, trainer.curriculum, curriculum_repo)
        card.save(ROOT / "model_cards" / "model_card.md")
    classifier_card(tokenizer)
    grpo_card(tokenizer)


def classifier_card(tokenizer) -> None:
    """A classifier's curriculum: the card's label audit and the data map it links (saved beside it)."""
    dataset = classification_dataset(tokenizer, 60)
    labels = dataset["label"]
    dataset = dataset.remove_columns("label").add_column("label", [(y + 1) % 3 if i % 3 == 0 else y
                                                                   for i, y in enumerate(labels)])  # fmt: skip
    dataset = dataset.add_column("id", [f"ex-{i:03d}" for i in range(len(dataset))])
    with tempfile.TemporaryDirectory() as output_dir:
        args = ZPDConfig(output_dir, num_train_epochs=3, per_device_train_batch_size=8, learning_rate=5e-3,
                         report_to=[], use_cpu=True, disable_tqdm=True, seed=7)  # fmt: skip
        trainer = ZPDTrainer(model=tiny_bert_classifier(len(tokenizer)), args=args, train_dataset=dataset,
                             data_collator=DataCollatorWithPadding(tokenizer))  # fmt: skip
        trainer.train()
        folder = ROOT / "model_cards" / "classifier"
        folder.mkdir(exist_ok=True)
        dataset_card(trainer.curriculum, "your-name/tiny-classifier-curriculum", license="apache-2.0").save(
            folder / "curriculum_card.md"
        )
        (folder / "data_map.png").write_bytes(data_map_png(trainer.curriculum))


def grpo_card(tokenizer) -> None:
    """A GRPO run's prompt curriculum card."""
    tokenizer.padding_side = "left"
    prompts = Dataset.from_dict(
        {"prompt": [" ".join(WORDS[(i + k) % len(WORDS)] for k in range(3)) for i in range(40)]}
    )

    def says_cat(completions, **kwargs):
        return [float("cat" in completion) for completion in completions]

    with tempfile.TemporaryDirectory() as output_dir:
        args = ZPDGRPOConfig(output_dir, bf16=False, use_cpu=True, report_to="none", per_device_train_batch_size=8,
                             num_generations=4, max_completion_length=3, max_steps=8, save_strategy="no", seed=0,
                             gradient_checkpointing=False, disable_tqdm=True, learning_rate=1e-2)  # fmt: skip
        trainer = ZPDGRPOTrainer(model=tiny_llama(len(tokenizer.get_vocab())), reward_funcs=says_cat, args=args,
                                 train_dataset=prompts, processing_class=tokenizer)  # fmt: skip
        trainer.train()
        trainer.curriculum.dataset_card("your-name/tiny-grpo-curriculum", license="apache-2.0").save(
            ROOT / "model_cards" / "grpo_curriculum_card.md"
        )


if __name__ == "__main__":
    main()
