"""The regimes section of the study report: each task of `examples/study.py` against its physical limit, with the
compute counted in full. `study_report.write_report` calls it for every regime task that has runs.

Every number comes from the runs files. Means and standard deviations are over seeds (ddof=1). Compute: optimizer
steps, examples backpropagated (steps x batch), examples forwarded by the scoring passes, and "training-example
equivalents": the examples backpropagated plus the scored ones times the cost of a scoring forward relative to a
training example, measured from the same task's runs (scoring seconds per scored example over training seconds per
trained example, scoring excluded). Seconds compare runs of one session only; the other counts compare everywhere.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
from matplotlib.figure import Figure
from study_report import arm_runs, lower_is_better, mean_std  # examples/study_report.py
from study_report import metric_name as metric

REGIME_TITLES = {
    "tweets_clean": "Guard rail: tweets, clean labels, every example seen 3 times (all-MiniLM-L6-v2, 640 train / 400 eval)",
    "tweets_budget": "Budget over a large pool: tweets (MiniLM, a pool of 6,400, a budget of 128 steps of 16 = 2,048 samples)",
    "bible_budget": "Budget over a large pool: King James verses, 6 book groups (MiniLM, a pool of 6,400, 128 steps of 16)",
    "austen_budget": "Budget over a large pool: causal LM, SmolLM2-135M + LoRA on Jane Austen (a pool of 1,600, 48 steps of 8)",
    "tweets_noise40": "Heavy noise: tweets, 40% of the training labels flipped (MiniLM, 1,600 train, 3 epochs)",
    "bible_noise40": "Heavy noise: King James verses, 40% of the training labels flipped (MiniLM, 1,600 train, 3 epochs)",
    "tweets_noise20": "Mild noise: tweets, 20% of the training labels flipped (MiniLM, 1,600 train, 3 epochs)",
    "bible_noise20": "Mild noise: King James verses, 20% of the training labels flipped (MiniLM, 1,600 train, 3 epochs)",
    "bible_clean": "Guard rail: King James verses, clean labels (MiniLM, 1,600 train, 3 epochs)",
    "tweets_annotator": "Real annotator noise: tweets as the corpus has them, evaluated on tweets every annotator agreed on",
}  # fmt: skip
REGIME_OF = {
    "tweets_clean": "clean", "tweets_budget": "budget", "bible_budget": "budget", "austen_budget": "budget",
    "tweets_noise40": "noise", "bible_noise40": "noise", "tweets_annotator": "annotator",
    "tweets_noise20": "noise", "bible_noise20": "noise", "bible_clean": "clean",
}  # fmt: skip
# The default arm of each hf_zpd version in these runs: 0.4's default moves the label audit's list out of the zone
# (`exclude_label_errors=True`); 0.3's did not. In a budget under one pass the defaults are the plain Trainer.
DEFAULT_ARM, PREVIOUS_DEFAULT_ARM = "zpd-audit", "zpd"


def final(run: dict, task: str) -> float:
    return run["evaluations"][-1][metric(task)]


def points(task: str, value: float) -> str:
    """A difference in the task's unit: accuracy points, or perplexity."""
    return f"{value:+.3f} ppl" if lower_is_better(task) else f"{100 * value:+.2f} points"


def gain(task: str, ours: float, theirs: float) -> float:
    """How much better `ours` is than `theirs` (positive is better)."""
    return theirs - ours if lower_is_better(task) else ours - theirs


def forward_cost(runs: list[dict]) -> float | None:
    """A scoring forward's cost relative to a training example, from the runs that scored (median)."""
    ratios = []
    for run in runs:
        scored, scoring = run.get("scored_examples", 0), run.get("scoring_seconds", 0.0)
        train_seconds = run["evaluations"][-1]["train_seconds"] - scoring
        if scored and scoring > 0 and train_seconds > 0:
            ratios.append((scoring / scored) / (train_seconds / run["trained_examples"]))
    return float(np.median(ratios)) if ratios else None


