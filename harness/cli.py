"""Command line: parse, validate the config at the edge, call the driver. Nothing else lives here."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from harness import config as config_mod

REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "sweeps" / "demo.yaml"
RESULTS_ROOT = "HARNESS_RESULTS_ROOT"


def _common(parser: argparse.ArgumentParser, needs_config: bool = True) -> None:
    if needs_config:
        parser.add_argument("config", type=Path, help="experiment YAML (e.g. sweeps/demo.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set method.name=cma --set method.lam=0.01 (repeatable)")
    parser.add_argument("--space", action="append", default=[], metavar="KEY=FORM:V1,V2,...",
                        help="add a searched key to search.space, e.g. --space method.lam=grid:0,0.001,0.01, "
                             "--space optim.lr=loguniform:1e-5,1e-3 or --space 'optim.lr={choice: [1e-5, 1e-4]}' "
                             "(repeatable; replaces the file's entry for that key)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: $HARNESS_RESULTS_ROOT/<name> if set, else runs/<name>)")
    parser.add_argument("--address", default=None,
                        help="join this Ray cluster: HOST:PORT, or auto for the one registered on this machine "
                             "(default: start a private local one, never joining another)")
    parser.add_argument("--append", action="store_true",
                        help="record into an --out that holds another experiment definition, keeping both "
                             "(this one's runs labelled d2, d3, ...); without it such an --out is refused")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="data-parallel workers per run (shortcut for --set resources.num_workers=N)")
    parser.add_argument("--gpus-per-worker", type=float, default=None, metavar="G",
                        help="GPUs per worker; > 0 turns on resources.use_gpu")


def build_parser() -> argparse.ArgumentParser:
    # No registry here: importing the methods imports torch, and --help should answer at once.
    parser = argparse.ArgumentParser(
        prog="harness", description="Fine-tune CLIP for out-of-distribution detection and compare methods "
        "(`harness methods` lists them) fairly: Ray Train runs, Ray Tune sweeps, Parquet tables, MLflow, markdown reports.",
        epilog="Start with `harness demo --out runs/demo`; `harness COMMAND --help` gives a command's options.")
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    sub.add_parser("methods", help="every registered method with its parameters and defaults (the method: section)")
    sub.add_parser("scores", help="every registered score with its inputs, eval.* settings and defaults")
    _common(sub.add_parser("train", help="one run from the config's base values (search space ignored)"))
    _common(sub.add_parser("sweep", help="Ray Tune search over the config's search space"))
    demo = sub.add_parser("demo", help="every registered method, compared on the embedded synthetic data (sweeps/demo.yaml; "
                          "the plan comes from the method registry, not the file's search space)")
    _common(demo, needs_config=False)
    demo.add_argument("--method", dest="demo_methods", action="append", default=[], metavar="METHOD",
                      help="run only this method's demo entries (repeatable; default: every registered method; "
                           "`harness methods` lists them)")
    rep = sub.add_parser("report", help="markdown report + plots from one or more results directories")
    rep.add_argument("results_dirs", type=Path, nargs="+", metavar="DIR",
                     help="an --out directory, or its results/ subdirectory (several: one report over all)")
    rep.add_argument("--output", type=Path, default=None,
                     help="markdown file (default with one DIR: <out>/report.md; required with several)")
    rep.add_argument("--method", action="append", default=[], metavar="METHOD",
                     help="keep only this method's runs (repeatable; `harness methods` lists them)")
    rep.add_argument("--score", action="append", default=[], help="keep only this score, e.g. neglabel (repeatable)")
    rep.add_argument("--suite", action="append", default=[], help="keep only this suite, e.g. mos (repeatable)")
    rep.add_argument("--tag", action="append", default=[], help="keep runs whose name or sweep is TAG (repeatable)")
    rep.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates per interval (default 1000)")
    bench = sub.add_parser("bench", help="performance benchmarks: a table, bench.parquet and bench.md")
    bench.add_argument("--out", type=Path, default=Path("runs/bench"), help="output directory (default runs/bench)")
    bench.add_argument("--only", action="append", default=[], metavar="NAME",
                       help="run only this benchmark (repeatable): pipeline, ray, eval, metrics, memory, gpu")
    bench.add_argument("--smoke", action="store_true", help="tiny sizes, seconds per benchmark (CI)")
    bench.add_argument("--full", action="store_true", help="the issue's full problem sizes (slow on a CPU)")
    sync = sub.add_parser("sync-mlflow", help="log to MLflow the runs it missed while unreachable (safe to repeat)")
    sync.add_argument("--out", type=Path, required=True, help="the --out directory of the train / sweep / demo")
    sync.add_argument("--tracking-uri", default=None, metavar="URI",
                      help="log there instead of each sweep's own tracking.mlflow_uri (e.g. the server moved)")
    _shards_parser(sub)
    _negatives_parser(sub)
    _evaluate_parser(sub)
    return parser


def _evaluate_parser(sub) -> None:
    ev = sub.add_parser("evaluate", help="evaluate any weights on any suite, every score, no training")
    ev.add_argument("--weights", required=True, metavar="W",
                    help="an open_clip tag (openai), a checkpoint file, or a run directory / run id of an earlier --out")
    ev.add_argument("--arch", default=None, help="open_clip architecture (default: the source run's, else the config's)")
    ev.add_argument("--suite", action="append", default=[], metavar="S",
                    help="mos or openood-v1.5 (repeatable: every set encoded once, one table per suite)")
    ev.add_argument("--scores", action="append", default=None, metavar="A,B",
                    help="scores to compute (default: the config's eval.scores)")
    ev.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set data.ood_test=[a,b] (repeatable)")
    ev.add_argument("--out", type=Path, default=None, help="output directory (default: runs/evaluate-<name>)")
    ev.add_argument("--runs-root", type=Path, default=Path("runs"), help="where run ids are looked up (default runs)")
    ev.add_argument("--cache", type=Path, default=None,
                    help="embedding cache directory (default $HARNESS_CACHE/embeddings)")
    ev.add_argument("--address", default=None,
                    help="evaluate on Ray Train workers that split the shards: HOST:PORT, auto (the cluster "
                         "registered on this machine) or local (a private local one); default: this process, no Ray")
    ev.add_argument("--workers", type=int, default=None, metavar="N",
                    help="Ray workers with --address (shortcut for --set resources.num_workers=N)")
    cache = sub.add_parser("cache", help="the shared embedding cache: size per weights digest, or prune it")
    cache.add_argument("action", choices=("size", "prune"))
    cache.add_argument("--cache", type=Path, default=None, help="default $HARNESS_CACHE/embeddings")
    cache.add_argument("--older-than-days", type=float, default=None,
                       help="prune only entries unused for this many days (default: all)")


def _negatives_parser(sub) -> None:
    from harness.config import EvalConfig

    ev = EvalConfig()  # the config's defaults, so a mined file matches an evaluation run's prompts
    neg = sub.add_parser("negatives", help="NegLabel's candidates from WordNet 3.0, mined with a model (NegMining)")
    neg.add_argument("out", type=Path, help="mined list to write (kind<TAB>word lines under a provenance header); "
                                            "the candidates go beside it as <out>.candidates.tsv")
    neg.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet"),
                     help="WordNet 3.0 database directory with data.noun, data.adj (default: Debian's wordnet-base)")
    neg.add_argument("--classnames", default="imagenet", metavar="imagenet|FILE",
                     help="ID class names: excluded from the candidates and mined against (default: ImageNet-1k)")
    neg.add_argument("--arch", default="ViT-B-16", help="open_clip architecture (default ViT-B-16, the paper's)")
    neg.add_argument("--pretrained", default="openai", metavar="TAG|FILE|none",
                     help="an open_clip tag whose file is cached (default openai), a checkpoint path, "
                          "or none (random weights)")
    neg.add_argument("--percentile", type=float, default=ev.neg_percentile,
                     help=f"NegMining's percentile eta of the similarity to the ID prompts (default {ev.neg_percentile})")
    neg.add_argument("--ratio", type=float, default=ev.neg_ratio,
                     help=f"share of the least ID-like nouns and of adjectives kept (default {ev.neg_ratio})")
    neg.add_argument("--eval-prompt", default=ev.eval_prompt, help=f"ID prompt (default {ev.eval_prompt!r})")
    neg.add_argument("--noun-prompt", default=ev.noun_prompt, help=f"default {ev.noun_prompt!r}")
    neg.add_argument("--adjective-prompt", default=ev.adjective_prompt, help=f"default {ev.adjective_prompt!r}")
    neg.add_argument("--limit", type=int, default=None, metavar="N",
                     help="only the first N candidates of each kind (a quick check, not the method)")
    neg.add_argument("--batch-size", type=int, default=512, help="prompts per text-encoder batch (default 512)")
    neg.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    neg.add_argument("--mode", choices=("neglabel", "csp"), default="neglabel",
                     help="neglabel: NegLabel's pool; csp: CSP's pool (its WordNet files; each adjective replaced "
                          "by '<adjective> <superclass>', one seeded superclass of 14), for --set eval.csp_negatives=OUT")
    neg.add_argument("--csp-seed", type=int, default=ev.csp_seed,
                     help=f"--mode csp: seed of the superclass choice, random.Random(seed) (default {ev.csp_seed})")


def _shards_parser(sub) -> None:
    shards = sub.add_parser("shards", help="real image collections into shards + manifest (or index foreign shards)")
    kinds = shards.add_subparsers(dest="source", required=True)
    folder = kinds.add_parser("imagefolder", help="root/<class>/<image> (ImageNet train/val by wnid)")
    folder.add_argument("src", type=Path, help="the tree's root (one folder per class)")
    folder.add_argument("--holdout-per-class", type=int, default=None, metavar="N",
                        help="hold N images per class out of OUT into --holdout-out (ID validation for model "
                             "selection; the same images on every run)")
    folder.add_argument("--holdout-out", type=Path, default=None, metavar="DIR",
                        help="dataset directory for the held-out images; its folder name is the dataset name")
    imglist = kinds.add_parser("imagelist", help="an OpenOOD v1.5 image list: 'relative/path label' per line")
    imglist.add_argument("src", type=Path, help="the list file, e.g. benchmark_imglist/imagenet/test_ssb_hard.txt")
    imglist.add_argument("--root", type=Path, required=True, help="the folder the listed paths are relative to")
    mos = kinds.add_parser("mos", help="a MOS OoD set: every image below a folder (label -1)")
    mos.add_argument("src", type=Path, help="the set's folder, e.g. iNaturalist/")
    for p in (folder, imglist, mos):
        p.add_argument("out", type=Path, help="dataset directory to write (shards + manifest.json)")
        p.add_argument("--name", required=True, help="dataset name: shard prefix and sample keys ([A-Za-z0-9_-])")
        p.add_argument("--kind", choices=("id", "ood"), default=None,
                       help="default: id for imagefolder (and for imagelist with --classnames), else ood")
        p.add_argument("--classnames", default=None, metavar="imagenet|FILE",
                       help="class names: open_clip's ImageNet names or a file, one a line "
                            "(imagefolder default: ImageNet names for 1000 wnid folders, else the folder names)")
        p.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
        p.add_argument("--resize", type=int, default=None, metavar="N",
                       help="re-encode with the shorter side at most N pixels (default: original bytes)")
        p.add_argument("--workers", type=int, default=1, metavar="N", help="local writer processes (default 1)")
        p.add_argument("--address", default=None,
                       help="write shards as Ray tasks on this cluster ('auto': the running one; 'local': start one)")
    index = kinds.add_parser("index", help="write manifest.json for existing shards (counts and checksums)")
    index.add_argument("out", type=Path, metavar="DIR", help="directory holding the .tar shards (searched recursively)")
    index.add_argument("--name", required=True, help="dataset name")
    index.add_argument("--kind", choices=("id", "ood", "pretrain"), default=None,
                       help="default: id with --classnames, else ood")
    index.add_argument("--classnames", default=None, metavar="imagenet|FILE", help="class names (ID datasets)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # --help ends here, before any heavy import
    from harness.orchestration import preflight
    from harness.results import outdir

    try:
        if args.command == "report":
            return _report(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "sync-mlflow":
            return _sync_mlflow(args)
        if args.command == "shards":
            return _shards(args)
        if args.command == "negatives":
            return _negatives(args)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "cache":
            return _cache(args)
        if args.command == "methods":
            from harness import methods

            print(methods.describe())
            return 0
        if args.command == "scores":
            from harness.scores.registry import describe

            import harness.scores  # noqa: F401  (registers every score module)

            print(describe())
            return 0
        cfg = config_mod.load(DEMO_CONFIG if args.command == "demo" else args.config,
                              args.overrides + _resource_overrides(args), space=args.space)
        if args.command == "demo":  # its plan comes from the method registry, not the file's search space
            from harness import methods
            from harness.orchestration import demo as demo_plan

            unknown = [m for m in args.demo_methods if m not in methods.names()]
            if unknown:
                raise UsageError(f"--method: unknown method(s) {', '.join(map(repr, unknown))} "
                                 f"(allowed: {', '.join(methods.names())})")
            try:
                demo_plan.first_round(cfg, args.demo_methods or None)
            except ValueError as err:
                raise UsageError(f"--method: {err}") from None
        # Every check that needs no compute, before any is spent (names the field and what is allowed).
        out = preflight.check_run(cfg, args.out or default_out(cfg.name), args.address,
                                  sweep=args.command != "train")
        label = outdir.claim(out, cfg, append=args.append)
    except (config_mod.ConfigError, preflight.PreflightError, FileNotFoundError, UsageError,
            outdir.OutDirTaken) as err:
        print(f"harness {args.command}: {err}", file=sys.stderr)
        return 2
    from harness.orchestration import driver  # heavy imports (torch, ray) only once the input is valid
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
    md, uri, synced = driver.finish(cfg, out, name, records, timer, notes=_notes(timer), live=live)
    print("\nwhere the time went:\n" + timer.table())
    (out / "timings.md").write_text(timer.table() + "\n")
    print(f"\nreport:        {md}\nparquet:       {driver.results_dir(out)}/<table>/<run_id>.parquet")
    if synced:
        print(f"mlflow store:  {uri}\nmlflow UI:     mlflow ui --backend-store-uri {uri} "
              f"--port 5000   (then open http://127.0.0.1:5000)")
    else:
        print(f"mlflow store:  {uri} NOT REACHED: run `harness sync-mlflow --out {out}` once it is back")
    ended = ("finished", "stopped") + (("diverged",) if kind == "sweep" else ())  # a diverged trial is a search outcome
    return 0 if all(r.status in ended for r in records) else 1


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


def _cache(args) -> int:
    from harness.evaluation import embed_cache

    root = (args.cache or embed_cache.default_root()).expanduser().resolve()
    if args.action == "size":
        sizes = embed_cache.sizes(root)
        for digest, (count, size) in sizes.items():
            print(f"{digest}  {count:5d} entries  {size / 2**20:10.1f} MiB")
        print(f"total {sum(c for c, _ in sizes.values())} entries, "
              f"{sum(s for _, s in sizes.values()) / 2**20:.1f} MiB in {root}")
        return 0
    removed, freed = embed_cache.prune(root, args.older_than_days)
    print(f"pruned {removed} entries ({freed / 2**20:.1f} MiB) from {root}")
    return 0


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


class UsageError(ValueError):
    """Arguments that parse but cannot be used together (reported like a bad config)."""


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


def _shards(args) -> int:
    from harness.data import writers

    try:
        names = writers.read_classnames(args.classnames) if args.classnames else []
        kind = args.kind or ("id" if names or args.source == "imagefolder" else "ood")
        if args.source == "index":
            writers.index_shards(args.out, args.name, kind, names)
            return 0
        for option in ("shard_size", "workers"):
            if getattr(args, option) < 1:
                raise UsageError(f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}")
        if args.resize is not None and args.resize < 1:
            raise UsageError(f"--resize must be >= 1, got {args.resize}")
        holdout = None
        if args.source == "imagefolder":
            items, found = writers.imagefolder_items(args.src)
            names = names or found
            if (args.holdout_per_class is None) != (args.holdout_out is None):
                raise UsageError("--holdout-per-class and --holdout-out go together")
            if args.holdout_per_class is not None:
                if not writers.valid_name(args.holdout_out.name):
                    raise UsageError(f"--holdout-out {args.holdout_out}: its folder name is the dataset name; use "
                                     "letters, digits, '-' and '_' only")
                items, holdout = writers.split_holdout(items, args.holdout_per_class)
        elif args.source == "imagelist":
            items = writers.imagelist_items(args.src, args.root)
        else:
            items = writers.mos_items(args.src)
        writers.write_items(items, args.out, args.name, kind, names, args.shard_size, args.resize, args.workers,
                            args.address)
        if holdout:
            writers.write_items(holdout, args.holdout_out, args.holdout_out.name, kind, names, args.shard_size,
                                args.resize, args.workers, args.address)
    except writers.SourceError as err:
        raise UsageError(str(err)) from None
    return 0


def _negatives(args) -> int:
    """Checks every input before the model is built, then writes the candidates and the mined list."""
    from harness.orchestration import preflight

    from harness import wordnet
    from harness.data import writers
    from harness.negatives import mine_to_file

    if not 0 <= args.percentile <= 100:
        raise UsageError(f"--percentile must be in [0, 100], got {args.percentile}")
    if not 0 < args.ratio <= 1:
        raise UsageError(f"--ratio must be in (0, 1], got {args.ratio}")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    for key in ("eval_prompt", "noun_prompt", "adjective_prompt"):
        if getattr(args, key).count("{}") != 1:
            raise UsageError(f"--{key.replace('_', '-')} must contain exactly one '{{}}' placeholder")
    pretrained = None if args.pretrained in (None, "none", "null") else args.pretrained
    try:
        names = writers.read_classnames(args.classnames)
        preflight.check_model_weights(args.arch, pretrained, field="--pretrained")
        selection = wordnet.select(args.wordnet, exclude=names, mode=args.mode)
    except (writers.SourceError, wordnet.WordNetError) as err:
        raise UsageError(str(err)) from None
    candidates = selection.candidates
    if args.limit is not None:
        candidates = [c for kind in ("noun", "adj") for c in [c for c in candidates if c.kind == kind][:args.limit]]
    if args.mode == "csp":  # CSP's pool: the nouns, and one "<adjective> <superclass>" phrase per adjective
        from harness.negatives import csp_pool

        candidates = csp_pool(candidates, args.csp_seed)
    provenance = {"wordnet_dir": str(args.wordnet.resolve()), "wordnet_version": "3.0", "mode": args.mode,
                  "selection": ("nouns: noun.* except noun.animal, noun.food, noun.group, noun.person, noun.quantity; "
                                "adjectives: adj.all, adj.ppl" if args.mode == "csp" else
                                "nouns: noun.* except noun.animal, noun.food; adjectives: adj.all, adj.pert, adj.ppl")
                               + "; the first lemma of each synset, de-duplicated, ID class names dropped",
                  "counts": selection.counts, "limit": args.limit, "classnames": args.classnames,
                  **({"csp_seed": args.csp_seed} if args.mode == "csp" else {})}
    cand_path = args.out.with_name(args.out.name + ".candidates.tsv")
    wordnet.write_candidates(candidates, cand_path, header=[f"NegLabel candidates from WordNet 3.0 at {args.wordnet}"])
    record = mine_to_file(candidates, names, args.out, args.arch, pretrained, args.percentile, args.ratio,
                          args.eval_prompt, args.noun_prompt, args.adjective_prompt, provenance,
                          args.batch_size, args.device, csp=args.mode == "csp")
    print(f"candidates: {record['candidates']} -> {cand_path}\nmined:      {record['mined']} -> {args.out}\n"
          f"use it: --set eval.{'csp_negatives' if args.mode == 'csp' else 'negatives'}={args.out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
