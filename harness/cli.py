"""Command line: parse, validate the config at the edge, call the driver. Nothing else lives here.

The grammar (every command's arguments) is harness.cli_parser's and the data-preparation commands
(shards, negatives, cache) harness.cli_data's; here, the dispatch and every other command's handler.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from harness import config as config_mod
from harness.cli_data import cache, negatives, shards
from harness.cli_parser import UsageError, build_parser

REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "sweeps" / "demo.yaml"
RESULTS_ROOT = "HARNESS_RESULTS_ROOT"

RUNS = ("train", "sweep", "demo")  # the commands that validate a config, then train or search


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # --help ends here, before any heavy import
    from harness.orchestration import preflight
    from harness.results import outdir

    try:
        if args.command not in RUNS:
            return COMMANDS[args.command](args)
        cfg, out, label = _checked_run(args)
    except (config_mod.ConfigError, preflight.PreflightError, FileNotFoundError, UsageError,
            outdir.OutDirTaken) as err:
        print(f"harness {args.command}: {err}", file=sys.stderr)
        return 2
    return _run(args, cfg, out, label)  # a failure from here on is not a refused input


def _methods(args) -> int:
    from harness import methods

    print(methods.describe())
    return 0


def _scores(args) -> int:
    from harness.scores.registry import describe

    import harness.scores  # noqa: F401  (registers every score module)

    print(describe())
    return 0


def _checked_run(args):
    """train / sweep / demo: the config and every check that needs no compute, before any is spent
    (each names the field and what is allowed) -> (config, output directory, its definition's label)."""
    from harness.orchestration import preflight
    from harness.results import outdir

    cfg = config_mod.load(DEMO_CONFIG if args.command == "demo" else args.config,
                          args.overrides + _resource_overrides(args), space=args.space)
    if args.command == "demo":
        _check_demo_methods(cfg, args.demo_methods)
    out = preflight.check_run(cfg, args.out or default_out(cfg.name), args.address,
                              sweep=args.command != "train")
    return cfg, out, outdir.claim(out, cfg, append=args.append)


def _check_demo_methods(cfg, only: list[str]) -> None:
    """The demo's plan comes from the method registry, not the file's search space."""
    from harness import methods
    from harness.orchestration import demo as demo_plan

    unknown = [m for m in only if m not in methods.names()]
    if unknown:
        raise UsageError(f"--method: unknown method(s) {', '.join(map(repr, unknown))} "
                         f"(allowed: {', '.join(methods.names())})")
    try:
        demo_plan.first_round(cfg, only or None)
    except ValueError as err:
        raise UsageError(f"--method: {err}") from None


def _run(args, cfg, out: Path, label: str) -> int:
    """Train, sweep or demo on a validated config; heavy imports (torch, ray) only now."""
    from harness.orchestration import driver
    from harness.results import tracking

    cfg = _without_credentials(cfg, tracking)

    from harness.orchestration.admission import ResourceError
    from harness.orchestration.tune_sweep import SweepInterrupted

    timer = driver.Timer()
    kind = "train" if args.command == "train" else "sweep"
    name = "-".join(part for part in (cfg.name, label, kind) if part)  # label: an --append-ed definition's
    print(f"output directory: {out}", flush=True)
    live = tracking.open_live(cfg, out, name)  # None: unreachable, warned about at the end
    try:
        if args.command == "train":
            records = driver.train(cfg, out, args.address, timer, live, name="-".join(p for p in (cfg.name, label) if p))
        elif args.command == "demo":
            records = driver.demo(cfg, out, args.address, timer, live, name=name, only=args.demo_methods or None)
        else:
            records = driver.sweep(cfg, out, args.address, timer, live, name=name)
    except ResourceError as err:
        _abort(live, "FAILED")
        print(f"harness {args.command}: {err}", file=sys.stderr)
        return 2
    except SweepInterrupted as err:
        _abort(live, "KILLED")
        print(f"harness {args.command}: {err}", file=sys.stderr)
        return 130  # the shell's code for Ctrl-C
    except BaseException:
        _abort(live, "FAILED")
        raise
    _summary(driver, cfg, out, name, records, timer, live)
    ended = ("finished", "stopped") + (("diverged",) if kind == "sweep" else ())  # a diverged trial is a search outcome
    return 0 if all(r.status in ended for r in records) else 1


def _summary(driver, cfg, out: Path, name: str, records, timer, live) -> None:
    """The report, the tables and MLflow of a finished train / sweep / demo, and where each is."""
    md, uri, synced = driver.finish(cfg, out, name, records, timer, notes=_notes(timer), live=live)
    print("\nwhere the time went:\n" + timer.table())
    (out / "timings.md").write_text(timer.table() + "\n")
    print(f"\nreport:        {md}\nparquet:       {driver.results_dir(out)}/<table>/<run_id>.parquet")
    if synced:
        print(f"mlflow store:  {uri}\nmlflow UI:     mlflow ui --backend-store-uri {uri} "
              f"--port 5000   (then open http://127.0.0.1:5000)")
    else:
        print(f"mlflow store:  {uri} NOT REACHED: run `harness sync-mlflow --out {out}` once it is back")


def _abort(live, status: str) -> None:
    if live is not None:
        live.abort(status)


def default_out(name: str) -> Path:
    """Where a run writes without --out: under $HARNESS_RESULTS_ROOT (a cluster's shared results
    root; cluster.yaml sets /mnt/efs/runs) if set, else runs/ in the current directory."""
    return Path(os.environ.get(RESULTS_ROOT) or "runs") / name


def _evaluate(args) -> int:
    """Resolve the weights and every config (one per suite) before any compute, then evaluate each."""
    before = os.environ.get("HARNESS_EMBED_CACHE")
    if args.cache is not None:
        # read by embed_cache here and, through cluster.init's runtime_env, in Ray workers
        os.environ["HARNESS_EMBED_CACHE"] = str(args.cache.expanduser().resolve())
    try:
        return _evaluate_sources(args)
    finally:  # a library caller (a test, a notebook) keeps its own cache afterwards
        if before is None:
            os.environ.pop("HARNESS_EMBED_CACHE", None)
        else:
            os.environ["HARNESS_EMBED_CACHE"] = before


def _evaluate_sources(args) -> int:
    from harness.orchestration import preflight

    from harness.orchestration import evaluate_weights as ew
    from harness.suites import SuiteError

    try:
        per_suite = ew.suite_overrides(args.suite) or [[]]
        if args.workers is not None and args.address is None:
            raise UsageError("--workers needs --address (without it the evaluation runs in this process)")
        workers = [f"resources.num_workers={args.workers}"] if args.workers is not None else []
        sources = [ew.resolve(args.weights, args.arch,
                              args.overrides + workers + suite + ew.score_overrides(args.scores), args.runs_root)
                   for suite in per_suite]
    except (ew.SourceError, SuiteError) as err:
        raise UsageError(str(err)) from None
    cfg = sources[0].cfg
    out = preflight.check_run(cfg, args.out or default_out(f"evaluate-{cfg.name}"), args.address, sweep=False)
    from harness.orchestration import driver
    from harness.results import tracking

    from harness.data.badsamples import BadDataError

    timer = driver.Timer()
    records, bad = [], None
    for source in sources:
        with timer.stage(f"evaluate {args.weights} on {', '.join(source.cfg.data.ood_test)}"):
            try:
                records.append(ew.evaluate(source, out, log=timer.log, address=args.address))
            except BadDataError as err:  # names the shard and sample; the suites done so far are kept
                bad = err
                break
    cfg = _without_credentials(cfg, tracking)
    if records:
        md, uri, synced = driver.finish(cfg, out, f"{cfg.name}-evaluate", records, timer)
        print(f"\nreport:        {md}\nparquet:       {driver.results_dir(out)}/<table>/<run_id>.parquet\n"
              f"mlflow store:  {uri}" + ("" if synced else f" NOT REACHED: run `harness sync-mlflow --out {out}`"))
    if bad is not None:
        print(f"harness evaluate: {bad}", file=sys.stderr)
        return 2
    return 0 if all(r.status == "finished" for r in records) else 1


def _without_credentials(cfg, tracking):
    """The config whose tracking URI carries no user:password (moved to MLflow's variables),
    so no secret reaches Ray's storage, Parquet, MLflow params or the terminal."""
    uri = tracking.strip_credentials(cfg.tracking.mlflow_uri)
    return cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"mlflow_uri": uri})})


