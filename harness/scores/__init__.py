"""Post-hoc OoD scores as plugins. Every score is "higher = more in-distribution".

One module per score (``*_score.py`` in this package), each registering its public function
beside its definition (:func:`register`) with the inputs it needs (:data:`INPUTS`: pooled
features, class prompts, negatives, patch-level results, a head's logits, ID-train features,
the model, the test stream, the classifier as W and b, ID-train statistics), how the evaluator computes it, and an independent reference
computation that the tests check it against (a port of an OpenOOD v1.5 postprocessor names its
file instead; tests/test_scores_openood.py checks it against that file's transcribed formula). Adding a score is adding a module here: it is
imported below, checked by the tests and offered by the evaluator without editing either.

Inputs: image/text features are L2-normalised (N, D) / (K, D) and are not re-normalised here;
classifier scores (``msp``, ``energy``, ``max_logit``) take (N, C) logits, on a zero-shot model
logit_scale x cosine. Every function returns a 1-D float tensor (N,) on the input's device, in
the input's float dtype promoted to at least float32 (float64 where stated). Images are
processed ``chunk_size`` rows at a time, so 50,000 images x 11,000 prompts never holds the
full (N, K) similarity matrix.
"""

from __future__ import annotations

import importlib
import pkgutil

from harness.scores.registry import (INPUTS, SCORE_SPECS, SCORES, ScoreInputs, ScoreSpec, UnknownScoreError,
                                     get_score, register)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name.endswith("_score")):
    importlib.import_module(f"{__name__}.{_module}")

from harness.scores.adaneg_score import adaneg  # noqa: E402
from harness.scores.ash_score import ash  # noqa: E402
from harness.scores.dice_score import dice  # noqa: E402
from harness.scores.gen_score import gen  # noqa: E402
from harness.scores.mds_score import mahalanobis  # noqa: E402
from harness.scores.nnguide_score import nnguide  # noqa: E402
from harness.scores.react_score import react  # noqa: E402
from harness.scores.rmds_score import rmds  # noqa: E402
from harness.scores.scale_score import scale  # noqa: E402
from harness.scores.vim_score import vim  # noqa: E402
from harness.scores.csp_score import csp  # noqa: E402
from harness.scores.energy_score import energy  # noqa: E402
from harness.scores.gl_mcm_score import gl_mcm, local_mcm  # noqa: E402
from harness.scores.knn_score import knn  # noqa: E402
from harness.scores.max_logit_score import max_logit  # noqa: E402
from harness.scores.mcm_score import mcm  # noqa: E402
from harness.scores.msp_score import msp  # noqa: E402
from harness.scores.neglabel_score import neglabel  # noqa: E402
from harness.scores.odin_score import odin  # noqa: E402

__all__ = ["INPUTS", "SCORES", "SCORE_SPECS", "ScoreInputs", "ScoreSpec", "UnknownScoreError", "get_score",
           "register", "adaneg", "csp", "energy", "gl_mcm", "knn", "local_mcm", "max_logit", "mcm", "msp",
           "neglabel", "odin", "ash", "dice", "gen", "mahalanobis", "nnguide", "react", "rmds", "scale", "vim"]
