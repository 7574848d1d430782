"""The markdown report + PNG plots, from the Parquet tables of one or many results directories
(never from MLflow).

Composition only: numbers come from harness.report.stats, markdown from harness.report.markdown,
figures from harness.report.plots. The body is deterministic for the same tables (bootstraps are
seeded, PNGs carry no date); one header line carries the date.
"""

from __future__ import annotations

import time
from dataclasses import replace
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from harness import gap, methods, paper
from harness.evaluation import evaluate
from harness.report import plots
from harness.report import answer as report_answer
from harness.report import conventions as report_conventions
from harness.report import uncertainty
from harness.report import markdown as md
from harness.report import stats
from harness.report.interval_cache import Bootstraps, default_root
from harness.report.stats import Filters, Tables

N_BOOT = 1000


def _scores(tables: Tables, filters: Filters) -> list[str]:
    """The scores the comparison sections show: the filter's, else the paper's (MCM, NegLabel)."""
    available = sorted(tables.ood["score"].unique()) if not tables.ood.empty else []
    wanted = filters.scores or stats.PAPER_SCORES
    return [s for s in wanted if s in available]


def _arrays(tables: Tables, chosen: dict[str, pd.Series], scores: list[str]) -> plots.Arrays:
    out: dict = {}
    for score in scores:
        out[score] = {}
        for method, run in chosen.items():
            id_scores, ood_sets = stats.score_arrays(tables.samples, run, score)
            if not id_scores.empty and ood_sets:
                out[score][method] = (id_scores.to_numpy(), {k: v.to_numpy() for k, v in ood_sets.items()})
    return out


