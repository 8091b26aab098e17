"""Renders the study (`examples/study.py`) from its runs: `study.md`, `study.csv` and the plots, per task and overall.

    .venv/bin/python examples/study.py --report        # reads <output_dir>/<task>/runs.jsonl for every task

Every number comes from the runs files; nothing is typed in. Means and standard deviations are over seeds (the
sample standard deviation, ddof=1). "Steps to target" is the first evaluation at which a run reaches the tuned
uniform Trainer's final metric (mean over seeds); seconds are training seconds up to it, evaluation excluded and
scoring passes included, on the shared 2-core machines the runs were made on. The runs span several sessions whose
machines ran at different speeds (a uniform run of the same size took twice as long in a later session), so seconds
compare arms run in the same session only; steps compare everywhere.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import defaultdict

import numpy as np
from matplotlib.figure import Figure

from hf_zpd._io import atomic_write_bytes

TASK_TITLES = {
    "tweets": "Tweets, clean labels (all-MiniLM-L6-v2, 640 train / 400 eval, 3 epochs)",
    "tweets_noisy": "Tweets, 20% of the training labels flipped (evaluation labels clean)",
    "austen": "Causal LM: SmolLM2-135M + LoRA on Jane Austen passages (eval perplexity)",
}
SHORT_TITLES = {"tweets": "tweets, clean", "tweets_noisy": "tweets, 20% labels flipped", "austen": "causal LM, Austen"}
ARM_ORDER = [
    "uniform", "literal_loss", "literal_composite", "zpd_loss", "zpd_composite", "random_loss", "random_composite",
    "uniform_60", "zpd_loss_60", "zpd_composite_60", "random_loss_60", "random_composite_60",
]  # fmt: skip
ARM_LABELS = {
    "uniform": "uniform Trainer (tuned lr)",
    "literal_loss": "seed's rule, loss (A1)",
    "literal_composite": "seed's rule, composite",
    "zpd_loss": "default composition, loss (A1)",
    "zpd_composite": "default composition, composite",
    "random_loss": "random control (loss arm's composition)",
    "random_composite": "random control (composite arm's composition)",
    "uniform_60": "uniform Trainer, 60% of the steps",
    "zpd_loss_60": "default composition, loss, 60%",
    "zpd_composite_60": "default composition, composite, 60%",
    "random_loss_60": "random control, loss, 60%",
    "random_composite_60": "random control, composite, 60%",
}
COLOURS = {"uniform": "black", "literal": "tab:red", "zpd": "tab:blue", "random": "tab:orange"}


def read_runs(path: str) -> list[dict]:
    """Every run of a runs file (one JSON object per line); none for a file not written yet."""
    if not os.path.isfile(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def append_run(path: str, run: dict) -> None:
    """Adds one run to a runs file, synced: a killed study loses at most the run in progress."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(run) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def lower_is_better(task: str) -> bool:
    return task.startswith("austen")  # eval perplexity


def metric_name(task: str) -> str:
    return "eval_ppl" if lower_is_better(task) else "eval_accuracy"


def better(task: str, a: float, b: float) -> bool:
    """a at least as good as b."""
    return a <= b if lower_is_better(task) else a >= b