def compute_of(run: dict, cost: float | None) -> float:
    """Training-example equivalents: examples backpropagated, plus scored examples at `cost` each; a reference
    model's training and scoring count in full."""
    reference = run.get("reference", {})
    trained = run["trained_examples"] + reference.get("trained_examples", 0)
    return trained + (cost or 0.0) * (run.get("scored_examples", 0) + reference.get("scored_examples", 0))


def arm_order(arms) -> list[str]:
    fixed = [a for a in ("uniform", "uniform_x2", "uniform_pooled", "limit") if a in arms]
    curricula = sorted(a for a in arms if a.startswith("zpd"))
    controls = sorted(a for a in arms if a.startswith("random"))
    return fixed + curricula + controls + sorted(set(arms) - set(fixed) - set(curricula) - set(controls))


def control_of(arm: str) -> str:
    return "random" + arm.removeprefix("zpd")


def uniform_at(compute: float, uniform: tuple[float, float], doubled: tuple[float, float] | None) -> float | None:
    """The uniform Trainer's final metric at `compute`, interpolated linearly between its run at the budget and
    at twice it (`None` outside that range: no extrapolation)."""
    if doubled is None:
        return None
    (c1, m1), (c2, m2) = uniform, doubled
    if not c1 <= compute <= c2:
        return None
    return m1 + (m2 - m1) * (compute - c1) / (c2 - c1)


def regime_report(task: str, runs: list[dict], tuned: float, default_arm: str) -> tuple[list[str], dict, Figure]:
    """The task's section: the arms against uniform, the random control and the limit, with compute; the targets."""
    name = metric(task)
    regime = REGIME_OF[task]
    arms = arm_runs(runs, tuned)
    cost = forward_cost([r for found in arms.values() for r in found])
    uniform_mean, uniform_std = mean_std([final(r, task) for r in arms.get("uniform", [])])
    limit = mean_std([final(r, task) for r in arms["limit"]]) if "limit" in arms else None
    uniform_compute = (
        float(np.mean([compute_of(r, cost) for r in arms.get("uniform", [])])) if "uniform" in arms else 0
    )
    doubled = None
    if "uniform_x2" in arms:
        doubled = (float(np.mean([compute_of(r, cost) for r in arms["uniform_x2"]])),
                   mean_std([final(r, task) for r in arms["uniform_x2"]])[0])  # fmt: skip
    lines = [f"## {REGIME_TITLES.get(task, task)}", ""]
    lines += [f"Every arm uses the uniform Trainer's tuned learning rate {tuned:g}. A scoring forward costs "
              f"{'—' if cost is None else f'{cost:.2f}'} of a training example here (measured from these runs).", ""]  # fmt: skip
    header = ["arm", "seeds", f"final {name.removeprefix('eval_')}", "per seed", "vs uniform", "vs its random control",
              "steps", "backprop", "scored", "compute", "train s", "scoring s"]  # fmt: skip
    if regime in ("noise", "annotator") and limit:
        header.insert(6, "damage recovered")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    summary = {}
    for arm in arm_order(arms):
        found = arms[arm]
        finals = [final(r, task) for r in found]
        mean, std = mean_std(finals)
        compute = float(np.mean([compute_of(r, cost) for r in found]))
        control = arms.get(control_of(arm)) if arm.startswith("zpd") else None
        seeds = {r["seed"] for r in found}
        paired = [r for r in (control or []) if r["seed"] in seeds]
        versus_control = None
        if paired:
            mine = [final(r, task) for r in found if r["seed"] in {p["seed"] for p in paired}]
            versus_control = float(np.mean(mine) - np.mean([final(r, task) for r in paired]))
            if lower_is_better(task):
                versus_control = -versus_control
        summary[arm] = {"mean": mean, "std": std, "seeds": len(found), "compute": compute,
                        "vs_control": versus_control, "finals": finals}  # fmt: skip
        cells = [arm, str(len(found)), f"{mean:.4f} ± {std:.4f}", " / ".join(f"{v:.4f}" for v in finals),
                 points(task, gain(task, mean, uniform_mean)) if "uniform" in arms else "—",
                 "—" if versus_control is None else points(task, versus_control),
                 f"{np.mean([r['steps'] for r in found]):.0f}", f"{np.mean([r['trained_examples'] for r in found]):.0f}",
                 f"{np.mean([r.get('scored_examples', 0) for r in found]):.0f}", f"{compute:.0f}",
                 f"{np.mean([r['evaluations'][-1]['train_seconds'] for r in found]):.0f}",
                 f"{np.mean([r.get('scoring_seconds', 0.0) for r in found]):.1f}"]  # fmt: skip
        if regime in ("noise", "annotator") and limit:
            damage = gain(task, limit[0], uniform_mean)
            cells.insert(6, f"{100 * gain(task, mean, uniform_mean) / damage:+.0f}%" if damage > 0 else "—")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if limit:
        lines.append(f"The physical limit (`limit`): {limit[0]:.4f} ± {limit[1]:.4f}; the tuned uniform Trainer: "
                     f"{uniform_mean:.4f} ± {uniform_std:.4f}.")  # fmt: skip
        if regime in ("noise", "annotator"):
            lines[-1] += (f" The damage of the noise (limit minus uniform): {points(task, gain(task, limit[0], uniform_mean))}"
                          "; \"damage recovered\" is each arm's gain over uniform as a share of it.")  # fmt: skip
        lines.append("")
    lines += composition_section(task, arms)
    lines += targets(task, regime, summary, default_arm, uniform_mean, uniform_std, limit, uniform_compute, doubled)
    return lines, summary, curves(task, arms, uniform_mean)


