"""Markdown for the report: every table, from frames computed by harness.report.stats.

Metrics arrive as fractions and are printed in percent (differences in percentage
points, "pp"). Cells with an interval read ``estimate [low, high]``.
"""

from __future__ import annotations

import pandas as pd

from harness import gap, methods
from harness.report import uncertainty
from harness.methods import label as method_label


def by_method(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs in reading order: the methods in registration order (zero-shot, FLYP, CMA, ...), then by λ and run id."""
    order = methods.names()
    rank = runs["method"].map({m: i for i, m in enumerate(order)}).fillna(len(order))
    return runs.assign(_rank=rank).sort_values(["_rank", "lam", "run_id"]).drop(columns="_rank")
METRIC_TITLE = {"fpr95": "FPR95↓", "auroc": "AUROC↑"}


def pct(x: float) -> str:
    return "-" if x is None or pd.isna(x) else f"{100 * x:.2f}"


def ci_cell(estimate: float, low: float | None = None, high: float | None = None) -> str:
    if low is None or pd.isna(low):
        return pct(estimate)
    return f"{100 * estimate:.2f} [{100 * low:.1f}, {100 * high:.1f}]"


def _num(value, fmt: str = "{:.3f}") -> str:
    return "-" if value is None or pd.isna(value) else fmt.format(value)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def accuracy_cell(run: pd.Series, n_id: float | None) -> str:
    if n_id is None or pd.isna(n_id) or pd.isna(run["id_accuracy"]):
        return pct(run["id_accuracy"])
    low, high = uncertainty.wilson_interval(float(run["id_accuracy"]), int(n_id))
    return ci_cell(run["id_accuracy"], low, high)


def main_table(chosen: dict[str, pd.Series], ci: pd.DataFrame, ood: pd.DataFrame, scores: list[str]) -> str:
    """Method x score rows; per OoD set and the average: FPR95 and AUROC with intervals; ID accuracy."""
    sets = sorted(ood["dataset"].unique()) + [uncertainty.AVERAGE]
    header = ["method", "score"] + [f"{d} {METRIC_TITLE[m]}" for d in sets for m in METRIC_TITLE] + ["ID acc"]
    rows = []
    for method, run in chosen.items():
        mine = ood[ood["run_id"] == run["run_id"]]
        for score in scores:
            point = mine[mine["score"] == score].set_index("dataset")
            if point.empty:
                continue
            cells = ci[(ci["run_id"] == run["run_id"]) & (ci["score"] == score)] if not ci.empty else ci
            row = [method_label(method), score]
            for dataset in sets:
                for metric in METRIC_TITLE:
                    found = cells[(cells["dataset"] == dataset) & (cells["metric"] == metric)] if not cells.empty \
                        else cells
                    if not found.empty:
                        row.append(ci_cell(*found[["estimate", "low", "high"]].iloc[0]))
                    else:
                        value = point[metric].mean() if dataset == uncertainty.AVERAGE else point[metric].get(dataset)
                        row.append(pct(value))
            rows.append(row + [accuracy_cell(run, point["n_id"].iloc[0] if "n_id" in point else None)])
    return table(header, rows)


def _diff_cell(row: pd.Series, metric: str) -> str:
    """Δ in pp with its interval; ✓ when the interval excludes 0 in a's favour, ✗ against it."""
    cell = f"{100 * row['estimate']:+.2f} [{100 * row['low']:+.1f}, {100 * row['high']:+.1f}]"
    if not uncertainty.Interval(row["estimate"], row["low"], row["high"]).excludes_zero():
        return cell
    better = row["high"] < 0 if metric == "fpr95" else row["low"] > 0
    return cell + (" ✓" if better else " ✗")


def paired_table(diffs: pd.DataFrame) -> str:
    rows = []
    for (a, b, score, dataset), group in diffs.groupby(["a", "b", "score", "dataset"], sort=False):
        by_metric = group.set_index("metric")
        paired_n = f"{group['n_id'].iloc[0]} / {group['n_ood'].iloc[0]}"
        rows.append([f"{method_label(a)} − {method_label(b)}", score, dataset, _diff_cell(by_metric.loc["fpr95"], "fpr95"),
                     _diff_cell(by_metric.loc["auroc"], "auroc"), paired_n])
    return table(["comparison", "score", "OoD set", "ΔFPR95 pp [95% CI]", "ΔAUROC pp [95% CI]", "paired n ID / OoD"],
                 rows)


def _direction(a: str, b: str, metric: str, row: pd.Series) -> str:
    """``CMA is 3.99 pp worse than zero-shot [2.92, 5.00]`` (the interval of that gap), or, when the
    interval includes 0, that no difference is resolved, with the signed Δ."""
    name_a, name_b = method_label(a), method_label(b)
    est, low, high = 100 * row["estimate"], 100 * row["low"], 100 * row["high"]
    if not uncertainty.Interval(row["estimate"], row["low"], row["high"]).excludes_zero():
        return f"no difference resolved (Δ {est:+.2f} pp [{low:+.2f}, {high:+.2f}])"
    a_better = est < 0 if metric == "fpr95" else est > 0  # lower FPR95, higher AUROC is better
    gap, gap_low, gap_high = (abs(est), min(abs(low), abs(high)), max(abs(low), abs(high)))
    return f"{name_a} is {gap:.2f} pp {'better' if a_better else 'worse'} than {name_b} [{gap_low:.2f}, {gap_high:.2f}]"


def paired_summary(diffs: pd.DataFrame) -> list[str]:
    """One sentence per (comparison, score) on the average over OoD sets, each metric worded
    with its direction."""
    lines = []
    avg = diffs[diffs["dataset"] == uncertainty.AVERAGE]
    for (a, b, score), group in avg.groupby(["a", "b", "score"], sort=False):
        by_metric = group.set_index("metric")
        lines.append(f"- **{method_label(a)} vs {method_label(b)}, {score}, average over OoD sets:** "
                     f"FPR95: {_direction(a, b, 'fpr95', by_metric.loc['fpr95'])}; "
                     f"AUROC: {_direction(a, b, 'auroc', by_metric.loc['auroc'])}.")
    return lines


CHANCE_AUROC = 0.5


def below_chance(value: float) -> bool:
    """An AUROC under 0.5: the score ranks OoD samples as more in-distribution than ID ones."""
    return value is not None and not pd.isna(value) and value < CHANCE_AUROC


def score_table(chosen: dict[str, pd.Series], ci: pd.DataFrame, ood: pd.DataFrame, scores: list[str]) -> str:
    """Compact: one row per chosen method, per score the average over OoD sets of FPR95 / AUROC
    (with the AUROC's interval); ⚠ marks an AUROC below chance."""
    rows = []
    for method, run in chosen.items():
        row = [method_label(method)]
        for score in scores:
            mine = ood[(ood["run_id"] == run["run_id"]) & (ood["score"] == score)]
            if mine.empty:
                row.append("-")
                continue
            auroc, cell = mine["auroc"].mean(), pct(mine["auroc"].mean())
            found = ci[(ci["run_id"] == run["run_id"]) & (ci["score"] == score) & (ci["metric"] == "auroc")
                       & (ci["dataset"] == uncertainty.AVERAGE)] if not ci.empty else ci
            if not found.empty:
                auroc, cell = found["estimate"].iloc[0], ci_cell(*found[["estimate", "low", "high"]].iloc[0])
            row.append(f"{pct(mine['fpr95'].mean())} / {cell}" + (" ⚠" if below_chance(auroc) else ""))
        rows.append(row)
    return table(["method"] + [f"{s} FPR95↓ / AUROC↑" for s in scores], rows)


def paper_table(comparison: pd.DataFrame) -> str:
    rows = [[method_label(r["method"]), r["score"], r["dataset"],
             f"{r['ours_fpr95']:.2f} / {r['ours_auroc']:.2f}", f"{r['paper_fpr95']:.2f} / {r['paper_auroc']:.2f}",
             f"{r['d_fpr95']:+.2f} / {r['d_auroc']:+.2f}"] for _, r in comparison.iterrows()]
    return table(["method", "score", "OoD set", "ours FPR95 / AUROC", "paper FPR95 / AUROC", "ours − paper (pp)"],
                 rows)


def seed_table(spread: pd.DataFrame) -> str:
    metric_cols = [c[: -len("_mean")] for c in spread.columns if c.endswith("_mean")]
    rows = [[method_label(r["method"]), _num(r['lam'], '{:g}'), str(r["seeds"])]
            + [f"{100 * r[f'{c}_mean']:.2f} ± {100 * r[f'{c}_std']:.2f}" for c in metric_cols]
            for _, r in spread.iterrows()]
    return table(["method", "λ", "seeds"] + [c.replace("_", " ") + " (%)" for c in metric_cols], rows)


def gap_definitions() -> list[str]:
    return [f"- `{name}`: {text}" for name, text in gap.DEFINITIONS.items()]


def gap_table(runs: pd.DataFrame) -> str:
    columns = [f"gap_{m}" for m in gap.MEASURES if f"gap_{m}" in runs]
    rows = [[r["run_id"], method_label(r["method"]), _num(r['lam'], '{:g}')] + [_num(r[c]) for c in columns]
            for _, r in by_method(runs).iterrows()]
    return table(["run", "method", "λ"] + [c[len("gap_"):] for c in columns], rows)


def cost_tables(per_run: pd.DataFrame, per_sweep: pd.DataFrame) -> list[str]:
    runs = table(["run", "method", "device", "accelerators", "wall s", "train s", "eval s", "accelerator-h"],
                 [[r["run_id"], method_label(r["method"]), str(r["device"] or "-"),
                   f"{r['accelerators']:g}", _num(r["wall_s"], "{:.0f}"), _num(r["train_s"], "{:.0f}"),
                   _num(r["eval_s"], "{:.0f}"), f"{r['accelerator_h']:.3f}"] for _, r in per_run.iterrows()])
    sweeps = table(["sweep", "runs", "Σ wall h", "Σ train h", "Σ accelerator-h"],
                   [[r["sweep"], str(r["runs"]), f"{r['wall_s'] / 3600:.3f}", f"{r['train_s'] / 3600:.3f}",
                     f"{r['accelerator_h']:.3f}"] for _, r in per_sweep.iterrows()])
    return [runs, "", sweeps]


def trials_table(runs: pd.DataFrame, ood: pd.DataFrame) -> str:
    rows = []
    for _, run in by_method(runs).iterrows():
        neg = ood[(ood["run_id"] == run["run_id"]) & (ood["score"] == "neglabel")] if not ood.empty else ood
        negcell = f"{pct(neg['fpr95'].mean())} / {pct(neg['auroc'].mean())}" if not neg.empty else "-"
        rows.append([run["run_id"], run["method"], _num(run['lam'], '{:g}'), str(run["seed"]), run["status"],
                     _num(run["val_objective"]), _num(run["val_id_accuracy"]), _num(run["val_auroc"]),
                     _num(run["id_accuracy"]), negcell])
    return table(["run", "method", "λ", "seed", "status", "val objective", "val ID acc", "val AUROC", "test ID acc",
                  "NegLabel avg FPR95 / AUROC"], rows)


def run_section(run: pd.Series, ci: pd.DataFrame, ood: pd.DataFrame, accelerator_h: float) -> str:
    """One run's own section (logged to its MLflow run): every score and OoD set with intervals."""
    lines = [f"# {run['run_id']}", "",
             f"method {method_label(run['method'])}, λ {_num(run['lam'], '{:g}')}, seed {run['seed']}, "
             f"suite {run['suite']}, status {run['status']}", ""]
    mine = ood[ood["run_id"] == run["run_id"]] if not ood.empty else ood
    n_id = mine["n_id"].iloc[0] if not mine.empty and "n_id" in mine else None
    lines += [f"ID accuracy: {accuracy_cell(run, n_id)}", ""]
    if not ci.empty and (ci["run_id"] == run["run_id"]).any():
        rows = [[score, dataset] + [ci_cell(*group.set_index("metric").loc[m, ["estimate", "low", "high"]])
                                    for m in METRIC_TITLE]
                for (score, dataset), group in ci[ci["run_id"] == run["run_id"]].groupby(["score", "dataset"],
                                                                                        sort=False)]
        lines += [table(["score", "OoD set"] + [f"{t} % [95% CI]" for t in METRIC_TITLE.values()], rows), ""]
    elif not mine.empty:  # a run the report prints no interval for is not bootstrapped: its point estimates
        rows = [[r["score"], r["dataset"]] + [pct(r[m]) for m in METRIC_TITLE] for _, r in mine.iterrows()]
        lines += [table(["score", "OoD set"] + [f"{t} %" for t in METRIC_TITLE.values()], rows), ""]
    gaps = [f"{m} {_num(run.get(f'gap_{m}'))}" for m in gap.MEASURES if f"gap_{m}" in run]
    lines += ["Modality gap (ID test): " + ", ".join(gaps) if gaps else "", "",
              f"Cost: wall {_num(run['wall_s'], '{:.0f}')} s, train {_num(run['train_s'], '{:.0f}')} s, "
              f"accelerator-hours {accelerator_h:.3f}", ""]
    return "\n".join(lines)