def mean_std(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def fmt(value, digits=4) -> str:
    return "—" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def sweep(runs: list[dict], task: str):
    """Learning rate -> final metrics of the uniform arm per seed; and the tuned rate.

    The tuned rate has the best mean over the sweep's seeds, those run at every swept rate: once the tuned rate
    has more seeds than the others, a mean over all of its seeds would compare different seed sets.
    """
    by_rate = defaultdict(dict)
    for run in runs:
        if run["arm"] == "uniform":
            by_rate[run["learning_rate"]][run["seed"]] = run["evaluations"][-1][metric_name(task)]
    sweep_seeds = set.intersection(*(set(seeds) for seeds in by_rate.values()))
    sign = -1 if lower_is_better(task) else 1
    tuned = max(by_rate, key=lambda rate: sign * np.mean([by_rate[rate][seed] for seed in sweep_seeds]))
    return dict(sorted(by_rate.items())), tuned


def arm_runs(runs: list[dict], tuned: float) -> dict[str, list[dict]]:
    arms = defaultdict(list)
    for run in runs:
        if run["learning_rate"] == tuned:
            arms[run["arm"]].append(run)
    return {arm: sorted(found, key=lambda r: r["seed"]) for arm, found in arms.items()}


def first_reaching(run: dict, task: str, target: float):
    for point in run["evaluations"]:
        if better(task, point[metric_name(task)], target):
            return point["step"], point["train_seconds"]
    return None, None


def per_epoch_means(runs: list[dict], task: str) -> list[float]:
    """The mean metric of the evaluation nearest each epoch end."""
    name = metric_name(task)
    epochs = sorted(
        {round(p["epoch"]) for r in runs for p in r["evaluations"] if abs(p["epoch"] - round(p["epoch"])) < 0.05}
    )
    values = []
    for epoch in epochs:
        points = [min(r["evaluations"], key=lambda p: abs(p["epoch"] - epoch))[name] for r in runs]
        values.append(float(np.mean(points)))
    return values


def task_report(task: str, runs: list[dict], default_mode: str) -> tuple[list[str], list[dict], dict, Figure]:
    name = metric_name(task)
    by_rate, tuned = sweep(runs, task)
    arms = arm_runs(runs, tuned)
    uniform_final = [r["evaluations"][-1][name] for r in arms["uniform"]]
    target, spread = mean_std(uniform_final)
    lines = [f"## {TASK_TITLES.get(task, task)}", ""]
    lines += ["Learning-rate sweep of the uniform Trainer (final " + name.removeprefix("eval_") + " per seed):", ""]
    lines += ["| lr | per seed | mean ± std | tuned |", "|---|---|---|---|"]
    for rate, finals in by_rate.items():
        mean, std = mean_std(list(finals.values()))
        per_seed = " / ".join(f"{finals[s]:.4f} (s{s})" for s in sorted(finals))
        lines.append(f"| {rate:g} | {per_seed} | {mean:.4f} ± {std:.4f} | {'yes' if rate == tuned else ''} |")
    lines += ["", f"Every other arm uses the tuned rate {tuned:g}. Target: the tuned uniform's final "
              f"{name.removeprefix('eval_')}, {target:.4f} (seed spread {spread:.4f}).", ""]  # fmt: skip
    header = ["arm", "seeds", "final (mean ± std)", "per seed", "at each epoch end evaluated (mean)", "steps", "samples",
              "steps to target", "seconds to target", "train s", "scoring s"]  # fmt: skip
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows, summary = [], {}
    for arm in [a for a in ARM_ORDER if a in arms] + sorted(set(arms) - set(ARM_ORDER)):
        found = arms[arm]
        finals = [r["evaluations"][-1][name] for r in found]
        mean, std = mean_std(finals)
        reach = [first_reaching(r, task, target) for r in found]
        steps_to = [s for s, _ in reach if s is not None]
        seconds_to = [t for s, t in reach if s is not None]
        batch = 16 if task != "austen" else 8
        samples = int(np.mean([r["steps"] for r in found])) * batch
        train_seconds = np.mean([r["evaluations"][-1]["train_seconds"] for r in found])
        scoring = np.mean([r.get("scoring_seconds", 0.0) for r in found])
        summary[arm] = {"mean": mean, "std": std, "finals": finals, "steps": found[0]["steps"], "reached": len(steps_to),
                        "steps_to": float(np.mean(steps_to)) if steps_to else None, "seeds": len(found)}  # fmt: skip
        lines.append(
            f"| {ARM_LABELS.get(arm, arm)} | {len(found)} | {mean:.4f} ± {std:.4f} | "
            f"{' / '.join(f'{v:.4f}' for v in finals)} | {' / '.join(f'{v:.3f}' for v in per_epoch_means(found, task))} | "
            f"{found[0]['steps']} | {samples} | "
            f"{fmt(np.mean(steps_to), 0) if steps_to else 'not reached'} ({len(steps_to)}/{len(found)}) | "
            f"{fmt(np.mean(seconds_to), 0) if seconds_to else '—'} | {train_seconds:.0f} | {scoring:.1f} |"
        )
        for run in found:
            for point in run["evaluations"]:
                rows.append({"task": task, "arm": arm, "seed": run["seed"], "learning_rate": run["learning_rate"],
                             "step": point["step"], "epoch": round(point["epoch"], 4), name: point[name],
                             "train_seconds": round(point["train_seconds"], 2)})  # fmt: skip
    lines.append("")
    lines += zone_section(task, arms)
    lines += verdicts(task, summary, target, spread, default_mode)
    return lines, rows, summary, curves_figure(task, arms, target)


def zone_section(task: str, arms: dict[str, list[dict]]) -> list[str]:
    lines = ["What the curriculum arms drew, per epoch (mean over seeds): zone size, examples skipped, out of reach"]
    noisy = task == "tweets_noisy"
    classes = task != "austen"
    if classes:
        lines[0] += "; class shares of the zone (negative / neutral / positive; the pool is about 40 / 38 / 22%)"
    if noisy:
        lines[0] += "; share of flipped labels in the zone, among skipped examples, out of reach, and among all draws "
        lines[0] += "(the pool holds 20%)"
    lines[0] += ":"
    lines.append("")
    header = ["arm", "epoch", "zone", "skipped", "out of reach"] + (["zone classes"] if classes else [])
    if noisy:
        header += ["flipped: zone", "skipped", "out of reach", "draws"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm in [a for a in ARM_ORDER if a in arms and a not in ("uniform", "uniform_60")]:
        epochs = defaultdict(list)
        for run in arms[arm]:
            for entry in run.get("epochs", []):
                if not entry["uniform"]:
                    epochs[entry["epoch"]].append(entry)
        for epoch, entries in sorted(epochs.items()):

            def avg(key, entries=entries):
                values = [e[key] for e in entries if e.get(key) is not None]
                return float(np.mean(values)) if values else None

            cells = [ARM_LABELS.get(arm, arm), str(epoch), fmt(avg("zone_size"), 0), fmt(avg("num_skipped"), 0),
                     fmt(avg("num_out_of_reach"), 0)]  # fmt: skip
            if classes:
                shares = np.mean([np.asarray(e["zone_classes"]) / max(sum(e["zone_classes"]), 1) for e in entries], 0)
                cells.append(" / ".join(f"{100 * s:.0f}%" for s in shares))
            if noisy:
                for key in ("flipped_share_zone", "flipped_share_skipped", "flipped_share_out_of_reach",
                            "flipped_draw_share"):  # fmt: skip
                    value = avg(key)
                    cells.append("—" if value is None else f"{100 * value:.0f}%")
            lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def verdicts(task: str, summary: dict, target: float, spread: float, default_mode: str) -> list[str]:
    """The issue's targets, checked against the numbers above, met or missed, with the margin."""
    default, random, reduced = f"zpd_{default_mode}", f"random_{default_mode}", f"zpd_{default_mode}_60"
    lines = [f"Targets (the default is `{default}`):", ""]
    if default not in summary:
        return lines + [f"- the default arm `{default}` has no runs for this task.", ""]
    ours = summary[default]
    gap = ours["mean"] - target
    if task == "tweets":
        met = gap >= -spread
        lines.append(f"- never below the tuned uniform by more than the seed spread: {'met' if met else 'MISSED'} "
                     f"({100 * gap:+.2f} points; spread {100 * spread:.2f}).")  # fmt: skip
        if reduced in summary and f"random_{default_mode}_60" in summary:
            r60, ours60 = summary[f"random_{default_mode}_60"], summary[reduced]
            beats = ours60["mean"] > r60["mean"]
            close = abs(ours60["mean"] - target) <= spread
            lines.append(f"- at 60% of the samples, beats the random control at 60%: {'met' if beats else 'MISSED'} "
                         f"({100 * (ours60['mean'] - r60['mean']):+.2f} points); within noise of full uniform: "
                         f"{'met' if close else 'MISSED'} ({100 * (ours60['mean'] - target):+.2f} points, spread "
                         f"{100 * spread:.2f}).")  # fmt: skip
    elif task == "tweets_noisy":
        met = gap >= 0.02
        lines.append(f"- beats the tuned uniform by at least 2 points: {'met' if met else 'MISSED'} "
                     f"({100 * gap:+.2f} points; spread {100 * spread:.2f}).")  # fmt: skip
    else:
        at_or_below = ours["mean"] <= target
        reached, uniform = ours["steps_to"], summary["uniform"]
        fraction = reached / uniform["steps"] if reached is not None else None
        # Met only when every seed gets there: a mean target that one lucky seed reaches early says little.
        fast = fraction is not None and fraction <= 0.7 and ours["reached"] == ours["seeds"]
        lines.append(f"- eval perplexity at equal steps at or below uniform's: {'met' if at_or_below else 'MISSED'} "
                     f"({ours['mean']:.3f} against {target:.3f}); or uniform's final perplexity in at most 0.7 of its "
                     f"steps, on every seed: {'met' if fast else 'MISSED'} "
                     f"({'not reached' if fraction is None else f'{fraction:.2f} of the steps'}, "
                     f"{ours['reached']}/{ours['seeds']} seeds reached it; the tuned uniform itself: "
                     f"{fmt(uniform['steps_to'], 0)} steps, {uniform['reached']}/{uniform['seeds']} seeds).")  # fmt: skip
    if random in summary:
        lines.append(f"- against the random control drawn with the same composition: "
                     f"{100 * (ours['mean'] - summary[random]['mean']) if task != 'austen' else ours['mean'] - summary[random]['mean']:+.2f}"
                     f"{' points' if task != 'austen' else ' perplexity'} (the detector's own contribution).")  # fmt: skip
    return lines + [""]


def curves_figure(task: str, arms: dict[str, list[dict]], target: float) -> Figure:
    name = metric_name(task)
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    full, reduced = figure.subplots(1, 2, sharey=True)
    for axes, suffix in ((full, ""), (reduced, "_60")):
        for arm, found in arms.items():
            if arm.endswith("_60") != bool(suffix):
                continue
            steps = sorted({p["step"] for r in found for p in r["evaluations"]})
            matrix = np.array([[next(p[name] for p in r["evaluations"] if p["step"] == s) for s in steps]
                               for r in found if len(r["evaluations"]) == len(steps)])  # fmt: skip
            if matrix.size == 0:
                continue
            colour = COLOURS[arm.split("_")[0]]
            style = "--" if "composite" in arm else "-"
            mean = matrix.mean(0)
            axes.plot(steps, mean, style, color=colour, marker="o", markersize=3, label=ARM_LABELS.get(arm, arm))
            if len(matrix) > 1:
                std = matrix.std(0, ddof=1)
                axes.fill_between(steps, mean - std, mean + std, color=colour, alpha=0.08)
        axes.axhline(target, color="grey", linewidth=0.8, linestyle=":")
        axes.set_xlabel("optimizer step")
        axes.set_title("full compute" if not suffix else "60% of the samples")
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize="x-small")
    full.set_ylabel("eval " + name.removeprefix("eval_"))
    figure.suptitle(
        f"{TASK_TITLES.get(task, task)}\nmean over seeds; shaded: ± 1 std; dotted: the tuned uniform's final value",
        fontsize="medium",
    )
    return figure


PILOT_VARIANTS = {
    "zpd": "the default (k = 2, nearest fill, class balance, guard, anneal 0.125)",
    "pilot_k3": "k = 3",
    "pilot_weighted": "weighted fill (T = 0.25)",
    "pilot_uniform_fill": "uniform fill",
    "pilot_no_guard": "no learnability guard",
    "pilot_no_balance": "no class balance",
    "pilot_no_anneal": "no annealing",
    "literal": "the seed's rule (zone only)",
    "random": "random control of the default",
}


def pilot_section(output_dir: str) -> list[str]:
    """The seed-0 pilot that chose the default composition: each variant changes one part of it."""
    finals = defaultdict(dict)
    for task in ("tweets", "tweets_noisy"):
        path = os.path.join(output_dir, "pilot", task, "runs.jsonl")
        if not os.path.isfile(path):
            return []
        runs = read_runs(path)
        _, tuned = sweep(runs, task)
        for run in runs:
            if run["learning_rate"] == tuned:
                finals[run["arm"]][task] = run["evaluations"][-1]["eval_accuracy"]
    lines = ["## The pilot: how the default composition was chosen", ""]
    lines += ["Seed 0 only, both tweet tasks, the tuned rate; each variant changes one part of the default. Final "
              "eval accuracy (one seed: differences below the study's seed spread, 1.4 to 2.6 points, are noise):", ""]  # fmt: skip
    lines += ["| variant | clean, loss | clean, composite | noisy, loss | noisy, composite |", "|---|---|---|---|---|"]
    for prefix, label in PILOT_VARIANTS.items():
        cells = []
        for task in ("tweets", "tweets_noisy"):
            for mode in ("loss", "composite"):
                cells.append(fmt(finals.get(f"{prefix}_{mode}", {}).get(task)))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    uniform = [finals["uniform"].get(t) for t in ("tweets", "tweets_noisy")]
    lines += [f"| uniform Trainer (tuned) | {fmt(uniform[0])} | | {fmt(uniform[1])} | |", ""]
    cells = [(task, mode) for task in ("tweets", "tweets_noisy") for mode in ("loss", "composite")]
    default = {cell: finals.get(f"zpd_{cell[1]}", {}).get(cell[0]) for cell in cells}
    beat_everywhere, worse_on_noise = [], []
    for prefix, label in PILOT_VARIANTS.items():
        if not prefix.startswith("pilot_"):
            continue
        values = {cell: finals.get(f"{prefix}_{cell[1]}", {}).get(cell[0]) for cell in cells}
        if all(values[c] is not None and default[c] is not None and values[c] > default[c] for c in cells):
            beat_everywhere.append(label)
        noisy = [c for c in cells if c[0] == "tweets_noisy"]
        if all(values[c] is not None and default[c] is not None and values[c] < default[c] for c in noisy):
            worse_on_noise.append(label)
    lines.append(
        (f"Variants better than the default in all four cells: {', '.join(beat_everywhere)}. "
         if beat_everywhere else "No variant was better than the default in all four cells. ")
        + (f"Worse than it on the noisy task in both modes: {', '.join(worse_on_noise)}." if worse_on_noise else "")
    )  # fmt: skip
    lines.append("")
    return lines


def summary_figure(summaries: dict[str, dict]) -> Figure:
    """Per task, every arm's final metric (mean over seeds, whiskers: ± 1 std), the tuned uniform's as a line."""
    figure = Figure(figsize=(5.2 * len(summaries), 4.8), layout="constrained")
    panels = figure.subplots(1, len(summaries), squeeze=False)[0]
    for axes, (task, summary) in zip(panels, summaries.items(), strict=True):
        arms = [a for a in ARM_ORDER if a in summary]
        means = [summary[a]["mean"] for a in arms]
        stds = [summary[a]["std"] for a in arms]
        colours = [COLOURS[a.split("_")[0]] for a in arms]
        # Points, not bars: the axis does not start at zero, and a bar's length would then mean nothing.
        for row, (mean, std, colour) in enumerate(zip(means, stds, colours, strict=True)):
            axes.errorbar(mean, row, xerr=std, fmt="o", color=colour, capsize=3, markersize=6)
        axes.set_yticks(range(len(arms)), [ARM_LABELS.get(a, a) for a in arms], fontsize="small")
        axes.invert_yaxis()
        axes.axvline(summary["uniform"]["mean"], color="black", linestyle=":", linewidth=1)
        low = min(m - d for m, d in zip(means, stds, strict=True))
        high = max(m + d for m, d in zip(means, stds, strict=True))
        axes.set_xlim(low - 0.1 * (high - low), high + 0.1 * (high - low))
        axes.set_xlabel("eval perplexity, final\n(lower is better)" if task == "austen" else "eval accuracy, final")
        axes.set_title(SHORT_TITLES.get(task, task), fontsize="medium")
        axes.grid(axis="x", alpha=0.3)
    figure.suptitle("Final metric per arm, mean over seeds (whiskers: ± 1 std; dotted: the tuned uniform Trainer)")
    return figure


def png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def write_report(output_dir: str) -> str:
    from hf_zpd.config import ZPDArguments

    default_mode = ZPDArguments().difficulty_mode
    lines = ["# The study behind hf_zpd's defaults", ""]
    command = os.path.join(output_dir, "command.txt")
    if os.path.isfile(command):
        lines += ["Commands (from the repository root):", "", "```bash", open(command).read().strip(), "```", ""]
    lines += [__doc__.split("\n\n", 2)[2].strip(), ""]
    all_rows, summaries, sections = [], {}, []
    import study_regimes  # examples/study_regimes.py

    regime_sections, regime_summaries = [], {}
    for task in study_regimes.REGIME_TITLES:
        path = os.path.join(output_dir, task, "runs.jsonl")
        if not os.path.isfile(path):
            continue
        runs = read_runs(path)
        if not any(run["arm"] == "uniform" for run in runs):
            continue
        _, tuned = sweep(runs, task)
        default_arm = study_regimes.DEFAULT_ARM
        if not any(run["arm"] == default_arm for run in runs):
            default_arm = study_regimes.PREVIOUS_DEFAULT_ARM
        task_lines, regime_summaries[task], figure = study_regimes.regime_report(task, runs, tuned, default_arm)
        atomic_write_bytes(os.path.join(output_dir, f"{task}.png"), png(figure))
        regime_sections += task_lines + [f"![{task}]({task}.png)", ""]
        for run in runs:
            for point in run["evaluations"]:
                all_rows.append({"task": task, "arm": run["arm"], "seed": run["seed"],
                                 "learning_rate": run["learning_rate"], "step": point["step"],
                                 "epoch": round(point["epoch"], 4), metric_name(task): point[metric_name(task)],
                                 "train_seconds": round(point["train_seconds"], 2)})  # fmt: skip
    if regime_sections:
        lines += [
            "# Where a curriculum can pay: the regimes",
            "",
            study_regimes.__doc__.split("\n\n", 1)[1].strip(),
            "",
        ]
        lines += study_regimes.summary_table(regime_summaries) + study_regimes.no_harm_table(regime_summaries)
        lines += regime_sections
        lines += ["# The first study (hf_zpd 0.2's composition, 640 tweets, 3 epochs)", ""]
    for task in TASK_TITLES:
        path = os.path.join(output_dir, task, "runs.jsonl")
        if not os.path.isfile(path):
            continue
        task_lines, rows, summaries[task], figure = task_report(task, read_runs(path), default_mode)
        atomic_write_bytes(os.path.join(output_dir, f"{task}.png"), png(figure))
        sections += task_lines + [f"![{task}]({task}.png)", ""]
        all_rows += rows
    if summaries:
        atomic_write_bytes(os.path.join(output_dir, "summary.png"), png(summary_figure(summaries)))
        lines += ["![final metric per arm](summary.png)", ""]
    lines += sections + pilot_section(output_dir)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=sorted({k for row in all_rows for k in row}))
    writer.writeheader()
    writer.writerows(all_rows)
    atomic_write_bytes(os.path.join(output_dir, "study.csv"), buffer.getvalue().encode())
    report = os.path.join(output_dir, "study.md")
    atomic_write_bytes(report, "\n".join(lines).encode())
    return report