def _lambda_runs(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the runs with a λ: FLYP and CMA, every seed; the zero-shot run drawn beside them) among
    finished ``runs``: what the λ-sweep figure plots, so also what _intervals bootstraps for it."""
    done = runs[runs["status"] == "finished"]
    return done[done["lam"].notna()], done[done["method"] == "zero-shot"].sort_values("run_id").head(1)


def _lambda_plot(runs: pd.DataFrame, ood: pd.DataFrame, ci: pd.DataFrame, scores: list[str], path: Path) -> bool:
    if ci.empty:
        return False
    done = runs[runs["status"] == "finished"]
    bounds = [stats.id_accuracy_interval(r, ood) or (r["id_accuracy"], r["id_accuracy"]) for _, r in done.iterrows()]
    done = done.assign(acc_low=[b[0] for b in bounds], acc_high=[b[1] for b in bounds])
    avg = ci[(ci["dataset"] == uncertainty.AVERAGE) & ci["score"].isin(scores)]
    trained, zero = _lambda_runs(done)
    trained = trained[["run_id", "lam", "id_accuracy", "acc_low", "acc_high"]]
    zero = zero[["run_id", "id_accuracy"]].merge(avg, on="run_id")
    return plots.lambda_sweep(trained, avg[avg["run_id"].isin(trained["run_id"])], zero, path)


def _selection_line(runs: pd.DataFrame, chosen: dict[str, pd.Series]) -> list[str]:
    """Which λ the CMA row is, and what the other λ > 0 runs scored on validation."""
    if "cma" not in chosen:
        return []
    pick = chosen["cma"]
    done = runs[(runs["status"] == "finished") & (runs["method"] == "cma")].sort_values("lam")
    seeds = done["seed"].nunique() > 1 if "seed" in done else False  # name the seed when a λ has several
    others = ", ".join(f"λ {r['lam']:g}{f' seed {r.seed}' if seeds else ''}: {md._num(r['val_objective'])}"
                       for _, r in done.sort_values(["lam", "seed"] if seeds else ["lam"]).iterrows())
    return [f"**Selected: CMA is λ = {pick['lam']:g}** (`{pick['run_id']}`), the best validation objective "
            f"({md._num(pick['val_objective'])}) of the λ > 0 runs ({others}).", ""]


OTHER_SCORES_PER_TABLE = 6


def _is_port(score: str) -> bool:
    from harness.scores import SCORE_SPECS

    spec = SCORE_SPECS.get(score)  # tables may hold a score no longer registered
    return bool(spec and spec.openood)


def _inputs_note(names: list[str]) -> str:
    """Which inputs each score read (OpenOOD #195: which feature a CLIP postprocessor sees)."""
    from harness.scores import SCORE_SPECS

    used = "; ".join(f"{n}: {', '.join(sorted(SCORE_SPECS[n].needs))}" for n in names if n in SCORE_SPECS)
    return ("Inputs (`harness scores` lists them): " + used + ". `features` is the L2-normalised image embedding "
            "after CLIP's projection, the one the classifier reads (the only image feature cached; CLIP's "
            "pre-projection feature is not), so ReAct clips, ASH prunes and SCALE scales that embedding and "
            "DICE sparsifies the head on it; `linear_head` is the classifier as W, b (the method's head, else "
            "logit scale × class prompts with b = 0); `train_stats` are the ID-train statistics of that embedding "
            "(class means, shared covariance, mean, the ReAct percentile), `train_features` the KNN bank.")


def _other_scores_section(tables: Tables, chosen: dict, ci: pd.DataFrame, shown: list[str]) -> list[str]:
    """Every computed score the main table leaves out (the classifier-logit scores msp, energy,
    max_logit), compactly, and a note for every score whose AUROC is below chance."""
    ood = tables.ood[tables.ood["run_id"].isin([r["run_id"] for r in chosen.values()])] if chosen else tables.ood
    computed = sorted(ood["score"].unique()) if not ood.empty else []
    rest = [s for s in computed if s not in shown]
    lines = []
    if rest:
        lines += ["## Every other computed score (average over OoD sets, percent)",
                  "FPR95 / AUROC averaged over the OoD test sets, AUROC with its 95% bootstrap interval. The "
                  "classifier-logit scores (msp, energy, max_logit, odin, gen) and the OpenOOD ports that take "
                  "`linear_head` read each method's own classifier: its head (LP, FFT, LP-FT), else logit scale × "
                  "cosine to its class prompts. The OpenOOD v1.5 ports (`harness scores`) are in the last tables.", ""]
        for group in ([s for s in rest if not _is_port(s)], [s for s in rest if _is_port(s)]):
            for start in range(0, len(group), OTHER_SCORES_PER_TABLE):  # a readable width per table
                lines += [md.score_table(chosen, ci, ood, group[start:start + OTHER_SCORES_PER_TABLE]), ""]
        lines += [_inputs_note(rest), ""]
    low = ood.groupby(["run_id", "score"])["auroc"].mean() if not ood.empty else pd.Series(dtype=float)
    names = {r["run_id"]: md.method_label(m) for m, r in chosen.items()}
    flagged = {}
    for (rid, score), auroc in low.items():
        if md.below_chance(auroc):
            flagged.setdefault(score, []).append(f"{names.get(rid, rid)} {100 * auroc:.2f}")
    for score, where in flagged.items():
        lines += [f"⚠ **{score} is below chance** (average AUROC under 50): {', '.join(where)}. It ranks OoD "
                  "samples as more in-distribution than ID ones here, so its FPR95 and AUROC say the score "
                  "points the wrong way on this data, not that detection is hard.", ""]
    return lines


def _shown_path(path: Path, report_dir: Path) -> str:
    """``path`` relative to the report's directory, else to the working directory, when it lies
    inside one (a committed report names no machine's paths), else as given."""
    for base in (report_dir, Path.cwd()):
        try:
            return str(path.resolve().relative_to(base.resolve()))
        except ValueError:
            continue
    return str(path)


def _paired_section(diffs: pd.DataFrame) -> list[str]:
    head = ["## Is the difference real? (paired bootstrap)",
            "Both methods scored the same test samples, paired by sample key; each replicate resamples "
            "those samples once and computes both methods' metrics on them. Δ = first − second, in "
            "percentage points. ✓: the 95% interval excludes 0 in the first method's favour "
            "(lower FPR95, higher AUROC); ✗: it excludes 0 against it. The sentences give each gap's size "
            "and direction with its interval.", ""]
    if diffs.empty:
        return head + ["_Not available: needs per-sample scores of a method and a baseline (zero-shot, FLYP)._", ""]
    return head + md.paired_summary(diffs) + ["", md.paired_table(diffs), ""]


def _paper_section(suite: str, chosen: dict[str, pd.Series], ood: pd.DataFrame) -> list[str]:
    head = ["## The paper beside us"]
    if suite not in paper.PAPER_SUITES:
        return head + [f"Suite `{suite}`: the paper's numbers (ViT-B/16 on ImageNet-1k, suites "
                       f"{', '.join(paper.PAPER_SUITES)}) are not comparable, so none are shown.", ""]
    ours = ood.drop(columns=["method"], errors="ignore").merge(pd.DataFrame({"run_id": [r["run_id"] for r in chosen.values()], "method": list(chosen)}),
                     on="run_id")
    found = paper.comparison(suite, ours)
    if found.empty:
        return head + ["_No OoD set of ours matches the paper's names._", ""]
    acc = [f"{methods.label(m)} {100 * r['id_accuracy']:.2f} vs {paper.ID_ACCURACY[m]:.2f}"
           for m, r in chosen.items() if m in paper.ID_ACCURACY]
    return head + ["Paper: Kim & Hwang, CVPR 2025, ViT-B/16 (../shared/reference/method.md); percent, "
                   "ours − paper in percentage points.", "", md.paper_table(found), "",
                   "ID accuracy, ours vs paper: " + "; ".join(acc) + ".", ""]


def _seed_section(runs: pd.DataFrame, ood: pd.DataFrame, scores: list[str]) -> list[str]:
    spread = stats.seed_spread(runs, ood, scores)
    head = ["## Seeds"]
    if spread.empty:
        return head + ["Every setting was run with one seed, so the spread over training seeds is unknown: "
                       "the intervals above cover test-sample noise only.", ""]
    return head + ["Mean ± sample standard deviation (ddof = 1) over seeds of the same setting; "
                   "FPR95 / AUROC averaged over OoD sets.", "", md.seed_table(spread), ""]


def _projections(image, text) -> dict[str, tuple]:
    img, txt, explained = gap.pca_2d(image, text)
    along_img, along_txt = gap.gap_axis_2d(image, text)
    return {"PCA": (img, txt, (f"PC1 ({100 * explained[0]:.0f}% var)", f"PC2 ({100 * explained[1]:.0f}% var)")),
            "gap axis": (along_img, along_txt, ("gap direction", "top PC of the rest"))}


def _gap_section(runs: pd.DataFrame, chosen: dict[str, pd.Series], png: Path) -> list[str]:
    lines = ["## Modality gap (ID test set)",
             "f_i: ID test image embeddings, t_k: class-prompt embeddings (both L2-normalised), y_i: the "
             "class of image i. Pairwise measures use at most 2,000 images (seeded subsample).", ""]
    lines += md.gap_definitions() + ["", md.gap_table(runs[runs["status"] == "finished"]), "",
                                     "The paper's Table 4 uses unpublished definitions; these are ours.", ""]
    panels, missing = {}, []
    for method, run in chosen.items():
        emb_dir = Path(run["run_dir"]) / "embeddings"
        image, text = emb_dir / f"{run['id_test']}.pt", emb_dir / "text.pt"
        if not (image.is_file() and text.is_file()):
            missing.append(f"`{run['run_id']}` (no {image.name} and text.pt under {emb_dir})")
            continue
        panels[method] = _projections(evaluate.Embeddings.load(image).features.double().numpy(),
                                      evaluate.TextSide.load(text).class_features.double().numpy())
    if plots.gap_projection(panels, png):
        lines += ["Top row: 2-D PCA of the ID test images and class prompts, fitted on both together (as the "
                  "paper's figure). Bottom row: the gap direction (prompt centroid → image centroid) against the "
                  "top principal axis of the rest, so the centroids sit `centroid_distance` apart horizontally. "
                  "Arrows join the image centroid to the prompt centroid.", f"![modality gap]({png.name})", ""]
    if missing:
        lines += ["Projection skipped for " + "; ".join(missing) + ": the run directory is gone or predates "
                  "saved text features.", ""]
    return lines


def _suite_sections(tables: Tables, suite: str, scores: list[str], ci: pd.DataFrame, out_md: Path,
                    suffix: str, n_boot: int, boot: Bootstraps | None = None) -> tuple[list[str], list[str]]:
    """(the suite's answer lines, for the report's opening; the rest of its sections)."""
    runs = tables.runs[tables.runs["suite"] == suite]
    ood = tables.ood[tables.ood["run_id"].isin(runs["run_id"])] if not tables.ood.empty else tables.ood
    chosen = stats.select_runs(runs)
    diffs = stats.paired_differences(tables, chosen, scores, n_boot, boot=boot)
    answer = report_answer.section(chosen, ci, ood, diffs, scores)
    lines = ["## Main table (FPR95 ID-positive / AUROC, percent, 95% bootstrap CI)",
             "FLYP is λ = 0; CMA is the λ > 0 run with the best validation objective (mean of ID-val accuracy "
             "and OoD-val AUROC); test sets never enter the selection. ID accuracy: Wilson 95% interval.", "",
             md.main_table(chosen, ci, ood, scores) if not ood.empty else "_no OoD metrics recorded_", ""]
    lines += _selection_line(runs, chosen)
    lines += _other_scores_section(replace(tables, ood=ood), chosen, ci, scores)
    lines += _fpr_conventions(chosen, ood, scores)
    lines += _paired_section(diffs)
    lines += _paper_section(suite, chosen, ood) + _seed_section(runs, ood, scores)
    figures = out_md.parent / f"{out_md.stem}{suffix}"
    if _lambda_plot(runs, ood, ci, scores, Path(f"{figures}-lambda.png")):
        lines += ["## λ sweep (test sets, averaged, 95% CI)", f"![lambda sweep]({figures.name}-lambda.png)", ""]
    arrays = _arrays(tables, chosen, scores)
    if plots.score_histograms(arrays, Path(f"{figures}-scores.png")):
        lines += ["## Score distributions, ID vs OoD", f"![score histograms]({figures.name}-scores.png)", ""]
    if plots.roc_curves(arrays, Path(f"{figures}-roc.png")):
        lines += ["## ROC curves (ID positive; dotted: 95% of ID accepted, where FPR95 is read)",
                  f"![ROC curves]({figures.name}-roc.png)", ""]
    return answer, lines + _gap_section(runs, chosen, Path(f"{figures}-gap.png"))


def _fpr_conventions(chosen: dict[str, pd.Series], ood: pd.DataFrame, scores: list[str]) -> list[str]:
    """FPR95 under both conventions for the main table's runs: ID-positive (MCM, NegLabel, CMA papers;
    the tables above) and OoD-positive (OpenOOD v1.5), per score and OoD set, in percent."""
    if ood.empty or "fpr95_ood_positive" not in ood:
        return []
    rows = []
    for method, run in chosen.items():
        mine = ood[(ood["run_id"] == run["run_id"]) & ood["score"].isin(scores)]
        rows += [[methods.label(method), r["score"], r["dataset"], f"{100 * r['fpr95']:.2f}",
                  f"{100 * r['fpr95_ood_positive']:.2f}"] for _, r in mine.iterrows()]
    return ["## FPR95 under both conventions (percent)",
            "ID-positive: the share of OoD accepted at the threshold keeping 95% of ID (the tables above, the "
            "MCM / NegLabel / CMA papers). OoD-positive: the share of ID rejected at the threshold catching 95% "
            "of OoD (OpenOOD v1.5).", "",
            md.table(["method", "score", "OoD set", "FPR95 ID-positive", "FPR95 OoD-positive"], rows), ""] if rows else []


def _lam(lam: float) -> str:
    return "" if pd.isna(lam) else f" λ={lam:g}"


def _common_sections(tables: Tables, out_md: Path) -> list[str]:
    lines = []
    labels = {r["run_id"]: f"{methods.label(r['method'])}{_lam(r['lam'])} seed {r['seed']}"
              for _, r in md.by_method(tables.runs).iterrows()}
    png = out_md.parent / f"{out_md.stem}-training.png"
    if plots.training_curves(tables.epochs, labels, png):
        lines += ["## Training curves (validation sets)", f"![training curves]({png.name})", ""]
    per_run, per_sweep = stats.cost(tables.runs)
    lines += ["## Cost", "accelerator-hours = the run's wall hours × accelerators it held (workers × GPUs per "
              "worker on a GPU; 0 on CPU, so a CPU-only demo costs 0 accelerator-hours). A run's wall time "
              "runs from building the model to its saved checkpoint: Ray start-up and queueing are not in it.",
              ""] + md.cost_tables(per_run, per_sweep) + [""]
    return lines + ["## Every run", md.trials_table(tables.runs, tables.ood), ""]


def _intervals(tables: Tables, shown: list[str], n_boot: int, boot: Bootstraps | None = None) -> pd.DataFrame:
    """Intervals of only what the report prints with one: every score of the runs it selects (one per
    method and suite: the main table, the table of every other score, the answers), and the shown
    scores of the λ-sweep figure's runs (FLYP and CMA at every λ and seed, zero-shot). A bootstrap per
    run and score is most of the report's time; the other runs' sections print point estimates."""
    selected, swept = set(), set()
    for suite in tables.runs["suite"].unique():
        runs = tables.runs[tables.runs["suite"] == suite]
        selected |= {run["run_id"] for run in stats.select_runs(runs).values()}
        swept |= {rid for part in _lambda_runs(runs) for rid in part["run_id"]}
    return stats.intervals(tables, tables.runs, n_boot, boot=boot,
                           keep=lambda run_id, score: run_id in selected or (score in shown and run_id in swept))


def write(results_dirs: Path | Sequence[Path], out_md: Path, title: str = "OoD detection report", notes: str = "",
          filters: Filters | None = None, n_boot: int = N_BOOT, run_sections: Path | None = None) -> Path:
    """Write ``out_md`` and its PNGs (beside it) from the tables in ``results_dirs``.

    With ``run_sections``, also write ``<run_sections>/<run_id>/report.md``, each run's own section.
    """
    dirs = [results_dirs] if isinstance(results_dirs, Path) else list(results_dirs)
    filters = filters or Filters()
    tables = stats.apply(stats.load(dirs), filters)
    if tables.runs.empty:
        raise stats.NothingToReport(f"no runs left after the filters ({filters.describe()})")
    scores, suites = _scores(tables, filters), sorted(tables.runs["suite"].unique())
    # One Bootstraps for the whole report: paired differences reuse the replicates of the runs'
    # own intervals, and every result is kept on disk by the digest of its inputs.
    boot = Bootstraps(default_root())
    ci = _intervals(tables, scores, n_boot, boot)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    sources = ", ".join(f"`{_shown_path(stats.results_dir(Path(d)), out_md.parent)}`" for d in dirs)
    bodies = {}
    answers = [f"# {title}", f"_Generated {time.strftime('%Y-%m-%d')}._", ""]
    for suite in suites:
        suffix = f"-{suite}" if len(suites) > 1 else ""
        answer, bodies[suite] = _suite_sections(tables, suite, scores, ci, out_md, suffix, n_boot, boot)
        answers += ([f"**Suite {suite}**", ""] if len(suites) > 1 and answer else []) + answer
    sections = answers + [
                f"Read {sources}: {len(tables.runs)} runs, suites {', '.join(suites)}; filters: "
                f"{filters.describe()}. Intervals: 95% percentile bootstrap, {n_boot} replicates (seed 0), "
                "resampling the ID and OoD test samples (one ID draw shared by the OoD sets of a replicate, so "
                "the average over sets has an interval too). They cover test-sample noise, not training seeds.", ""]
    sweeps = sorted(tables.runs["sweep"].dropna().unique()) if "sweep" in tables.runs else []
    if len(sweeps) > 1:
        sections += [f"These tables hold {len(sweeps)} sweeps ({', '.join(f'`{s}`' for s in sweeps)}): the runs of "
                     "all of them compete below. `harness report --tag SWEEP` keeps one.", ""]
    if notes:
        sections += [notes, ""]
    for suite in suites:
        sections += ([f"# Suite {suite}", ""] if len(suites) > 1 else []) + bodies[suite]
    sections += report_conventions.lines(tables.runs, scores) + _common_sections(tables, out_md)
    out_md.write_text("\n".join(sections))
    if run_sections is not None:
        _write_run_sections(tables, ci, run_sections)
    return out_md


def _write_run_sections(tables: Tables, ci: pd.DataFrame, root: Path) -> None:
    per_run, _ = stats.cost(tables.runs)
    hours = per_run.set_index("run_id")["accelerator_h"]
    for _, run in tables.runs.iterrows():
        path = root / run["run_id"] / "report.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(md.run_section(run, ci, tables.ood, float(hours[run["run_id"]])))
