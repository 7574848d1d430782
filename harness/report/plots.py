"""The report's figures. Each function draws one PNG from values already computed and
returns False (drawing nothing) when there is nothing to show.

Metric values arrive as fractions and are drawn in percent.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on a cluster node
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from harness import methods, metrics  # noqa: E402

# matplotlib writes no date into a PNG; dropping its version too makes the same inputs give the same bytes.
_META = {"Software": None}


def _save(fig, path: Path, dpi: int = 100) -> bool:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, metadata=_META)
    plt.close(fig)
    return True


def _log_x(lams: pd.Series) -> pd.Series:
    """λ on a log axis: λ = 0 is drawn one decade left of the smallest positive λ."""
    positive = lams[lams > 0]
    return lams.where(lams > 0, positive.min() / 10 if not positive.empty else 1e-4)


def lambda_sweep(trained: pd.DataFrame, avg_ci: pd.DataFrame, zero_shot: pd.DataFrame, path: Path) -> bool:
    """Metric vs λ with 95% intervals, zero-shot as a dashed line with its band.

    ``trained``: run_id, lam, id_accuracy, acc_low, acc_high (one row per trained run);
    ``avg_ci``: run_id, score, metric, estimate, low, high (the "avg" over OoD sets);
    ``zero_shot``: the same columns as ``trained`` and ``avg_ci`` merged, for the baseline.
    """
    if trained["lam"].nunique() < 2:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = (("fpr95", "avg FPR95 (%) ↓"), ("auroc", "avg AUROC (%) ↑"))
    for ax, (metric, title) in zip(axes, panels):
        for i, (score, rows) in enumerate(avg_ci[avg_ci["metric"] == metric].groupby("score", sort=True)):
            joined = trained.merge(rows, on="run_id").sort_values("lam")
            x = _log_x(joined["lam"])
            est = 100 * joined["estimate"]
            ax.errorbar(x, est, yerr=[est - 100 * joined["low"], 100 * joined["high"] - est], marker="o",
                        capsize=3, label=score, color=f"C{i}")
            base = zero_shot[(zero_shot["score"] == score) & (zero_shot["metric"] == metric)]
            if not base.empty:
                ax.axhline(100 * base["estimate"].iloc[0], color=f"C{i}", ls="--", lw=1)
                ax.axhspan(100 * base["low"].iloc[0], 100 * base["high"].iloc[0], color=f"C{i}", alpha=0.08)
        ax.set_title(title)
    acc = trained.sort_values("lam")
    x = _log_x(acc["lam"])
    est = 100 * acc["id_accuracy"]
    axes[2].errorbar(x, est, yerr=[est - 100 * acc["acc_low"], 100 * acc["acc_high"] - est], marker="o",
                     capsize=3, color="k")
    if not zero_shot.empty:
        axes[2].axhline(100 * zero_shot["id_accuracy"].iloc[0], color="k", ls="--", lw=1)
    axes[2].set_title("ID accuracy (%) ↑ (Wilson 95%)")
    lams = pd.Series(sorted(trained["lam"].unique()))
    ticks = _log_x(lams)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{lam:g}" if lam > 0 else "0 (FLYP)" for lam in lams])
        ax.minorticks_off()
        ax.set_xlabel("CMA weight λ")
        ax.grid(alpha=0.3)
    axes[0].legend(title="score (dashed + band: zero-shot)", fontsize=8, title_fontsize=8)
    return _save(fig, path)


def _log_odds(values: np.ndarray) -> np.ndarray:
    """Scores in [0, 1] that saturate (NegLabel at T = 0.01) are readable as log-odds."""
    clipped = np.clip(values, 1e-12, 1 - 1e-12)
    return np.log(clipped) - np.log1p(-clipped)


Arrays = Mapping[str, Mapping[str, tuple[np.ndarray, Mapping[str, np.ndarray]]]]
"""{score: {method: (ID scores, {OoD set: scores})}}"""


def score_histograms(arrays: Arrays, path: Path) -> bool:
    """ID vs OoD histograms of the log-odds of each score, one panel per (score, method)."""
    scores = [s for s in arrays if arrays[s]]
    if not scores:
        return False
    shown = [m for m in methods.names() if any(m in arrays[s] for s in scores)]
    fig, axes = plt.subplots(len(scores), len(shown), figsize=(4 * len(shown), 3 * len(scores)), squeeze=False)
    for row, score in enumerate(scores):
        for col, method in enumerate(shown):
            ax = axes[row][col]
            if method not in arrays[score]:
                ax.set_axis_off()
                continue
            id_scores, ood_sets = arrays[score][method]
            named = {"ID": id_scores, **ood_sets}
            transformed = {k: _log_odds(v) for k, v in named.items()}
            pooled = np.concatenate(list(transformed.values()))
            bins = np.linspace(pooled.min(), pooled.max(), 41)  # shared bins: comparable bars
            for name, values in transformed.items():
                ax.hist(values, bins=bins, alpha=0.5, density=True, label=name)
            ax.set_title(f"{methods.label(method)} · {score}")
            ax.set_xlabel("log-odds of the score (higher = more ID)")
            ax.legend(fontsize=7)
    return _save(fig, path, dpi=90)


def roc_curves(arrays: Arrays, path: Path) -> bool:
    """ROC (ID positive) per (score, OoD set), one line per method, FPR95's 95% TPR marked."""
    scores = [s for s in arrays if arrays[s]]
    if not scores:
        return False
    sets = sorted({d for s in scores for _, ood in arrays[s].values() for d in ood})
    fig, axes = plt.subplots(len(scores), len(sets), figsize=(3.6 * len(sets), 3.4 * len(scores)), squeeze=False)
    for row, score in enumerate(scores):
        for col, dataset in enumerate(sets):
            ax = axes[row][col]
            for method, (id_scores, ood_sets) in arrays[score].items():
                if dataset in ood_sets:
                    fpr, tpr = metrics.roc_curve(id_scores, ood_sets[dataset])
                    ax.plot(100 * fpr, 100 * tpr, color=methods.colour(method), label=methods.label(method), lw=1.2)
            ax.axhline(95, color="k", ls=":", lw=0.8)
            ax.set_title(f"{score} · {dataset}")
            ax.set_xlabel("OoD accepted (%)")
            ax.set_ylabel("ID accepted (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path, dpi=90)


_CURVES = (("contrastive loss (CE, mean of image and text)", ("train_ce_img", "train_ce_txt")),
           ("CMA term R (mean of image and text)", ("train_r_img", "train_r_txt")),
           ("validation ID accuracy", ("val_id_accuracy",)),
           ("validation OoD AUROC (selection score)", ("val_auroc",)))


def training_curves(epochs: pd.DataFrame, labels: Mapping[str, str], path: Path) -> bool:
    """Per-epoch loss parts and validation metrics, one line per run (``labels``: run_id -> legend, in order).

    The loss is drawn by parts: the total mixes in λ x R, whose scale differs with λ.
    """
    panels = [(title, cols) for title, cols in _CURVES if not epochs.empty and all(c in epochs for c in cols)]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
    for ax, (title, cols) in zip(axes[0], panels):
        by_run = dict(tuple(epochs.sort_values("epoch").groupby("run_id", sort=True)))
        order = [r for r in labels if r in by_run] + sorted(set(by_run) - set(labels))  # legend in ``labels`` order
        for i, run_id in enumerate(order):
            rows = by_run[run_id]
            ax.plot(rows["epoch"], rows[list(cols)].mean(axis=1), marker="o", label=labels.get(run_id, run_id),
                    color=f"C{i}")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def gap_projection(panels: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]]], path: Path) -> bool:
    """ID image and class-prompt embeddings in 2-D, one column per model and one row per projection
    (``panels``: method -> {projection title: (image (N, 2), text (C, 2), axis labels)})."""
    if not panels:
        return False
    rows = list(next(iter(panels.values())))
    fig, axes = plt.subplots(len(rows), len(panels), figsize=(4.2 * len(panels), 3.9 * len(rows)), squeeze=False)
    for col, (method, projections) in enumerate(panels.items()):
        for row, name in enumerate(rows):
            ax = axes[row][col]
            image, text, axis_labels = projections[name]
            ax.scatter(image[:, 0], image[:, 1], s=4, alpha=0.3, color="tab:blue", label="ID images")
            ax.scatter(text[:, 0], text[:, 1], s=50, marker="*", color="tab:red", label="class prompts")
            a, b = image.mean(0), text.mean(0)
            ax.scatter(*a, s=90, marker="X", color="navy", label="image centroid")
            ax.scatter(*b, s=90, marker="X", color="darkred", label="prompt centroid")
            ax.annotate("", xy=b, xytext=a, arrowprops={"arrowstyle": "->", "color": "k", "lw": 1.5})
            ax.set_title(f"{methods.label(method)} · {name}", fontsize=10)
            ax.set_xlabel(axis_labels[0])
            ax.set_ylabel(axis_labels[1])
            ax.set_aspect("equal", adjustable="datalim")
            ax.grid(alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=100, metadata=_META)
    plt.close(fig)
    return True
