"""The CMA paper's numbers (Kim & Hwang, CVPR 2025; ViT-B/16 on ImageNet-1k) as data, and our numbers beside them.

Transcribed from ../shared/reference/method.md: FPR95 (ID-positive) and AUROC in
percent, per OoD set and averaged. The comparison is only meaningful on the same
benchmark, so it is made for the suites ``mos`` and ``openood-v1.5`` only, and only
for OoD sets whose names match the paper's (see :func:`canonical`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import pandas as pd

MOS = ("iNaturalist", "SUN", "Places", "Textures")
OPENOOD_NEAR = ("SSB-hard", "NINCO")
OPENOOD_FAR = ("iNaturalist", "Textures", "OpenImage-O")
PAPER_SUITES = ("mos", "openood-v1.5")
AVERAGES = {"mos": {"avg": MOS}, "openood-v1.5": {"near avg": OPENOOD_NEAR, "far avg": OPENOOD_FAR}}

# (suite, method, score) -> {OoD set or average: (FPR95 %, AUROC %)}
RESULTS: dict[tuple[str, str, str], dict[str, tuple[float, float]]] = {
    ("mos", "zero-shot", "mcm"): {"iNaturalist": (32.28, 94.40), "SUN": (39.33, 92.28), "Places": (44.94, 89.83),
                                  "Textures": (57.98, 85.99), "avg": (43.63, 90.63)},
    ("mos", "zero-shot", "neglabel"): {"iNaturalist": (2.30, 99.37), "SUN": (23.23, 95.14), "Places": (39.85, 90.98),
                                       "Textures": (46.49, 89.64), "avg": (27.97, 93.78)},
    ("mos", "flyp", "mcm"): {"iNaturalist": (24.86, 94.35), "SUN": (39.81, 90.58), "Places": (47.92, 87.16),
                             "Textures": (41.19, 89.34), "avg": (38.44, 90.36)},
    ("mos", "flyp", "neglabel"): {"iNaturalist": (3.16, 99.31), "SUN": (23.48, 94.82), "Places": (37.23, 90.86),
                                  "Textures": (41.70, 89.27), "avg": (26.39, 93.57)},
    ("mos", "cma", "mcm"): {"iNaturalist": (22.95, 95.65), "SUN": (40.01, 91.78), "Places": (48.83, 88.41),
                            "Textures": (44.93, 89.87), "avg": (39.18, 91.43)},
    ("mos", "cma", "neglabel"): {"iNaturalist": (1.65, 99.62), "SUN": (16.84, 96.36), "Places": (27.65, 93.11),
                                 "Textures": (33.58, 91.64), "avg": (19.93, 95.13)},
    ("openood-v1.5", "cma", "neglabel"): {"SSB-hard": (62.80, 81.71), "NINCO": (49.70, 87.21),
                                          "near avg": (56.25, 84.46), "iNaturalist": (1.65, 99.62),
                                          "Textures": (29.55, 93.21), "OpenImage-O": (14.65, 96.57),
                                          "far avg": (15.29, 96.47)},
    ("openood-v1.5", "flyp", "neglabel"): {"near avg": (63.66, 81.96), "far avg": (21.26, 94.86)},
}
# The CMA authors' re-runs of the other methods (../shared/reference/methods.md, section 1): averages only.
_AVERAGES_ONLY = {  # (method, score): (MOS avg, OpenOOD v1.5 near avg, far avg), each (FPR95 %, AUROC %)
    ("lp", "msp"): ((59.37, 83.66), (79.86, 73.89), (51.43, 87.38)),
    ("lp", "odin"): ((46.14, 89.72), (80.12, 76.85), (40.34, 91.82)),
    ("lp", "energy"): ((57.72, 85.83), (83.67, 73.47), (54.38, 87.72)),
    ("fft", "msp"): ((66.20, 81.39), (75.21, 77.16), (58.95, 84.88)),
    ("fft", "odin"): ((39.53, 90.40), (60.93, 85.05), (31.37, 92.91)),
    ("fft", "energy"): ((49.74, 87.18), (54.84, 86.54), (35.61, 91.99)),
    ("lp-ft", "msp"): ((61.35, 82.52), (74.59, 76.67), (52.54, 86.36)),
    ("lp-ft", "odin"): ((44.93, 88.06), (68.82, 80.10), (37.01, 91.22)),
    ("lp-ft", "energy"): ((46.31, 87.72), (70.44, 79.27), (38.47, 90.94)),
    ("flyp", "mcm"): (None, (67.89, 77.53), (30.62, 92.66)),
    ("cma", "mcm"): (None, (71.96, 78.56), (31.25, 93.72)),
    ("zero-shot", "mcm"): (None, (83.78, 69.74), (44.07, 90.92)),
    ("zero-shot", "neglabel"): (None, (75.85, 74.21), (26.14, 94.34)),
    ("coop", "mcm"): ((36.59, 91.84), (81.67, 71.16), (34.11, 92.83)),
    ("coop", "neglabel"): ((26.28, 94.10), (62.96, 81.46), (23.63, 94.81)),
    ("locoop", "mcm"): ((34.49, 92.59), (82.21, 69.84), (32.77, 93.28)),
    ("locoop", "neglabel"): ((37.83, 91.83), (71.27, 77.69), (25.62, 94.47)),
}
for (_method, _score), (_mos, _near, _far) in _AVERAGES_ONLY.items():
    if _mos is not None:
        RESULTS.setdefault(("mos", _method, _score), {"avg": _mos})
    RESULTS.setdefault(("openood-v1.5", _method, _score), {}).update({"near avg": _near, "far avg": _far})
ID_ACCURACY = {"zero-shot": 66.60, "flyp": 82.58, "cma": 82.64, "lp": 79.22, "fft": 81.44, "lp-ft": 81.48,
               "coop": 71.95, "locoop": 71.72}  # ImageNet-1k top-1, percent

_ALIASES = {"inaturalist": "iNaturalist", "inat": "iNaturalist", "sun": "SUN", "places": "Places",
            "places365": "Places", "textures": "Textures", "texture": "Textures", "dtd": "Textures",
            "texturesopenood": "Textures",  # OpenOOD v1.5's 5,160 (harness.suites), MOS's is 5,640
            "ssbhard": "SSB-hard", "ninco": "NINCO", "openimageo": "OpenImage-O"}


def canonical(dataset: str) -> str | None:
    """The paper's name for one of our OoD set names (case, '-', '_' and spaces ignored), or None."""
    return _ALIASES.get(re.sub(r"[^a-z0-9]", "", dataset.lower()))