def _resource_overrides(args) -> list[str]:
    out = []
    if args.workers is not None:
        out.append(f"resources.num_workers={args.workers}")
    if args.gpus_per_worker is not None:
        out += [f"resources.use_gpu={'true' if args.gpus_per_worker > 0 else 'false'}",
                f"resources.gpus_per_worker={args.gpus_per_worker}"]
    return out


def _notes(timer) -> str:
    return "## Where the time went (before this report)\n" + timer.table()


def _report(args) -> int:
    from harness.orchestration import preflight

    if len(args.results_dirs) > 1 and args.output is None:
        raise UsageError("--output is required when reporting over several directories")
    if args.n_boot < 1:
        raise UsageError(f"--n-boot must be >= 1, got {args.n_boot}")
    preflight.check_report(args.results_dirs, args.score, args.suite, args.output, args.method)
    from harness import report
    from harness.report.stats import Filters, NothingToReport, results_dir

    first = results_dir(args.results_dirs[0])
    output = args.output or first.parent / "report.md"
    timings = first.parent / "timings.md"  # written by train / sweep / demo; shown for one directory only
    one = len(args.results_dirs) == 1
    notes = "## Where the time went\n" + timings.read_text() if one and timings.is_file() else ""
    filters = Filters(tuple(args.method), tuple(args.score), tuple(args.suite), tuple(args.tag))
    try:
        print(report.write(args.results_dirs, output, notes=notes, filters=filters, n_boot=args.n_boot))
    except NothingToReport as err:
        raise UsageError(str(err)) from None
    return 0


def _bench(args) -> int:
    from harness.orchestration import preflight

    from harness.bench import run

    if args.smoke and args.full:
        raise UsageError("--smoke and --full exclude each other")
    try:
        names = run.select(args.only)
    except run.UnknownBenchmarkError as err:
        raise UsageError(str(err)) from None
    out = preflight.check_out_dir(args.out)
    run.run(out, names, smoke=args.smoke, full=args.full)
    print(f"\n{(out / 'bench.md').read_text()}\nparquet:  {out / 'bench.parquet'}\nmarkdown: {out / 'bench.md'}")
    return 0


def _sync_mlflow(args) -> int:
    from harness.orchestration import preflight

    out = args.out.expanduser().resolve()
    if not (out / "results").is_dir():
        raise UsageError(f"--out {out}: no results/ directory there (the --out of a train, sweep or demo)")
    preflight.check_tracking_uri(args.tracking_uri, "--tracking-uri")
    from harness.orchestration import driver
    from harness.results import tracking

    left = driver.sync_mlflow(out, tracking.strip_credentials(args.tracking_uri))
    return 1 if left else 0


# One handler per command; train, sweep and demo (RUNS) validate first, then run (main says how).
COMMANDS = {"report": _report, "bench": _bench, "sync-mlflow": _sync_mlflow, "shards": shards,
            "negatives": negatives, "evaluate": _evaluate, "cache": cache, "methods": _methods,
            "scores": _scores}


if __name__ == "__main__":
    sys.exit(main())
