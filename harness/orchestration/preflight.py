"""Checks that run before anything is computed.

Every user-facing command passes its typed config and arguments through here first,
so bad input fails in a second with the field (or argument) and what is allowed,
instead of after the synthetic world is generated, the model pretrained or Ray
started. Each check raises :class:`PreflightError`; nothing here writes results.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Sequence
from urllib.parse import urlsplit

from harness.config import Config

# A config name becomes directory names, Ray trial names and MLflow run names: keep it to
# characters that mean nothing to a shell, a path or MLflow's filter syntax.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")


class PreflightError(ValueError):
    """Input that would fail later; the message names the field and what is allowed."""


def check_run(cfg: Config, out: Path, address: str | None, sweep: bool) -> Path:
    """Everything ``harness train`` / ``sweep`` / ``demo`` need, checked; returns ``out`` resolved."""
    check_name(cfg.name)
    if sweep and not cfg.search.space:
        raise PreflightError("search.space: empty, nothing to sweep (give one or more dotted keys, "
                             "e.g. method.name: {grid: [flyp, lp]}; or use `harness train` for one run)")
    check_tracking_uri(cfg.tracking.mlflow_uri)
    if address:
        check_address(address)
    check_scores(cfg.eval.scores, "eval.scores")
    check_selection_score(cfg.eval.selection_score)
    check_data(cfg)
    check_model(cfg)
    return check_out_dir(out)  # last: it creates the directory


def check_name(name: str, field: str = "name") -> None:
    if not SAFE_NAME.fullmatch(name):
        raise PreflightError(f"{field}: {name!r} is not allowed: use 1-100 letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit (it names directories and MLflow runs)")


def check_out_dir(out: Path, flag: str = "--out") -> Path:
    """``out`` as an absolute, existing, writable directory (created when missing)."""
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise PreflightError(f"{flag} {out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PreflightError(f"{flag} {out}: cannot create it ({err.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise PreflightError(f"{flag} {out}: not writable")
    return out


def check_output_file(path: Path, flag: str = "--output") -> Path:
    path = Path(path).expanduser().resolve()
    if path.is_dir():
        raise PreflightError(f"{flag} {path}: is a directory, expected a file name")
    check_out_dir(path.parent, flag=f"{flag} (its directory)")
    return path


def check_tracking_uri(uri: str | None, field: str = "tracking.mlflow_uri") -> None:
    if uri is None:
        return
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+")[0]  # postgresql+psycopg2 is postgresql
    if scheme not in TRACKING_SCHEMES:
        shown = uri.replace(parts.password, "***") if parts.password else uri
        raise PreflightError(f"{field}: {shown!r} has scheme {scheme or 'none'!r} (allowed: "
                             f"{', '.join(TRACKING_SCHEMES)}; MLflow 3's plain file store is off)")
    if parts.password is not None and scheme not in ("http", "https"):
        # http(s) credentials move to MLflow's variables (tracking.strip_credentials); a database's cannot.
        raise PreflightError(f"{field}: a password in a {scheme} URI would be written into results and logs; "
                             "use the database's credential file (e.g. ~/.pgpass) or an mlflow server over http(s) "
                             "with MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD")


def check_scores(names, field: str) -> None:
    from harness.scores import SCORES  # torch: only once the cheap checks passed

    unknown = [n for n in names if n not in SCORES]
    if unknown:
        raise PreflightError(f"{field}: unknown score(s) {', '.join(map(repr, unknown))} "
                             f"(allowed: {', '.join(sorted(SCORES))})")


# What validation can give a score every epoch, cheaply: no model passes, no train bank, no stream.
SELECTABLE_INPUTS = {"features", "class_text", "negatives", "csp_negatives", "logits"}


def check_selection_score(name: str) -> None:
    from harness.scores import SCORE_SPECS

    spec = SCORE_SPECS.get(name)
    if spec is not None and not spec.needs <= SELECTABLE_INPUTS:
        selectable = sorted(n for n, s in SCORE_SPECS.items() if s.needs <= SELECTABLE_INPUTS)
        raise PreflightError(f"eval.selection_score: {name!r} needs {', '.join(sorted(spec.needs - SELECTABLE_INPUTS))}, "
                             f"which validation does not compute every epoch (allowed: {', '.join(selectable)})")


def check_data(cfg: Config) -> None:
    """The datasets a run reads exist (or will be generated), named by their config field."""
    from harness.data import synthetic
    from harness.data.shards import read_manifest

    data = cfg.data
    fields = {"data.train": data.train, "data.id_val": data.id_val, "data.ood_val": data.ood_val,
              "data.id_test": data.id_test, **{f"data.ood_test[{i}]": n for i, n in enumerate(data.ood_test)}}
    if data.source == "synthetic":
        for field, name in fields.items():
            if name not in synthetic.DATASETS:
                raise PreflightError(f"{field}: {name!r} is not a dataset of the synthetic world "
                                     f"(allowed: {', '.join(synthetic.DATASETS)})")
        return
    if not data.root:
        raise PreflightError("data.root: required with data.source=shards (a directory with one "
                             "sub-directory of shards + manifest.json per dataset)")
    root = Path(data.root).expanduser().resolve()
    if not root.is_dir():
        raise PreflightError(f"data.root: {root} does not exist or is not a directory")
    present = sorted(p.name for p in root.iterdir() if (p / "manifest.json").is_file())
    for field, name in fields.items():
        try:
            read_manifest(root / name)
        except (FileNotFoundError, ValueError) as err:
            raise PreflightError(f"{field}: {err} (datasets in {root}: {', '.join(present) or 'none'})") from None
    if "neglabel" in cfg.eval.scores:
        negatives = Path(cfg.eval.negatives).expanduser()
        negatives = negatives if negatives.is_absolute() else root / negatives
        if not negatives.is_file():
            raise PreflightError(f"eval.negatives: {negatives} not found (the neglabel score needs its "
                                 "candidate labels, one 'noun<TAB>word' or 'adj<TAB>word' per line)")
    if "csp" in cfg.eval.scores:
        check_csp_source(cfg, root)


def check_csp_source(cfg: Config, root: Path) -> None:
    """CSP without eval.csp_negatives needs eval.negatives to be raw candidates (harness.negatives)."""
    from harness.negatives import check_csp_source as check

    negatives = Path(cfg.eval.negatives).expanduser()
    negatives = negatives if negatives.is_absolute() else root / negatives
    if cfg.eval.csp_negatives is None and negatives.is_file():
        try:
            check(negatives, None)
        except ValueError as err:
            raise PreflightError(str(err)) from None


def check_model(cfg: Config) -> None:
    import open_clip

    from harness import models  # registers harness/model_configs with open_clip

    if cfg.model.arch not in open_clip.list_models():
        raise PreflightError(f"model.arch: unknown model {cfg.model.arch!r} (allowed: open_clip's "
                             f"{', '.join(open_clip.list_models())})")
    if cfg.model.pretrained == "synthetic":
        if cfg.data.source != "synthetic":
            raise PreflightError("model.pretrained: 'synthetic' needs data.source=synthetic (it is pretrained "
                                 "on that corpus); give a checkpoint path, an open_clip tag or null")
        return
    check_model_weights(cfg.model.arch, cfg.model.pretrained)


def check_model_weights(arch: str, pretrained: str | None, field: str = "model.pretrained") -> None:
    """The architecture exists and its weights are on this machine (the message says where they go)."""
    import open_clip

    from harness import models

    if arch not in open_clip.list_models():
        raise PreflightError(f"{field.replace('pretrained', 'arch')}: unknown model {arch!r} (allowed: open_clip's "
                             f"{', '.join(open_clip.list_models())})")
    try:
        models.resolve_weights(arch, pretrained)
    except (FileNotFoundError, ValueError) as err:  # both messages name model.pretrained
        message = str(err)
        if field != "model.pretrained":  # a CLI flag: name it, and the flag to give a path with
            message = f"{field}: " + message.replace("--set model.pretrained=", f"{field} ")
        raise PreflightError(message) from None


def check_address(address: str, timeout_s: float = 5.0) -> None:
    """An existing cluster answers at ``address``: ray.init would otherwise retry for minutes.
    ``local`` (a private cluster, started on demand) needs none."""
    if address == "local":
        return
    if address == "auto":
        address = registered_cluster()
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise PreflightError(f"--address {address!r}: expected HOST:PORT (or ray://HOST:PORT, auto, or local)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise PreflightError(f"--address {address}: no Ray cluster answers there "
                             f"({err.strerror or err}); start one with `ray start --head`") from None


def registered_cluster() -> str:
    """The address ``auto`` stands for: RAY_ADDRESS, else the cluster registered on this machine
    (``ray start`` writes it to ``<Ray temp root>/ray/ray_current_cluster``). Unlike Ray's own
    "auto", never any other Ray process found running here: that may be someone else's."""
    from ray._private.services import find_bootstrap_address, find_gcs_addresses

    found = os.environ.get("RAY_ADDRESS") or find_bootstrap_address(None)
    if not found:
        others = sorted(set(find_gcs_addresses()))
        seen = f"; Ray clusters found running here: {', '.join(others)} (give one as --address HOST:PORT)" \
            if others else ""
        raise PreflightError("--address auto: no running Ray cluster found registered on this machine (nor in "
                             f"RAY_ADDRESS){seen}; start one with `ray start --head`, or leave --address out to "
                             "start a private local one")
    return found


def check_report(dirs: list[Path], scores: list[str], suites: list[str], output: Path | None,
                 method_names: Sequence[str] = ()) -> None:
    from harness import methods

    unknown = [m for m in method_names if m not in methods.names()]
    if unknown:  # not argparse choices: the registry imports torch, and `harness --help` should not
        raise PreflightError(f"--method: unknown method(s) {', '.join(map(repr, unknown))} "
                             f"(allowed: {', '.join(methods.names())})")
    for path in dirs:
        if not Path(path).is_dir():
            raise PreflightError(f"results directory {path}: does not exist")
    from harness import paper

    check_scores(scores, "--score")
    allowed = ("synthetic", "custom", *paper.PAPER_SUITES)  # what paper.suite_of answers
    unknown = [s for s in suites if s not in allowed]
    if unknown:
        raise PreflightError(f"--suite: unknown suite(s) {', '.join(map(repr, unknown))} "
                             f"(allowed: {', '.join(allowed)})")
    if output is not None:
        check_output_file(output)
