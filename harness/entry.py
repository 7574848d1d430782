"""Entry point on a running Ray cluster: ``ray submit cluster.yaml harness/entry.py -- <harness args>``
or ``ray job submit --working-dir . -- python -m harness.entry <harness args>``.

The same commands as ``harness`` (harness.cli), with two differences that fit a cluster:
train/sweep/demo join the cluster that is already running (``--address auto``, unless
``--address`` is given) instead of starting a local one, and ``check-suite SUITE ROOT``
checks a data root against a benchmark suite's expected sample counts before hours of
GPU time are spent. Run as a file (``ray submit`` copies just this file to the head),
it imports the harness installed there by cluster.yaml's setup_commands.
"""

from __future__ import annotations

import argparse
import sys

JOINS_CLUSTER = ("train", "sweep", "demo")


def _check_suite(argv: list[str]) -> int:
    from harness import suites

    parser = argparse.ArgumentParser(prog="harness.entry check-suite",
                                     description="compare a data root with a suite's expected sample counts")
    parser.add_argument("suite", choices=sorted(suites.SUITES))
    parser.add_argument("root", help="data.root: one directory (shards + manifest.json) per dataset")
    parser.add_argument("--allow-count-mismatch", action="store_true",
                        help="report differing counts as warnings (a missing dataset stays an error)")
    args = parser.parse_args(argv)
    try:
        warnings = suites.check_counts(args.suite, args.root, args.allow_count_mismatch)
    except suites.SuiteError as err:
        print(f"check-suite: {err}", file=sys.stderr)
        return 2
    for line in warnings:
        print(f"check-suite: warning: {line}", file=sys.stderr)
    suite = suites.get(args.suite)
    print(f"{args.root} holds suite {suite.name} (version {suite.version}): "
          + ", ".join(f"{name} {count}" for name, count in (suite.id_test, *suite.ood_test)))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "check-suite":
        return _check_suite(argv[1:])
    if argv and argv[0] in JOINS_CLUSTER and not any(a == "--address" or a.startswith("--address=") for a in argv):
        argv += ["--address", "auto"]
    from harness import cli

    try:
        return cli.main(argv)
    except ConnectionError as err:  # the cluster went away between preflight's lookup and ray.init
        print(f"harness.entry {argv[0]}: no Ray cluster to join ({err}); start one (ray up cluster.yaml) "
              "or pass --address HOST:PORT", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
