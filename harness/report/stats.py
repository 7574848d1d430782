"""What a report computes from the Parquet tables: loading one or many results directories,
filtering, choosing the runs to compare, bootstrap intervals, paired differences, seed
spread and cost. Every function returns a DataFrame or plain values; nothing here
formats markdown or draws.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from harness import methods, paper, results
from harness.report import uncertainty
from harness.report.interval_cache import Bootstraps

PAPER_SCORES = ("mcm", "neglabel")


def comparisons(chosen: Sequence[str]) -> list[tuple[str, str]]:
    """(a, b) pairs the report shows a − b for: every chosen method against each baseline before it
    in the registry (harness.methods: zero-shot, FLYP), in reading order."""
    order = [m for m in methods.names() if m in chosen]
    baselines = [m for m in order if methods.get(m).baseline]
    return [(a, b) for a in order for b in baselines if order.index(b) < order.index(a)]


class NothingToReport(ValueError):
    """No runs left to report on (none recorded, or none kept by the filters)."""


@dataclass(frozen=True)
class Filters:
    """Keep runs whose method / suite is listed and whose name or sweep is a listed tag, and only
    the listed scores; an empty tuple keeps everything."""

    methods: tuple[str, ...] = ()
    scores: tuple[str, ...] = ()
    suites: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    def describe(self) -> str:
        given = [f"{k} {', '.join(v)}" for k, v in (("method", self.methods), ("score", self.scores),
                                                    ("suite", self.suites), ("tag", self.tags)) if v]
        return "; ".join(given) or "none"


@dataclass(frozen=True)
class Tables:
    """The four results tables of every directory read, concatenated. ``runs`` also carries
    ``source`` (the directory's label), ``run_dir``, ``suite``, ``id_test`` and ``device``."""

    runs: pd.DataFrame
    ood: pd.DataFrame
    epochs: pd.DataFrame
    samples: pd.DataFrame


def results_dir(path: Path) -> Path:
    """An --out directory's results/ subdirectory, or ``path`` itself."""
    return path / "results" if (path / "results").is_dir() else path


def _config(config_json: str) -> dict:
    return json.loads(config_json) if isinstance(config_json, str) else {}


def _normalise_runs(runs: pd.DataFrame, rdir: Path, label: str) -> pd.DataFrame:
    """Columns that older tables lack are derived from config_json, so old results still report."""
    configs = runs["config_json"].map(_config)
    runs = runs.assign(source=label, run_dir=[str(rdir.parent / "runs" / r) for r in runs["run_id"]],
                       id_test=configs.map(lambda c: c.get("data", {}).get("id_test", "id_test")))
    if "suite" not in runs:
        runs["suite"] = configs.map(lambda c: paper.suite_of(c.get("data", {}).get("source", ""),
                                                             c.get("data", {}).get("ood_test", ())))
    if "device" not in runs:
        runs["device"] = None
    return runs


def _load_one(rdir: Path, label: str) -> dict[str, pd.DataFrame]:
    runs = results.read(rdir, results.RUNS)
    if runs.empty:
        raise FileNotFoundError(f"no runs recorded in {rdir} (expected {results.RUNS}.parquet)")
    samples = results.read(rdir, results.SAMPLES)
    if not samples.empty and "key" not in samples:  # written before keys: positions pair runs (see results)
        samples = samples.assign(key=samples.groupby(["run_id", "dataset", "score"]).cumcount().map("#{}".format))
    return {"runs": _normalise_runs(runs, rdir, label), "ood": results.read(rdir, results.OOD),
            "epochs": results.read(rdir, results.EPOCHS), "samples": samples}


def load(dirs: Sequence[Path]) -> Tables:
    """Read every directory; when two hold the same run_id, ids become ``<label>/<run_id>``."""
    rdirs = [results_dir(Path(d)) for d in dirs]
    labels = [str(r.parent.name if r.name == "results" else r.name) or str(i) for i, r in enumerate(rdirs)]
    if len(set(labels)) < len(labels):
        labels = [f"{i}:{label}" for i, label in enumerate(labels)]
    parts = [_load_one(r, label) for r, label in zip(rdirs, labels)]
    ids = [rid for part in parts for rid in part["runs"]["run_id"]]
    if len(ids) != len(set(ids)):
        for part, label in zip(parts, labels):
            for name, frame in part.items():
                if not frame.empty:
                    part[name] = frame.assign(run_id=label + "/" + frame["run_id"])
    frames = {name: pd.concat([p[name] for p in parts if not p[name].empty] or [pd.DataFrame()], ignore_index=True)
              for name in ("runs", "ood", "epochs", "samples")}
    return Tables(**frames)


def apply(tables: Tables, filters: Filters) -> Tables:
    """The tables restricted to the runs and scores the filters keep."""
    runs = tables.runs
    if filters.methods:
        runs = runs[runs["method"].isin(filters.methods)]
    if filters.suites:
        runs = runs[runs["suite"].isin(filters.suites)]
    if filters.tags:
        runs = runs[runs["name"].isin(filters.tags) | runs["sweep"].isin(filters.tags)]
    keep = set(runs["run_id"])

    def restrict(frame: pd.DataFrame, by_score: bool) -> pd.DataFrame:
        if frame.empty:
            return frame
        frame = frame[frame["run_id"].isin(keep)]
        return frame[frame["score"].isin(filters.scores)] if by_score and filters.scores else frame

    return replace(tables, runs=runs, ood=restrict(tables.ood, True), epochs=restrict(tables.epochs, False),
                   samples=restrict(tables.samples, True))


def id_accuracy_interval(run: pd.Series, ood: pd.DataFrame) -> tuple[float, float] | None:
    """Wilson 95% interval of ``run``'s ID accuracy over its ID test set (size n_id, as recorded in
    the OoD table); None when its size or accuracy is not recorded."""
    if ood.empty or "n_id" not in ood or pd.isna(run["id_accuracy"]):
        return None
    n_id = ood.loc[ood["run_id"] == run["run_id"], "n_id"]
    return uncertainty.wilson_interval(float(run["id_accuracy"]), int(n_id.iloc[0])) if len(n_id) else None


def select_runs(runs: pd.DataFrame) -> dict[str, pd.Series]:
    """One run per method: the finished run with the best validation objective (ID accuracy when
    no objective was recorded). Selection reads validation columns only, never a test-set metric."""
    done = runs[runs["status"] == "finished"]
    chosen = {}
    for method in methods.names():
        rows = done[done["method"] == method]
        if rows.empty:
            continue
        key = "val_objective" if rows["val_objective"].notna().any() else "id_accuracy"
        chosen[method] = rows.sort_values([key, "run_id"], ascending=[False, True]).iloc[0]
    return chosen


def score_arrays(samples: pd.DataFrame, run: pd.Series, score: str) -> tuple[pd.Series, dict[str, pd.Series]]:
    """(ID test scores, {OoD set: scores}) of one run, each a Series indexed by sample key, sorted by key."""
    rows = samples[(samples["run_id"] == run["run_id"]) & (samples["score"] == score)]
    by_set = {d: g.set_index("key")["value"].sort_index() for d, g in rows.groupby("dataset", sort=True)}
    id_scores = by_set.pop(run["id_test"], pd.Series(dtype=float))
    return id_scores, by_set


def intervals(tables: Tables, runs: pd.DataFrame, n_boot: int, seed: int = 0,
              keep: Callable[[str, str], bool] | None = None, boot: Bootstraps | None = None) -> pd.DataFrame:
    """Bootstrap intervals of every (run, score, OoD set or "avg", metric) with per-sample scores
    (``keep(run_id, score)``: only those pairs). ``boot``: where replicates and intervals are
    shared and cached (default: this call only). Every item is seeded with ``seed`` itself, not
    by its position, so which items are kept changes no interval.

    Columns: run_id, score, dataset, metric, estimate, low, high (fractions).
    """
    boot = boot or Bootstraps()
    rows = []
    if tables.samples.empty:
        return pd.DataFrame(rows)
    for _, run in runs[runs["status"] == "finished"].iterrows():
        for score in sorted(tables.samples.loc[tables.samples["run_id"] == run["run_id"], "score"].unique()):
            if keep is not None and not keep(run["run_id"], score):
                continue
            id_scores, ood_sets = score_arrays(tables.samples, run, score)
            if id_scores.empty or not ood_sets:
                continue
            found = boot.bootstrap(id_scores.to_numpy(), {k: v.to_numpy() for k, v in ood_sets.items()},
                                   n_boot, seed)
            rows += [{"run_id": run["run_id"], "score": score, "dataset": dataset, "metric": metric,
                      "estimate": iv.estimate, "low": iv.low, "high": iv.high}
                     for dataset, by_metric in found.items() for metric, iv in by_metric.items()]
    return pd.DataFrame(rows)


def paired_differences(tables: Tables, chosen: dict[str, pd.Series], scores: Sequence[str], n_boot: int,
                       seed: int = 0, boot: Bootstraps | None = None) -> pd.DataFrame:
    """Paired bootstrap of a − b for each of :func:`comparisons` of the chosen runs.

    Samples are matched by (dataset, key); only keys present in both runs enter. Columns:
    a, b, score, dataset, metric, estimate, low, high (fractions), n_id, n_ood. ``boot``: shared
    with :func:`intervals`, a side whose arrays were bootstrapped already is not resampled again.
    """
    boot = boot or Bootstraps()
    rows = []
    for a, b in comparisons(list(chosen)):
        if tables.samples.empty:
            continue
        for score in scores:
            id_a, sets_a = score_arrays(tables.samples, chosen[a], score)
            id_b, sets_b = score_arrays(tables.samples, chosen[b], score)
            common = sorted(set(sets_a) & set(sets_b))
            ids = id_a.index.intersection(id_b.index)
            keys = {d: sets_a[d].index.intersection(sets_b[d].index) for d in common}
            if ids.empty or not common or any(k.empty for k in keys.values()):
                continue
            found = boot.paired((id_a[ids].to_numpy(), {d: sets_a[d][keys[d]].to_numpy() for d in common}),
                                (id_b[ids].to_numpy(), {d: sets_b[d][keys[d]].to_numpy() for d in common}),
                                n_boot, seed)
            for dataset, by_metric in found.items():
                n_ood = sum(len(k) for k in keys.values()) if dataset == uncertainty.AVERAGE else len(keys[dataset])
                rows += [{"a": a, "b": b, "score": score, "dataset": dataset, "metric": metric,
                          "estimate": iv.estimate, "low": iv.low, "high": iv.high, "n_id": len(ids), "n_ood": n_ood}
                         for metric, iv in by_metric.items()]
    return pd.DataFrame(rows)


def _setting(config_json: str) -> str:
    """The config minus what does not change the science of a setting (seed, names, resources)."""
    cfg = _config(config_json)
    for key in ("seed", "name", "tracking", "resources", "search"):
        cfg.pop(key, None)
    return json.dumps(cfg, sort_keys=True)


def seed_spread(runs: pd.DataFrame, ood: pd.DataFrame, scores: Sequence[str]) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof = 1) over seeds of each setting run with 2+ seeds.

    Columns: method, lam, seeds, then ``<metric>_mean`` / ``<metric>_std`` for id_accuracy and,
    per score, ``<score>_fpr95`` / ``<score>_auroc`` averaged over OoD sets (fractions).
    """
    done = runs[runs["status"] == "finished"].assign(setting=lambda f: f["config_json"].map(_setting))
    if not ood.empty:
        avg = ood.groupby(["run_id", "score"])[["fpr95", "auroc"]].mean().unstack("score")
        avg.columns = [f"{score}_{metric}" for metric, score in avg.columns]
        done = done.join(avg, on="run_id")
    columns = ["id_accuracy"] + [f"{s}_{m}" for s in scores for m in ("fpr95", "auroc") if f"{s}_{m}" in done]
    rows = []
    for _, group in done.groupby("setting", sort=False):
        if group["seed"].nunique() < 2:
            continue
        row = {"method": group["method"].iloc[0], "lam": group["lam"].iloc[0], "seeds": group["seed"].nunique()}
        for col in columns:
            row[f"{col}_mean"], row[f"{col}_std"] = group[col].mean(), group[col].std(ddof=1)
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["method", "lam"]).reset_index(drop=True) if rows else pd.DataFrame()


def accelerators(run: pd.Series) -> float:
    """Accelerators a run held: workers x GPUs per worker when it ran on a GPU, else 0.

    ``device`` is what the run itself saw; rows written before it was recorded fall back
    to the config's resources.use_gpu.
    """
    res = _config(run["config_json"]).get("resources", {})
    device = run.get("device")
    on_gpu = device != "cpu" if isinstance(device, str) else bool(res.get("use_gpu", False))
    return float(res.get("num_workers", 1) * res.get("gpus_per_worker", 1.0)) if on_gpu else 0.0


def cost(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per run, per sweep) wall time and accelerator-hours = wall hours x accelerators."""
    per_run = runs.assign(accelerators=runs.apply(accelerators, axis=1))
    per_run = per_run.assign(accelerator_h=per_run["wall_s"].fillna(0) / 3600 * per_run["accelerators"])
    per_run = per_run[["run_id", "sweep", "method", "device", "accelerators", "wall_s", "train_s", "eval_s",
                       "accelerator_h"]].sort_values(["sweep", "run_id"]).reset_index(drop=True)
    per_sweep = per_run.groupby("sweep").agg(runs=("run_id", "count"), wall_s=("wall_s", "sum"),
                                             train_s=("train_s", "sum"), accelerator_h=("accelerator_h", "sum"))
    return per_run, per_sweep.reset_index()