def composition_section(task: str, arms: dict[str, list[dict]]) -> list[str]:
    """What the curriculum arms drew per epoch (mean over seeds), and how many wrong labels each part held."""
    wrong = any(e.get("flipped_share_drawn") is not None for found in arms.values() for r in found
                for e in r.get("epochs", []))  # fmt: skip
    header = ["arm", "epoch", "zone", "drawn", "skipped", "out of reach", "max draws"]
    if wrong:
        header += ["wrong labels: zone", "out of reach", "draws", "recall of out of reach"]
    lines = ["What the curriculum arms drew, per epoch (mean over seeds)"
             + ("; shares of wrong labels (flipped, or not agreed by every annotator) in each part:" if wrong else ":"),
             "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]  # fmt: skip
    for arm in arm_order(arms):
        if not (arm.startswith("zpd") or arm.startswith("random")):
            continue
        epochs = defaultdict(list)
        for run in arms[arm]:
            for entry in run.get("epochs", []):
                epochs[entry["epoch"]].append(entry)
        for epoch, entries in sorted(epochs.items()):

            def avg(key, entries=entries):
                values = [e[key] for e in entries if e.get(key) is not None]
                return float(np.mean(values)) if values else None

            cells = [arm, str(epoch)] + [_count(avg(k)) for k in ("zone_size", "num_drawn", "num_skipped",
                                                                   "num_out_of_reach", "max_draws")]  # fmt: skip
            if wrong:
                cells += [_share(avg(k)) for k in ("flipped_share_zone", "flipped_share_out_of_reach",
                                                    "flipped_draw_share", "flipped_recall_out_of_reach")]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _count(value) -> str:
    return "—" if value is None else f"{value:.0f}"


def _share(value) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"


def targets(task, regime, summary, default_arm, uniform_mean, uniform_std, limit, uniform_compute, doubled) -> list:
    """The issue's targets for this regime, checked against the numbers above: met or missed, with the margin."""
    name = f"`{default_arm}`, the defaults" + (
        " with the budget mode on (`epoch_fraction=None`; hf_zpd's defaults leave "
        "a budget under one pass to the plain Trainer, which is `uniform` here)"
        if regime == "budget"
        else ""
    )
    lines = [f"Targets ({name}):", ""]
    ours = summary.get(default_arm)
    if ours is None or "uniform" not in summary:
        return lines + [f"- no runs of `{default_arm}` and `uniform` to check against.", ""]
    delta = gain(task, ours["mean"], uniform_mean)
    control = ours["vs_control"]
    spread = max(uniform_std, ours["std"])
    if regime == "budget":
        at_equal = uniform_at(ours["compute"], (uniform_compute, uniform_mean), doubled)
        versus_equal = None if at_equal is None else gain(task, ours["mean"], at_equal)
        met = versus_equal is not None and versus_equal > spread and control is not None and control > spread
        lines.append(f"- at equal total compute (scoring counted), above the uniform Trainer and the random control by "
                     f"more than the seed spread ({points(task, spread)}): {'met' if met else 'MISSED'} (against uniform "
                     f"at the same compute, interpolated between its runs at the budget and at twice it: "
                     f"{'not in range' if versus_equal is None else points(task, versus_equal)}; at equal steps "
                     f"{points(task, delta)}; against the random control "
                     f"{'—' if control is None else points(task, control)}; compute {ours['compute']:.0f} against "
                     f"uniform's {uniform_compute:.0f}).")  # fmt: skip
    elif regime == "noise":
        damage = gain(task, limit[0], uniform_mean) if limit else None
        share = delta / damage if damage else None
        lines.append(f"- at least half of the noise damage recovered: {'met' if share is not None and share >= 0.5 else 'MISSED'}"
                     f" ({'—' if share is None else f'{100 * share:.0f}%'} of {points(task, damage or 0)}); at least 3 "
                     f"points over the tuned uniform at equal steps: {'met' if delta >= 0.03 else 'MISSED'} "
                     f"({points(task, delta)}).")  # fmt: skip
    elif regime == "annotator":
        lines.append(f"- above the tuned uniform by more than its seed spread ({points(task, uniform_std)}): "
                     f"{'met' if delta > uniform_std else 'MISSED'} ({points(task, delta)}).")  # fmt: skip
    else:
        lines.append(f"- never below the tuned uniform by more than its spread ({points(task, uniform_std)}): "
                     f"{'met' if delta >= -uniform_std else 'MISSED'} ({points(task, delta)}).")  # fmt: skip
    reference, pooled = summary.get("zpd-reference"), summary.get("uniform_pooled")
    if reference is not None and pooled is not None:
        # The reference model needs as many labelled rows again; the uniform Trainer could train on them instead.
        lines.append(f"- `zpd-reference` against the uniform Trainer on the training set and the reference's rows "
                     f"together (`uniform_pooled`, the same labelled data without a curriculum): "
                     f"{points(task, gain(task, reference['mean'], pooled['mean']))} (spread "
                     f"{points(task, max(reference['std'], pooled['std']))}; compute {reference['compute']:.0f} against "
                     f"{pooled['compute']:.0f}).")  # fmt: skip
    if regime in ("budget", "noise"):
        met = control is not None and control > spread
        lines.append(f"- the detector beats its own random control by more than the spread: {'met' if met else 'MISSED'} "
                     f"({'—' if control is None else points(task, control)}; spread {points(task, spread)}).")  # fmt: skip
    return lines + [""]


def curves(task: str, arms: dict[str, list[dict]], uniform_mean: float) -> Figure:
    """Eval metric against training-example equivalents, mean over seeds, one line per arm."""
    name = metric(task)
    cost = forward_cost([r for found in arms.values() for r in found]) or 0.0
    figure = Figure(figsize=(7.5, 4.4), layout="constrained")
    axes = figure.subplots()
    for arm in arm_order(arms):
        found = arms[arm]
        steps = sorted({p["step"] for r in found for p in r["evaluations"]})
        rows = [[next((p[name] for p in r["evaluations"] if p["step"] == s), math.nan) for s in steps] for r in found]
        mean = np.nanmean(np.array(rows), axis=0)
        per_step = np.mean([compute_of(r, cost) / max(r["steps"], 1) for r in found])
        style = ":" if arm == "limit" else "--" if arm.startswith("random") else "-"
        colour = "black" if arm.startswith("uniform") or arm == "limit" else None
        axes.plot(np.array(steps) * per_step, mean, style, marker="o", markersize=3, color=colour, label=arm)
    axes.axhline(uniform_mean, color="grey", linewidth=0.8, linestyle=":")
    axes.set_xscale("log")  # the budget tasks' limits train many times the budget
    axes.set_xlabel("compute (training-example equivalents, scoring counted; log scale)")
    axes.set_ylabel("eval " + name.removeprefix("eval_") + (" (lower is better)" if lower_is_better(task) else ""))
    axes.set_title(REGIME_TITLES.get(task, task), fontsize="small")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="x-small", ncols=2)
    return figure


