"""Driver-side preparation: make sure the data and the starting weights exist, as absolute paths.

Runs before any compute is spent on workers, so a missing dataset or checkpoint
fails here, named.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness import models
from harness.train import pretrain
from harness.config import Config
from harness.data import synthetic
from harness.data.shards import check_class_lists, read_manifest
from harness.paths import synthetic_root


@dataclass(frozen=True)
class Inputs:
    data_root: Path
    weights: Path | None


def data_root(cfg: Config) -> Path:
    return Path(cfg.data.root).expanduser().resolve() if cfg.data.root else synthetic_root(cfg.data.synthetic_size)


def prepare_inputs(cfg: Config, log=print) -> Inputs:
    root = data_root(cfg)
    if cfg.data.source == "synthetic":
        spec = synthetic.small_spec() if cfg.data.synthetic_size == "small" else synthetic.WorldSpec()
        synthetic.generate(root, spec, progress=log)
    manifests = {name: read_manifest(root / name)  # raises, naming the path, when a dataset is missing
                 for name in (cfg.data.train, cfg.data.id_val, cfg.data.ood_val, cfg.data.id_test, *cfg.data.ood_test)}
    check_class_lists({name: manifests[name] for name in (cfg.data.train, cfg.data.id_val, cfg.data.id_test)})
    if cfg.model.pretrained == "synthetic":
        if cfg.data.source != "synthetic":
            raise ValueError("model.pretrained=synthetic needs data.source=synthetic (it is pretrained on that corpus)")
        weights: Path | None = pretrain.ensure_pretrained(cfg, root, log)
    else:
        resolved = models.resolve_weights(cfg.model.arch, cfg.model.pretrained)
        weights = Path(resolved) if resolved else None
    return Inputs(root, weights)
