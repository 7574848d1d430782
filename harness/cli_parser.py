"""The command line's grammar: every command's arguments and help (harness.cli runs them), and
UsageError, for arguments that parse but cannot be used.

It imports no registry (importing the methods imports torch), so ``harness --help`` answers at once.
"""

from __future__ import annotations

import argparse
from pathlib import Path


class UsageError(ValueError):
    """Arguments that parse but cannot be used together (reported like a bad config)."""


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
