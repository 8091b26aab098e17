"""The GRPO curriculum study: ZPDGRPOTrainer's arms against the plain `trl.GRPOTrainer` at matched generated tokens.

Tasks (`examples/grpo_tasks.py`, each from its cached SFT warm start on a 3-layer, 128-wide rotary policy over
characters; 400 steps of 16 prompts x 8 completions; every rate from 1e-5 to 3e-4 was stable for the plain trainer and
1e-4, the study's, gains +19 (`add`) and +47 (`reverse`) points of pass@1 over the warm start on 3 seeds):

| task | prompts | answers | pool of 2,000 |
|---|---|---|---|
| `reverse` | `"kqzv>"` | the string reversed (up to 16 characters: generation dominates the step) | lengths 2..16, uniform |
| `add` | `"47+85="` | the sum (short answers) | 1-, 2- and 3-digit operands at 4/66/30%; the 3-digit ones stay out of reach |
| `reverse-skewed` | as `reverse` (same warm start and rate) | as `reverse` | lengths 2-3 at 50% (mostly solved at the start), 15-16 at 25% (out of reach), 4-14 at 25%: a pool where a uniform draw wastes most groups |

Arms (`ARMS`; the ZPD arms are `ZPDGRPOTrainer` with these settings, everything else the plain trainer's):

| arm | trainer | what is drawn |
|---|---|---|
| `uniform` | `trl.GRPOTrainer` | TRL's `RepeatSampler`: a random permutation of the pool |
| `dapo` | `ZPDGRPOTrainer`, `prompt_selection="uniform"`, `zero_variance_filter=True` | uniform draws; groups with zero reward variance replaced by extra generations of fresh prompts (DAPO's dynamic sampling, up to 4 extra generations a round) |
| `zpd` | `ZPDGRPOTrainer` defaults (`zone_signal="composite"`) | the zone: P(mixed) from a regression on each prompt's history, the policy's confidence and entropy on it, and its length |
| `zpd-a1` | `zone_signal="pass_rate"` | the zone from the pass-rate history alone (the seed's ablation A1) |
| `random` | `prompt_selection="random"` | the random control: A1's weights permuted across the pool each round |
| `zpd-k4`, `zpd-a1-k4`, `random-k4` | the same with `zone_sharpness=4` | weights max(P(mixed) ** 4, floor): a narrower band |
| `zpd-k4-c16` | `zone_sharpness=4`, `candidates_per_round=16` | the composite chooses among 16 x B candidates instead of 4 x B |
| `zpd-0.4`, `zpd-floor01-0.4` | hf_zpd 0.4 (commit a1bb66a) | the 0.4 composite (confidence and entropy only, blended with the history); `zone_floor=0.01` |
| `oracle`, `oracle-k4` | an `OracleCurriculum` (`-k4`: `zone_sharpness=4`) | the plug-in P(mixed) of each prompt's true pass rate under the current policy (the exact probability of sampling the answer, from a teacher-forced forward over the whole pool every 10 rounds; its forwards are not counted as generated tokens) |

Every run evaluates every 50 steps: pass@1 at temperature 1 (8 samples per evaluation prompt) and greedy accuracy, per
difficulty, on held-out prompts; the generated completion tokens so far; and the pass rate of a fixed sample of 256
pool prompts (the prompts mastered at the start are those at 8/8). Runs append to
`examples/results/grpo/<task>/runs.jsonl` and are skipped when there; the ZPD arms' records go beside them.

    .venv/bin/python examples/grpo_study.py --task reverse --seeds 0 1 2 --arms uniform dapo zpd zpd-a1 random oracle
    .venv/bin/python examples/grpo_study.py --report      # grpo.md, grpo.csv and the plots
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from study_report import append_run, read_runs  # noqa: E402  examples/study_report.py: the runs-file helpers

RESULTS = os.path.join("examples", "results", "grpo")
ORACLE_REFRESH = 10  # rounds between two refreshes of the oracle's true pass rates
LEARNING_RATE = 1e-4  # swept for the plain trainer (grpo_tasks.py's sweep; results/grpo/sweep)

ARMS: dict[str, dict] = {
    "uniform": {},
    "dapo": {"prompt_selection": "uniform", "zero_variance_filter": True},
    "zpd": {},
    "zpd-a1": {"zone_signal": "pass_rate"},
    "random": {"prompt_selection": "random"},
    "zpd-k4": {"zone_sharpness": 4.0},
    "zpd-a1-k4": {"zone_signal": "pass_rate", "zone_sharpness": 4.0},
    "random-k4": {"prompt_selection": "random", "zone_sharpness": 4.0},
    "zpd-k4-c16": {"zone_sharpness": 4.0, "candidates_per_round": 16},
    "zpd-iw": {"importance_weighting": True},
    "zpd-floor01": {"zone_floor": 0.01},
    "oracle": {"zone_signal": "pass_rate"},
    "oracle-k4": {"zone_signal": "pass_rate", "zone_sharpness": 4.0},
}
# Arms run with hf_zpd 0.4 (commit a1bb66a), whose composite read the policy's confidence and entropy only and blended
# them with the history by prior_strength; their rows keep the suffix "-0.4" (check out that commit to rerun them).


def oracle_trainer():
    """`ZPDGRPOTrainer` whose curriculum weighs each prompt by the plug-in P(mixed) of its true pass rate."""
    import torch

    from hf_zpd import ZPDGRPOTrainer
    from hf_zpd.grpo_curriculum import PromptCurriculum, RoundPlan
    from hf_zpd.pass_rate import plug_in_mixed_probability, weighted_sample

    class OracleCurriculum(PromptCurriculum):
        true_pass_rates = None  # set by the trainer: () -> (num_prompts,)

        def _draw(self, round, cutoff):
            if round % ORACLE_REFRESH == 0 or getattr(self, "_rates", None) is None:
                self._rates = self.true_pass_rates()
            scores = plug_in_mixed_probability(self._rates, self.group_size)
            weights = self._weights(scores)  # max(score ** zone_sharpness, floor), as the zone's
            chosen = weighted_sample(weights, self.prompts_per_round, self._rng(round, 0))
            nan = np.full(chosen.size, np.nan)
            return RoundPlan(round, chosen.astype(np.int64), scores[chosen], nan, nan, self._rates[chosen], nan,
                             np.ones(chosen.size), cutoff)  # fmt: skip

    class OracleGRPOTrainer(ZPDGRPOTrainer):
        def _new_curriculum(self):
            plain = super()._new_curriculum()
            oracle = OracleCurriculum.__new__(OracleCurriculum)
            oracle.__dict__.update(plain.__dict__)
            oracle.true_pass_rates = self._true_pass_rates
            return oracle

        @torch.no_grad()
        def _true_pass_rates(self) -> np.ndarray:
            """P(the policy samples the answer, then EOS) at temperature 1, for every prompt: one teacher-forced
            forward (exact match is the task's reward)."""
            from hf_zpd.scoring import preserved_rng_and_mode

            tokenizer, model = self.processing_class, self.model
            prompts = list(self.train_dataset["prompt"])
            answers = list(self.train_dataset["answer"])
            prompt_ids, _, _ = self._tokenize_prompts(prompts)
            rates = np.zeros(len(prompts))
            with preserved_rng_and_mode(model):
                for start in range(0, len(prompts), 256):
                    rows, spans = [], []
                    for ids, answer in zip(prompt_ids[start : start + 256], answers[start : start + 256], strict=True):
                        target = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                        rows.append(list(ids) + target)
                        spans.append((len(ids), len(target)))
                    width = max(len(r) for r in rows)
                    pad = tokenizer.pad_token_id
                    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
                    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
                    log_p = torch.log_softmax(model(input_ids=input_ids, attention_mask=mask).logits.float(), dim=-1)
                    for row, (begin, length) in enumerate(spans):
                        positions = torch.arange(begin - 1, begin + length - 1)
                        targets = input_ids[row, begin : begin + length]
                        rates[start + row] = float(log_p[row, positions, targets].sum().exp())
            return rates

    return OracleGRPOTrainer


def run_one(task_name: str, arm: str, seed: int, options) -> dict:
    from grpo_tasks import PRESETS, run_grpo
    from trl import GRPOConfig, GRPOTrainer

    from hf_zpd import ZPDGRPOConfig, ZPDGRPOTrainer

    preset = PRESETS[task_name]
    if arm == "uniform":
        trainer_class, config_class = GRPOTrainer, GRPOConfig
    elif arm.startswith("oracle"):
        trainer_class, config_class = oracle_trainer(), ZPDGRPOConfig
    else:
        trainer_class, config_class = ZPDGRPOTrainer, ZPDGRPOConfig
    records = os.path.join(options.output_dir, task_name, "records")

    def keep_record(trainer, curves):
        if arm == "uniform":
            return
        os.makedirs(records, exist_ok=True)
        record = trainer.curriculum
        record.save(os.path.join(records, f"{arm}-seed{seed}.parquet"))
        rows = record.observed()
        curves["record_zero_variance_share"] = record.zero_variance_share()
        curves["record_rounds"] = int(np.unique(rows["round"]).size)
        curves["record_tokens"] = float(np.nansum(rows["completion_tokens"]))

    curves = run_grpo(preset.warm, preset.pool, learning_rate=options.learning_rate, seed=seed,
                      max_steps=options.max_steps, trainer_class=trainer_class, config_class=config_class,
                      after_training=keep_record, verbose=False, **ARMS[arm])  # fmt: skip
    return {"task": task_name, "arm": arm, "seed": seed, "learning_rate": options.learning_rate, "curves": curves}


# ---- the report ----


def interpolate_at_tokens(curves: dict, tokens: float) -> float:
    """pass@1 at a number of generated tokens, by linear interpolation between evaluations (NaN beyond the run)."""
    x, y = np.asarray(curves["tokens"], float), np.asarray(curves["pass@1"], float)
    return float(np.interp(tokens, x, y)) if tokens <= x[-1] else math.nan


def tokens_to_reach(curves: dict, target: float) -> float:
    """The generated tokens at which pass@1 first reaches `target`, interpolated between evaluations (NaN: never)."""
    x, y = np.asarray(curves["tokens"], float), np.asarray(curves["pass@1"], float)
    for i in range(1, len(y)):
        if y[i] >= target:
            if y[i - 1] >= target:
                return float(x[i - 1])
            return float(x[i - 1] + (target - y[i - 1]) / (y[i] - y[i - 1]) * (x[i] - x[i - 1]))
    return float(x[0]) if y[0] >= target else math.nan


def mastered_at_start_accuracy(curves: dict) -> float:
    """The final pass rate of the pool-sample prompts that were at 8/8 at the first evaluation (forgetting)."""
    rates = np.asarray(curves["pool_pass_rates"], float)
    mastered = rates[0] >= 1.0
    return float(rates[-1][mastered].mean()) if mastered.any() else math.nan


def zero_variance_share(curves: dict) -> float:
    """TRL's `frac_reward_zero_std` over the run: the share of generated groups whose rewards did not vary."""
    return float(np.mean(curves["frac_reward_zero_std"]))


def mean_sd(values) -> tuple[float, float, int]:
    values = np.asarray([v for v in values if v is not None and math.isfinite(v)], float)
    if not values.size:
        return math.nan, math.nan, 0
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0, int(values.size)


def fmt(stats, digits=3) -> str:
    mean, sd, n = stats
    if n == 0:
        return "—"
    return f"{mean:.{digits}f} ± {sd:.{digits}f} ({n})" if n > 1 else f"{mean:.{digits}f} (1)"


def prediction_aucs(options, task: str, arm: str) -> dict[str, tuple]:
    """The AUC of each prediction of a mixed group (A1's history, the composite's features), over every generated
    group of the arm's runs: which predicts a mixed group better."""
    from hf_zpd import PromptRecord
    from hf_zpd.pass_rate import rank_auc

    found = {"history": [], "features": []}
    folder = os.path.join(options.output_dir, task, "records")
    if not os.path.isdir(folder):
        return {}
    for name in sorted(os.listdir(folder)):
        if not name.startswith(arm + "-seed"):
            continue
        rows = PromptRecord.load(os.path.join(folder, name)).observed()
        first_visit = rows["evidence"] < 1e-9
        for key, column in (("history", "history_prediction"), ("features", "feature_prediction")):
            scores = rows[column]
            found[key].append(
                (rank_auc(scores, rows["mixed"]), rank_auc(scores[first_visit], rows["mixed"][first_visit]))
            )
    return {key: (mean_sd([a for a, _ in values]), mean_sd([b for _, b in values])) for key, values in found.items()}


def sweep_section(rows: list[dict]) -> list[str]:
    """The precondition: the plain GRPOTrainer learns on each task, stably, at every learning rate of the sweep."""
    if not rows:
        return []
    lines = ["## The precondition: the plain GRPOTrainer's learning-rate sweep", "",
             "Each line of `sweep/runs.jsonl` (400 steps of 16 prompts x 8 completions; pass@1 at the warm start and "
             "at the end, greedy accuracy, TRL's `frac_reward_zero_std` averaged over the steps):", "",
             "| task | run | pass@1 start → end | greedy start → end | zero-variance share | tokens |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for row in sorted(rows, key=lambda r: (r["task"], r["file"])):
        lines.append(f"| {row['task']} | {row['file'].removesuffix('.json')} | {row['pass@1'][0]:.3f} → "
                     f"{row['pass@1'][-1]:.3f} | {row['greedy'][0]:.3f} → {row['greedy'][-1]:.3f} | "
                     f"{row['frac_reward_zero_std_mean']:.3f} | {row['tokens'][-1]:,} |")  # fmt: skip
    return lines + [""]


def write_report(options) -> str:
    from matplotlib.figure import Figure

    from hf_zpd._io import atomic_write_bytes

    lines = ["# The GRPO curriculum study", "",
             "Every number from the `runs.jsonl` files; regenerate with `.venv/bin/python examples/grpo_study.py "
             "--report`. Means ± sample standard deviation over seeds (count in brackets). pass@1 at temperature 1 (8 "
             "samples per held-out prompt), greedy accuracy, tokens = generated completion tokens (EOS included; "
             "the zero-variance filter's extra generations included). Arms are compared at matched tokens: the "
             "plain trainer's final pass@1 is the target, and `tokens to target` is where each arm's curve first "
             "reaches it (interpolated between evaluations every 50 steps).", ""]  # fmt: skip
    lines += sweep_section(read_runs(os.path.join(options.output_dir, "sweep", "runs.jsonl")))
    csv_rows = []
    for task in sorted(os.listdir(options.output_dir)):
        runs = [run for run in read_runs(os.path.join(options.output_dir, task, "runs.jsonl")) if "arm" in run]
        if not runs:
            continue
        arms = list(dict.fromkeys(run["arm"] for run in runs))
        uniform = [run for run in runs if run["arm"] == "uniform"]
        target = float(np.mean([run["curves"]["pass@1"][-1] for run in uniform])) if uniform else math.nan
        budget = float(np.mean([run["curves"]["tokens"][-1] for run in uniform])) if uniform else math.nan
        lines += [f"## {task}", "", f"Target: the plain trainer's final pass@1, {target:.3f}, after {budget:,.0f} "
                  "generated tokens (mean over its seeds).", "",
                  "| arm | final pass@1 | final greedy | tokens | tokens to target (share of uniform's) | pass@1 at "
                  "half of uniform's tokens | zero-variance share | mastered at start: final pass rate | seconds "
                  "(training) |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        figure = Figure(figsize=(8, 5), layout="constrained")
        axes = figure.subplots()
        for arm in arms:
            chosen = [run for run in runs if run["arm"] == arm]
            curves = [run["curves"] for run in chosen]
            to_target = [tokens_to_reach(c, target) / budget for c in curves]
            row = {
                "task": task, "arm": arm, "seeds": len(curves),
                "final_pass@1": mean_sd([c["pass@1"][-1] for c in curves]),
                "final_greedy": mean_sd([c["greedy"][-1] for c in curves]),
                "tokens": mean_sd([c["tokens"][-1] for c in curves]),
                "tokens_to_target_share": mean_sd(to_target),
                "pass@1_at_half_tokens": mean_sd([interpolate_at_tokens(c, budget / 2) for c in curves]),
                "zero_variance_share": mean_sd([zero_variance_share(c) for c in curves]),
                "mastered_at_start": mean_sd([mastered_at_start_accuracy(c) for c in curves]),
                "seconds": mean_sd([c["seconds"] - c.get("eval_seconds", 0.0) for c in curves]),
            }  # fmt: skip
            reached = sum(math.isfinite(v) for v in to_target)
            lines.append(
                f"| {arm} | {fmt(row['final_pass@1'])} | {fmt(row['final_greedy'])} | {fmt(row['tokens'], 0)} | "
                f"{fmt(row['tokens_to_target_share'])} [{reached} of {len(curves)} reached it] | "
                f"{fmt(row['pass@1_at_half_tokens'])} | {fmt(row['zero_variance_share'])} | "
                f"{fmt(row['mastered_at_start'])} | {fmt(row['seconds'], 0)} |"
            )
            csv_rows.append({k: (v[0] if isinstance(v, tuple) else v) for k, v in row.items()})
            tokens = np.asarray(curves[0]["tokens"], float)
            mean_curve = np.mean([np.asarray(c["pass@1"], float) for c in curves], axis=0)
            axes.plot(tokens, mean_curve, marker="o", markersize=3, label=f"{arm} ({len(curves)} seeds)")
        axes.axhline(target, color="black", linestyle=":", linewidth=1, label="the plain trainer's final pass@1")
        axes.set_xlabel("generated completion tokens")
        axes.set_ylabel("pass@1 (temperature 1), held-out prompts")
        axes.set_title(f"{task}: pass@1 against generated tokens (mean over seeds)")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        atomic_write_bytes(os.path.join(options.output_dir, f"{task}.png"), buffer.getvalue())
        lines += ["", f"![{task}]({task}.png)", ""]
        aucs = {arm: prediction_aucs(options, task, arm) for arm in arms if arm.startswith("zpd")}
        if any(aucs.values()):
            lines += ["Which predicts a mixed group better (ROC AUC against the realised outcome, over every generated "
                      "group of the arm's runs; first visits: groups of a prompt drawn for the first time):", "",
                      "| arm | A1 (history) | A1, first visits | composite (features) | composite, first visits |",
                      "|---|---|---|---|---|"]  # fmt: skip
            for arm, found in aucs.items():
                if found:
                    (h, hf), (f, ff) = found["history"], found["features"]
                    lines.append(f"| {arm} | {fmt(h)} | {fmt(hf)} | {fmt(f)} | {fmt(ff)} |")
            lines.append("")
    atomic_write_bytes(os.path.join(options.output_dir, "grpo.csv"),
                       _csv(csv_rows).encode())  # fmt: skip
    path = os.path.join(options.output_dir, "grpo.md")
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path


def _csv(rows: list[dict]) -> str:
    import csv

    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=["reverse", "add", "reverse-skewed"])
    parser.add_argument("--arms", nargs="+", default=["uniform", "dapo", "zpd", "zpd-a1", "random", "oracle"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--learning_rate", type=float, default=LEARNING_RATE)
    parser.add_argument("--max_steps", type=int, default=400)
    parser.add_argument("--num_threads", type=int, default=1)
    parser.add_argument("--output_dir", default=RESULTS)
    parser.add_argument("--report", action="store_true")
    options = parser.parse_args(argv)
    if options.report:
        print(write_report(options))
        return 0
    if options.task is None:
        parser.error("--task is required (or --report)")
    import torch

    torch.set_num_threads(options.num_threads)
    path = os.path.join(options.output_dir, options.task, "runs.jsonl")
    for seed in options.seeds:
        for arm in options.arms:
            done = {(r["arm"], r["seed"], r["learning_rate"]) for r in read_runs(path)}
            if (arm, seed, options.learning_rate) in done:
                continue
            print(f"[grpo-study] {options.task} {arm} seed {seed}", flush=True)
            append_run(path, run_one(options.task, arm, seed, options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