def summary_table(summaries: dict[str, dict]) -> list[str]:
    """One row per task: the tuned uniform Trainer, 0.4's default (`zpd-audit`) and its random control, 0.3's default
    (`zpd`), the limit, each as mean ± std over its seeds (and the number of seeds)."""
    lines = ["Every task at a glance (final metric, mean ± std (seeds); gaps in the task's unit; in the budget tasks "
             "`zpd` is the budget mode, opt-in: the defaults leave a budget under one pass to the plain Trainer):", "",
             f"| task | uniform (tuned) | 0.4 default `{DEFAULT_ARM}` | vs uniform | its random control | vs random "
             f"| 0.3 default `{PREVIOUS_DEFAULT_ARM}` | vs uniform | limit |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip

    def cell(entry):
        return "—" if entry is None else f"{entry['mean']:.4f} ± {entry['std']:.4f} ({entry['seeds']})"

    def versus(task, entry, other):
        return points(task, gain(task, entry["mean"], other["mean"])) if entry and other else "—"

    for task, summary in summaries.items():
        uniform, ours, previous = summary.get("uniform"), summary.get(DEFAULT_ARM), summary.get(PREVIOUS_DEFAULT_ARM)
        lines.append(
            f"| {task} | {cell(uniform)} | {cell(ours)} | {versus(task, ours, uniform)} | "
            f"{cell(summary.get(control_of(DEFAULT_ARM)))} | "
            f"{points(task, ours['vs_control']) if ours and ours['vs_control'] is not None else '—'} | "
            f"{cell(previous)} | {versus(task, previous, uniform)} | {cell(summary.get('limit'))} |"
        )
    return lines + [""]


def no_harm_table(summaries: dict[str, dict]) -> list[str]:
    """The no-harm target, task by task: 0.4's default at least the tuned uniform Trainer minus the seed spread (the
    larger of the two arms' standard deviations), with 0.3's default beside it. Seeds are paired where both ran."""
    lines = [f"No harm by default: `{DEFAULT_ARM}` (hf_zpd 0.4's defaults) against the tuned uniform Trainer, target "
             "at least uniform minus the seed spread; 0.3's default beside it:", "",
             "| task | regime | seeds | uniform | 0.4 default | gap | spread | target | 0.3 default | gap |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip

    def cell(entry):
        return f"{entry['mean']:.4f} ({entry['seeds']})"

    for task, summary in summaries.items():
        uniform, ours, previous = summary.get("uniform"), summary.get(DEFAULT_ARM), summary.get(PREVIOUS_DEFAULT_ARM)
        if REGIME_OF.get(task) == "budget" or uniform is None or ours is None:
            continue
        delta = gain(task, ours["mean"], uniform["mean"])
        spread = max(uniform["std"], ours["std"])
        lines.append(
            f"| {task} | {REGIME_OF[task]} | {ours['seeds']} (uniform {uniform['seeds']}) | {uniform['mean']:.4f} | "
            f"{ours['mean']:.4f} | {points(task, delta)} | {points(task, spread).lstrip('+')} | "
            f"{'met' if delta >= -spread else 'MISSED'} | "
            f"{'—' if previous is None else cell(previous)} | "
            f"{'—' if previous is None else points(task, gain(task, previous['mean'], uniform['mean']))} |"
        )
    return lines + [""]
