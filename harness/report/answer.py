"""The report's opening: the answers a reader came for, each from this run's numbers with its interval.

Three questions, in the order a reader asks them: did fine-tuning help ID accuracy (the best
selected fine-tuned run against zero-shot, Wilson intervals); which method x score detects best
on each OoD test set (AUROC, percentile bootstrap), with the runner-up for scale; and is CMA −
FLYP resolved (the paired bootstrap of the average over OoD sets, per score).
"""

from __future__ import annotations

import pandas as pd

from harness import methods
from harness.report import uncertainty
from harness.methods import label
from harness.report.markdown import ci_cell
from harness.report.stats import id_accuracy_interval


def _fine_tuned(method: str) -> bool:
    """A method whose weights differ from the start: it trains, or sets them from a run that did."""
    spec = methods.get(method)
    return spec.trains or spec.sets_weights


def accuracy_answer(chosen: dict[str, pd.Series], ood: pd.DataFrame) -> str | None:
    """Whether the best selected fine-tuned run beats zero-shot's ID accuracy, with both intervals."""
    tuned = {m: r for m, r in chosen.items() if _fine_tuned(m) and not pd.isna(r["id_accuracy"])}
    if "zero-shot" not in chosen or not tuned:
        return None
    zero = chosen["zero-shot"]
    best_method = max(tuned, key=lambda m: (tuned[m]["id_accuracy"], m))
    best = tuned[best_method]
    zero_iv, best_iv = id_accuracy_interval(zero, ood), id_accuracy_interval(best, ood)
    if zero_iv is None or best_iv is None:
        return None
    (z_low, z_high), (b_low, b_high) = zero_iv, best_iv
    gain = 100 * (best["id_accuracy"] - zero["id_accuracy"])
    if b_low > z_high:
        verdict = "**yes**"
    elif b_high < z_low:
        verdict = "**no, it hurt**"
    else:
        verdict = "**not resolved**"
    relation = "do not overlap" if b_low > z_high or b_high < z_low else "overlap"
    return (f"- **Did fine-tuning help ID accuracy?** {verdict}: the best fine-tuned run, {label(best_method)}, "
            f"reaches {ci_cell(best['id_accuracy'], b_low, b_high)}% against zero-shot's "
            f"{ci_cell(zero['id_accuracy'], z_low, z_high)}% ({gain:+.2f} points; the Wilson 95% intervals "
            f"{relation}).")


def detection_answers(chosen: dict[str, pd.Series], ci: pd.DataFrame) -> list[str]:
    """Per OoD test set (then the average): the method x score with the highest AUROC, and the runner-up."""
    if ci.empty:
        return []
    names = {r["run_id"]: m for m, r in chosen.items()}
    auroc = ci[(ci["metric"] == "auroc") & ci["run_id"].isin(names)]
    lines = []
    sets = sorted(d for d in auroc["dataset"].unique() if d != uncertainty.AVERAGE) + [uncertainty.AVERAGE]
    for dataset in sets:
        ranked = auroc[auroc["dataset"] == dataset].sort_values(["estimate", "run_id", "score"],
                                                                ascending=[False, True, True])
        if ranked.empty:
            continue
        where = "the average over OoD sets" if dataset == uncertainty.AVERAGE else dataset

        def cell(row):
            return f"{label(names[row['run_id']])} × {row['score']}, AUROC {ci_cell(row['estimate'], row['low'], row['high'])}"

        top = ranked.iloc[0]
        tied = len(ranked) > 1 and f"{100 * ranked.iloc[1]['estimate']:.2f}" == f"{100 * top['estimate']:.2f}"
        runner = f" ({'tied with' if tied else 'runner-up:'} {cell(ranked.iloc[1])})" if len(ranked) > 1 else ""
        lines.append(f"- **Best on {where}:** {cell(top)}{runner}.")
    return lines


def cma_flyp_answers(diffs: pd.DataFrame, scores: list[str]) -> list[str]:
    """Per score: is CMA − FLYP on the average over OoD sets resolved by the paired bootstrap?"""
    if diffs.empty:
        return []
    mine = diffs[(diffs["a"] == "cma") & (diffs["b"] == "flyp") & (diffs["dataset"] == uncertainty.AVERAGE)]
    lines = []
    for score in scores:
        rows = mine[mine["score"] == score].set_index("metric")
        if rows.empty:
            continue
        parts = []
        for metric, title in (("auroc", "AUROC"), ("fpr95", "FPR95")):
            row = rows.loc[metric]
            est, low, high = 100 * row["estimate"], 100 * row["low"], 100 * row["high"]
            resolved = uncertainty.Interval(row["estimate"], row["low"], row["high"]).excludes_zero()
            parts.append(f"Δ{title} {est:+.2f} pp [{low:+.2f}, {high:+.2f}] "
                         f"({'resolved' if resolved else 'not resolved'})")
        lines.append(f"- **Is CMA − FLYP resolved ({score}, average over OoD sets)?** " + "; ".join(parts) + ".")
    return lines


def section(chosen: dict[str, pd.Series], ci: pd.DataFrame, ood: pd.DataFrame, diffs: pd.DataFrame,
            scores: list[str]) -> list[str]:
    """The report's opening lines (empty when nothing is answerable)."""
    lines = [a for a in [accuracy_answer(chosen, ood)] if a] + detection_answers(chosen, ci)
    lines += cma_flyp_answers(diffs, scores)
    if not lines:
        return []
    return ["## The answer, from this run's numbers",
            "Selected runs as in the main table (validation only); best = highest test estimate among them, "
            "over every computed score. Intervals: 95%, test-sample noise only (the Seeds section has the "
            "spread over training seeds).", ""] + lines + [""]