def suite_of(source: str, ood_test: Iterable[str]) -> str:
    """The benchmark a run belongs to: "synthetic" for the embedded world; "mos" or "openood-v1.5"
    when the OoD test sets are exactly that benchmark's (by :func:`canonical` name); else "custom"."""
    if source == "synthetic":
        return "synthetic"
    names = {canonical(d) for d in ood_test}
    if names == set(MOS):
        return "mos"
    if names == set(OPENOOD_NEAR + OPENOOD_FAR):
        return "openood-v1.5"
    return "custom"


def comparison(suite: str, ours: pd.DataFrame) -> pd.DataFrame:
    """Our numbers beside the paper's, in percent, with ours − paper.

    ``ours``: one row per (method, score, dataset) with ``fpr95`` and ``auroc`` as fractions
    (ood_metrics rows of the runs being compared). An average is formed only when every
    OoD set it averages is present. Returns columns method, score, dataset (the paper's
    name), ours_fpr95, paper_fpr95, d_fpr95, ours_auroc, paper_auroc, d_auroc; empty when
    the suite is not one of the paper's or nothing matches.
    """
    if suite not in PAPER_SUITES or ours.empty:
        return pd.DataFrame()
    named = ours.assign(dataset=ours["dataset"].map(canonical)).dropna(subset=["dataset"])
    rows = []
    for (method, score), group in named.groupby(["method", "score"], sort=False):
        paper = RESULTS.get((suite, method, score))
        if paper is None:
            continue
        mine = {d: (100 * r["fpr95"], 100 * r["auroc"]) for d, r in group.set_index("dataset").iterrows()}
        for label, members in AVERAGES[suite].items():
            if all(m in mine for m in members):
                mine[label] = tuple(sum(mine[m][i] for m in members) / len(members) for i in (0, 1))
        for dataset, (p_fpr, p_auc) in paper.items():
            if dataset in mine:
                fpr, auc = mine[dataset]
                rows.append({"method": method, "score": score, "dataset": dataset,
                             "ours_fpr95": fpr, "paper_fpr95": p_fpr, "d_fpr95": fpr - p_fpr,
                             "ours_auroc": auc, "paper_auroc": p_auc, "d_auroc": auc - p_auc})
    return pd.DataFrame(rows)
