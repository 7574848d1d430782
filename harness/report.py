"""Markdown report + plots from the Parquet tables (never from MLflow).

The body is deterministic for the same tables; one header line carries the date.
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on a cluster node
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from harness import results  # noqa: E402

PAPER_SCORES = ("mcm", "neglabel")
METHOD_LABEL = {"zero-shot": "zero-shot", "flyp": "FLYP", "cma": "CMA"}


def select_runs(runs: pd.DataFrame) -> dict[str, pd.Series]:
    """One run per method: zero-shot, FLYP (lam = 0) and the CMA run with the best validation objective.

    Selection reads validation columns only, never a test-set metric.
    """
    done = runs[runs["status"] == "finished"]
    chosen = {}
    for method in ("zero-shot", "flyp", "cma"):
        rows = done[done["method"] == method]
        if rows.empty:
            continue
        key = "val_objective" if rows["val_objective"].notna().any() else "id_accuracy"
        chosen[method] = rows.sort_values([key, "run_id"], ascending=[False, True]).iloc[0]
    return chosen


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def paper_table(chosen: dict[str, pd.Series], ood: pd.DataFrame) -> str:
    datasets = sorted(ood["dataset"].unique())
    head = "| method | score | " + " | ".join(f"{d} FPR95↓ / AUROC↑" for d in datasets) + " | avg | ID acc |"
    lines = [head, "|" + "---|" * (len(datasets) + 4)]
    for method, run in chosen.items():
        for score in PAPER_SCORES:
            rows = ood[(ood["run_id"] == run["run_id"]) & (ood["score"] == score)].set_index("dataset")
            if rows.empty:
                continue
            cells = [f"{_pct(rows.loc[d, 'fpr95'])} / {_pct(rows.loc[d, 'auroc'])}" for d in datasets]
            avg = f"{_pct(rows['fpr95'].mean())} / {_pct(rows['auroc'].mean())}"
            lines.append(f"| {METHOD_LABEL[method]} | {score} | " + " | ".join(cells)
                         + f" | {avg} | {_pct(run['id_accuracy'])} |")
    return "\n".join(lines)


def trials_table(runs: pd.DataFrame, ood: pd.DataFrame) -> str:
    lines = ["| run | method | lam | status | val objective | val ID acc | val AUROC | test ID acc "
             "| NegLabel avg FPR95 / AUROC | train s | wall s |", "|" + "---|" * 11]
    for _, run in runs.sort_values(["method", "lam", "run_id"]).iterrows():
        neg = ood[(ood["run_id"] == run["run_id"]) & (ood["score"] == "neglabel")]
        negcell = f"{_pct(neg['fpr95'].mean())} / {_pct(neg['auroc'].mean())}" if not neg.empty else "-"
        fmt = lambda v, f="{:.3f}": "-" if pd.isna(v) else f.format(v)  # noqa: E731
        lines.append(f"| {run['run_id']} | {run['method']} | {run['lam']:g} | {run['status']} "
                     f"| {fmt(run['val_objective'])} | {fmt(run['val_id_accuracy'])} | {fmt(run['val_auroc'])} "
                     f"| {fmt(run['id_accuracy'])} | {negcell} | {fmt(run['train_s'], '{:.0f}')} "
                     f"| {fmt(run['wall_s'], '{:.0f}')} |")
    return "\n".join(lines)


def plot_lambda_sweep(runs: pd.DataFrame, ood: pd.DataFrame, path: Path) -> bool:
    trained = runs[(runs["status"] == "finished") & (runs["method"] != "zero-shot")]
    if trained["lam"].nunique() < 2:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for score in PAPER_SCORES:
        per = ood[ood["score"] == score].groupby("run_id")[["fpr95", "auroc"]].mean()
        joined = trained.set_index("run_id").join(per, how="inner").sort_values("lam")
        x = joined["lam"].where(joined["lam"] > 0, other=joined["lam"][joined["lam"] > 0].min() / 10)
        axes[0].plot(x, 100 * joined["fpr95"], marker="o", label=score)
        axes[1].plot(x, 100 * joined["auroc"], marker="o", label=score)
    acc = trained.sort_values("lam")
    axes[2].plot(acc["lam"].where(acc["lam"] > 0, other=acc["lam"][acc["lam"] > 0].min() / 10),
                 100 * acc["id_accuracy"], marker="o", color="k")
    for ax, title in zip(axes, ("avg FPR95 (%) ↓", "avg AUROC (%) ↑", "ID accuracy (%)")):
        ax.set_xscale("log")
        ax.set_xlabel("CMA weight λ (λ=0 drawn at the left edge)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _log_odds(values: np.ndarray) -> np.ndarray:
    """Scores in [0, 1] that saturate (NegLabel at T = 0.01) are readable as log-odds."""
    clipped = np.clip(values, 1e-12, 1 - 1e-12)
    return np.log(clipped) - np.log1p(-clipped)


def plot_histograms(chosen: dict[str, pd.Series], samples: pd.DataFrame, id_dataset: str, path: Path) -> bool:
    if samples.empty:
        return False
    methods = list(chosen)
    fig, axes = plt.subplots(len(PAPER_SCORES), len(methods), figsize=(4 * len(methods), 3 * len(PAPER_SCORES)),
                             squeeze=False)
    for col, method in enumerate(methods):
        mine = samples[samples["run_id"] == chosen[method]["run_id"]]
        for row, score in enumerate(PAPER_SCORES):
            ax = axes[row][col]
            values = mine[mine["score"] == score]
            if values.empty:
                continue
            transformed = _log_odds(values["value"].to_numpy())
            bins = np.linspace(transformed.min(), transformed.max(), 41)  # shared bins: comparable bars
            for dataset in sorted(values["dataset"].unique()):
                ax.hist(transformed[(values["dataset"] == dataset).to_numpy()], bins=bins, alpha=0.5, density=True,
                        label=f"{dataset} (ID)" if dataset == id_dataset else dataset)
            ax.set_title(f"{METHOD_LABEL[method]} · {score}")
            ax.set_xlabel("log-odds of the score")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write(results_dir: Path, out_md: Path, title: str = "OoD detection report", notes: str = "") -> Path:
    """Write ``out_md`` and its PNGs (beside it) from the tables in ``results_dir``."""
    runs = results.read(results_dir, results.RUNS)
    if runs.empty:
        raise FileNotFoundError(f"no runs recorded in {results_dir} (expected {results.RUNS}.parquet)")
    ood = results.read(results_dir, results.OOD)
    samples = results.read(results_dir, results.SAMPLES)
    chosen = select_runs(runs)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    stem = out_md.stem
    sections = [f"# {title}", f"_Generated {time.strftime('%Y-%m-%d')} from `{results_dir.name}/*.parquet`._", ""]
    if notes:
        sections += [notes, ""]
    sections += ["## Main table (FPR95 ID-positive / AUROC, percent)",
                 "CMA is the λ > 0 trial with the best validation objective "
                 "(mean of ID-val accuracy and OoD-val AUROC); test sets never enter the selection.", "",
                 paper_table(chosen, ood) if not ood.empty else "_no OoD metrics recorded_", ""]
    sweep_png = out_md.parent / f"{stem}-lambda.png"
    if plot_lambda_sweep(runs, ood, sweep_png):
        sections += ["## λ sweep (test sets, averaged)", f"![lambda sweep]({sweep_png.name})", ""]
    hist_png = out_md.parent / f"{stem}-scores.png"
    id_dataset = _id_dataset(samples, ood)
    if plot_histograms(chosen, samples, id_dataset, hist_png):
        sections += ["## Score distributions, ID vs OoD", f"![score histograms]({hist_png.name})", ""]
    sections += ["## Every run", trials_table(runs, ood), "",
                 "## Modality gap (ID test set)",
                 "centroid distance = ‖mean image embedding − mean class-prompt embedding‖; "
                 "pair cosine = mean cosine of an image with its own class prompt.", "",
                 _gap_table(chosen), ""]
    out_md.write_text("\n".join(sections))
    return out_md


def _id_dataset(samples: pd.DataFrame, ood: pd.DataFrame) -> str:
    if samples.empty:
        return ""
    ood_sets = set(ood["dataset"]) if not ood.empty else set()
    rest = sorted(set(samples["dataset"]) - ood_sets)
    return rest[0] if rest else ""


def _gap_table(chosen: dict[str, pd.Series]) -> str:
    lines = ["| method | centroid distance | pair cosine |", "|---|---|---|"]
    for method, run in chosen.items():
        lines.append(f"| {METHOD_LABEL[method]} | {run['gap_centroid_distance']:.3f} | {run['gap_pair_cosine']:.3f} |")
    return "\n".join(lines)
