import json
from pathlib import Path

import pandas as pd

from harness import config as config_mod
from harness.report import conventions as report_conventions

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"


def _runs(*cfgs):
    return pd.DataFrame({"config_json": [json.dumps(c.model_dump(mode="json")) for c in cfgs]})


def test_conventions_state_each_departure_with_the_runs_settings():
    demo = config_mod.load(SWEEPS / "demo.yaml", [])
    imagenet = config_mod.load(SWEEPS / "imagenet-cma.yaml", [])
    text = "\n".join(report_conventions.lines(_runs(demo, demo, imagenet), ["knn", "gl_mcm", "odin", "adaneg", "csp"]))
    assert text.startswith("## Conventions") and "fpr_and_fdr_at_recall" in text
    assert "k = 50, bank = 1 of data.train; k = 1000, bank = 1 of data.train" in text  # distinct values, once each
    assert "GL-MCM's ImageNet script uses λ = 0.5" in text and "λ = 1; λ = 0.5" in text
    assert "not divided by the preprocessing's per-channel std" in text
    assert "OoD then ID, one seeded permutation of both (torch.randperm, CPU generator seed 0), batches of 256" in text
    assert "csp_seed = 0" in text and "csp-authors-3a7bdab" in text
    only = "\n".join(report_conventions.lines(_runs(demo), ["mcm"]))
    assert "FPR95" in only and "knn" not in only and "adaneg" not in only
