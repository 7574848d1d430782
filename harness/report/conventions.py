"""The report's conventions list: where a score or metric, as computed here, departs from (or pins
down) a reference implementation, with the settings the reported runs used (from their recorded
configs). One line per convention, only for the scores the report shows."""

from __future__ import annotations

import json

import pandas as pd

from harness.config import EvalConfig


def _eval_configs(runs: pd.DataFrame) -> list[EvalConfig]:
    """The distinct eval sections of the runs (from config_json), in first-seen order."""
    seen: dict[str, EvalConfig] = {}
    for text in runs.get("config_json", pd.Series(dtype=object)).dropna():
        section = json.loads(text).get("eval", {})
        key = json.dumps(section, sort_keys=True)
        if key not in seen:
            try:
                seen[key] = EvalConfig.model_validate(section)
            except ValueError:  # a config recorded by an older harness: its fields may not validate now
                continue
    return list(seen.values())


def _values(configs: list[EvalConfig], describe) -> str:
    return "; ".join(dict.fromkeys(describe(c) for c in configs)) or "not recorded"


def lines(runs: pd.DataFrame, scores: list[str]) -> list[str]:
    from harness.negatives import CSP_POOL_RULE
    from harness.scores.adaneg_score import protocol

    configs = _eval_configs(runs)
    shown = set(scores)
    out = ["- FPR95 (ID positive): the smallest share of OoD accepted among thresholds accepting >= 95% of ID, "
           "ties accepted together (harness.metrics). GL-MCM's and LoCoOp's `fpr_and_fdr_at_recall` reads the "
           "FPR at the distinct-score threshold whose ID recall is nearest 95% (which may be below it); the two "
           "agree on large sets and can differ by a few samples' share on small ones."]
    if "knn" in shown:
        out.append("- knn: minus the Euclidean distance to the k-th nearest ID-train feature (the reference ranks by "
                   "the squared distance: the same order, the same metrics); the reference's ImageNet scripts use "
                   "K = 1000 over the full ImageNet-train bank. Here: "
                   + _values(configs, lambda c: f"k = {c.knn_k}, bank = {c.knn_bank_fraction:g} of data.train"))
    if "gl_mcm" in shown:
        out.append("- gl_mcm: MCM + λ × the local term; GL-MCM's ImageNet script uses λ = 0.5 (the harness default "
                   "1.0; sweeps/imagenet-*.yaml set 0.5). Here: " + _values(configs, lambda c: f"λ = {c.gl_mcm_lambda:g}"))
    if "odin" in shown:
        out.append("- odin: the step ε × sign(gradient) is taken in the model's normalised input space and not "
                   "divided by the preprocessing's per-channel std (OpenOOD divides it, a step of ε / std_c). Here: "
                   + _values(configs, lambda c: f"T = {c.odin_temperature:g}, ε = {c.odin_epsilon:g}"))
    if "adaneg" in shown:
        out.append("- adaneg: the authors' computation (YBZh/OpenOOD-VLM TTAPromptPostprocessor_noadagap) at "
                   "NegLabel's temperature; their evaluator's stream is an unseeded DataLoader shuffle, ours seeded. "
                   "Here: " + _values(configs, protocol))
    if "csp" in shown:
        out.append(f"- csp: pool rule {CSP_POOL_RULE} (each adjective replaced by one seeded '<adjective> "
                   "<superclass>' phrase, template-averaged prompts, cosine > 0.95 to an ID class ranked last); "
                   "the adjectives are read in WordNet file order, not the authors' os.listdir order, and the "
                   "score uses the run's own class features. Here: "
                   + _values(configs, lambda c: f"csp_seed = {c.csp_seed}, ratio = {c.neg_ratio:g}, "
                                                f"{c.neg_groups} groups"))
    return ["## Conventions", "Where a number here is computed differently from a reference implementation, "
            "and the settings the runs above used.", ""] + out + [""]
