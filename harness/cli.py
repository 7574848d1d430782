"""Command line: parse, validate the config at the edge, call the driver. Nothing else lives here."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness import config as config_mod

REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "sweeps" / "demo.yaml"


def _common(parser: argparse.ArgumentParser, needs_config: bool = True) -> None:
    if needs_config:
        parser.add_argument("config", type=Path, help="experiment YAML (e.g. sweeps/demo.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set loss.lam=0.01 (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: runs/<name>)")
    parser.add_argument("--address", default=None,
                        help="address of an existing Ray cluster (default: start a local one)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _common(sub.add_parser("train", help="one run from the config's base values (search space ignored)"))
    _common(sub.add_parser("sweep", help="Ray Tune search over the config's search space"))
    _common(sub.add_parser("demo", help="the whole benchmark on the embedded synthetic data"), needs_config=False)
    rep = sub.add_parser("report", help="markdown report + plots from a results directory")
    rep.add_argument("results_dir", type=Path, help="an --out directory, or its results/ subdirectory")
    rep.add_argument("--output", type=Path, default=None, help="markdown file (default: <out>/report.md)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "report":
            return _report(args)
        cfg = config_mod.load(DEMO_CONFIG if args.command == "demo" else args.config, args.overrides)
    except (config_mod.ConfigError, FileNotFoundError) as err:
        print(f"harness {args.command}: {err}", file=sys.stderr)
        return 2
    out = (args.out or Path("runs") / cfg.name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    from harness import driver  # heavy imports (torch, ray) only once the input is valid

    timer = driver.Timer()
    if args.command == "train":
        records = driver.train(cfg, out, args.address, timer)
    else:
        records = driver.sweep(cfg, out, args.address, timer)
    kind = "train" if args.command == "train" else "sweep"
    md, uri = driver.finish(cfg, out, f"{cfg.name}-{kind}", records, timer, notes=_notes(timer))
    print("\nwhere the time went:\n" + timer.table())
    (out / "timings.md").write_text(timer.table() + "\n")
    print(f"\nreport:        {md}\nparquet:       {driver.results_dir(out)}/*.parquet\n"
          f"mlflow store:  {uri}\nmlflow UI:     mlflow ui --backend-store-uri {uri} "
          f"--port 5000   (then open http://127.0.0.1:5000)")
    return 0 if all(r.status == "finished" for r in records) else 1


def _notes(timer) -> str:
    return "## Where the time went (before this report)\n" + timer.table()


def _report(args) -> int:
    from harness import report

    results_dir = args.results_dir / "results" if (args.results_dir / "results").is_dir() else args.results_dir
    output = args.output or results_dir.parent / "report.md"
    timings = results_dir.parent / "timings.md"  # written by train / sweep / demo
    notes = "## Where the time went\n" + timings.read_text() if timings.is_file() else ""
    print(report.write(results_dir, output, notes=notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
