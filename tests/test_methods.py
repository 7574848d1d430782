"""The method registry: its contract, every registered method through a real Ray Train run, and
each method's own identities (LP at epoch 0 is zero-shot, WiSE-FT's endpoints, CoOp trains only
its context, LP-FT resumes in its second stage)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness import config, methods, models
from harness.classifier import Classifier
from harness.data import synthetic
from harness.config import MethodParams
from harness.methods.layers import ScaledHead
from harness.methods.model import MethodModel
from harness.methods.prompts import fitting_ctx, locoop_regulariser

ARCH = "tiny-vit-32"


# ---- the registry's contract (fast) ----

def test_every_method_declares_its_parts():
    assert methods.names()[:3] == ["zero-shot", "flyp", "cma"]
    for name, cls in methods.REGISTRY.items():
        assert cls.name == name and cls.label and cls.colour and cls.description
        assert cls.Params.model_fields["name"].default == name
        assert config.load(None, {"method": cls.example("/nowhere")}).method() == name


def test_a_duplicate_name_is_refused_and_an_unknown_one_lists_the_registered():
    class Again(methods.Method):
        name = "flyp"
        Params = methods.get("flyp").Params

    with pytest.raises(ValueError, match="'flyp' is already registered"):
        methods.register(Again)
    with pytest.raises(methods.UnknownMethodError) as err:
        methods.get("clip")
    assert all(n in str(err.value) for n in methods.names())


def test_params_must_name_their_method():
    class Wrong(methods.Method):
        name = "wrong"
        Params = MethodParams

    with pytest.raises(ValueError, match="Literal"):
        methods.register(Wrong)
    assert "wrong" not in methods.REGISTRY


def test_the_listing_shows_every_parameter_with_its_default():
    text = methods.describe()
    for name, cls in methods.REGISTRY.items():
        assert f"\n{name}  (" in f"\n{text}"
        for field, info in cls.Params.model_fields.items():
            if field != "name":
                assert f"method.{field}:" in text
    assert "method.lam: float, default 0.001" in text and "method.source: str, required" in text


def test_a_search_may_swap_method_name_from_any_base_method():
    # A sweep's trials are its base config plus the searched values: swapping the name must not keep
    # the base method's parameters (flyp's templates would be refused by zero-shot).
    from harness.orchestration import ray_layer

    for base_name, base_cls in methods.REGISTRY.items():
        base = config.load(None, {"method": base_cls.example("/nowhere")})
        for name, cls in methods.REGISTRY.items():
            params = {"method.name": name, **{f"method.{k}": v for k, v in cls.example("/nowhere").items()
                                              if k != "name"}}
            trial = config.from_dict(config.to_tree(base), params)
            assert trial.method() == name and ray_layer.run_id(trial).split("-")[1:2] == [name.split("-")[0]], \
                (base_name, name)


def test_the_zero_shot_baseline_of_any_sweep_records_a_config_that_loads_again():
    # A WiSE-FT sweep over alpha: the baseline must not keep a space naming wise-ft's parameters.
    from harness.orchestration import driver
    from harness.orchestration import ray_layer

    for name, cls in methods.REGISTRY.items():
        section = cls.example("/nowhere")
        searched = [k for k in cls.Params.model_fields if k != "name" and k in section and k != "source"]
        space = {f"method.{k}": {"grid": [section[k]]} for k in searched[:1]}
        cfg = config.load(None, {"method": section, "search.space": space})
        base = driver.baseline_config(cfg)
        assert base.method() == "zero-shot" and not base.search.space
        assert config.Config.model_validate(base.model_dump(mode="json")) == base, name
        assert ray_layer.run_id(base) == ray_layer.run_id(config.load(None, {"method": {"name": "zero-shot"}}))


# ---- the model paths the methods and scores share (fast) ----

@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return models.build(ARCH, None)


def test_text_encoder_on_given_embeddings_is_encode_text(tiny):
    model = tiny.model.eval()
    tokens = tiny.tokenizer(["a photo of a red circle", "a blue square"])
    with torch.no_grad():
        ours = models.encode_text_embeddings(model, model.token_embedding(tokens), tokens)
        theirs = model.encode_text(tokens, normalize=True)
    torch.testing.assert_close(ours, theirs)


def test_coop_context_is_capped_to_fit_the_context_length(tiny):
    assert fitting_ctx(tiny.tokenizer, ["red circle"], 4) == 4
    room = 16 - int((tiny.tokenizer(["red circle."]) != 0).sum())
    assert fitting_ctx(tiny.tokenizer, ["red circle"], 16) == room


def test_classifier_logits_are_the_head_or_the_scaled_cosines():
    features = torch.nn.functional.normalize(torch.randn(5, 4), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    plain = Classifier(text, 50.0)
    torch.testing.assert_close(plain.logits(features), 50.0 * features @ text.T)
    weight, bias = torch.randn(3, 4), torch.randn(3)
    headed = Classifier(text, 50.0, weight, bias)
    assert headed.has_head and not plain.has_head
    torch.testing.assert_close(headed.logits(features), features @ weight.T + bias)


def test_locoop_regulariser_by_hand():
    # Two patches, three classes, label 0, top-1: patch 0 predicts class 0 (kept out), patch 1 class 2 (OoD).
    logits = torch.tensor([[[3.0, 1.0, 0.0], [0.0, 1.0, 2.0]]])
    p = torch.softmax(logits[0, 1], dim=0)
    expected = (p * p.log()).sum()  # minus the entropy of the OoD patch
    torch.testing.assert_close(locoop_regulariser(logits, torch.tensor([0]), top_k=1), expected)
    assert locoop_regulariser(logits, torch.tensor([0]), top_k=3).item() == 0.0  # capped at 3 classes: none OoD


# ---- every registered method through Ray Train (slow) ----

def _base(world: Path, start: Path, tmp: Path) -> dict:
    return {
        "name": "methods",
        "model": {"arch": ARCH, "pretrained": str(start)},
        "data": {"source": "synthetic", "synthetic_size": "small", "batch_size": 32, "train": "id_val",
                 "ood_test": ["near_ood"]},
        "schedule": {"epochs": 2, "warmup_steps": 1, "checkpoint_every": 1},
        "optim": {"lr": 1e-3},
        "eval": {"scores": ["mcm", "neglabel", "msp", "energy"], "selection_score": "mcm", "neg_ratio": 0.3},
    }


@pytest.fixture(scope="module")
def ray_methods(world, tmp_path_factory):
    """A private local Ray cluster, random starting weights saved as a file, and a finished FLYP run
    (the source a WiSE-FT run interpolates towards)."""
    from harness.train import prepare
    from harness.orchestration import cluster, ray_layer

    tmp = tmp_path_factory.mktemp("methods")
    torch.manual_seed(0)
    start = models.save_weights(models.build(ARCH, None).model, tmp / "start.pt")
    for attempt in range(3):  # a loaded machine can miss Ray's 30 s raylet start-up wait
        try:
            cluster.init(None, num_cpus=2)
            break
        except Exception:
            cluster.shutdown()
            if attempt == 2:
                raise
    out = tmp / "out"
    base = _base(world, start, tmp)
    cfg = config.from_dict(base, {"method": {"name": "flyp"}})
    inputs = prepare.prepare_inputs(cfg, log=lambda *a: None)
    ray_layer.fit(ray_layer.Job(cfg, inputs, out))
    yield {"start": start, "out": out, "base": base, "inputs": inputs,
           "flyp": out / "runs" / ray_layer.run_id(cfg) / "checkpoint"}
    cluster.shutdown()


def _fit(env, section: dict, **overrides):
    from harness.orchestration import ray_layer

    cfg = config.from_dict(env["base"], {"method": section, **overrides})
    summary = ray_layer.fit(ray_layer.Job(cfg, env["inputs"], env["out"]))
    return cfg, summary, env["out"] / "runs" / ray_layer.run_id(cfg)


def _changed(start: dict, run_dir: Path) -> set[str]:
    final = torch.load(run_dir / "checkpoint" / "model.pt", weights_only=True)
    assert set(final) == set(start)
    return {k for k in start if not torch.equal(start[k], final[k])}


@pytest.mark.slow
@pytest.mark.parametrize("name", methods.names())
def test_every_method_runs_through_ray_and_freezes_what_it_declares(ray_methods, name):
    cls = methods.get(name)
    cfg, summary, run_dir = _fit(ray_methods, cls.example(str(ray_methods["flyp"])))
    assert summary["status"] == "finished" and summary["method"] == name
    assert run_dir.name.startswith(f"methods-{name}-")
    assert json.loads((run_dir / "checkpoint" / "method.json").read_text())["name"] == name
    assert {r["score"] for r in summary["ood"]} == {"mcm", "neglabel", "msp", "energy"}
    changed = _changed(torch.load(ray_methods["start"], weights_only=True), run_dir)
    method = methods.build(cfg.method)
    trainable = {p for stage in method.stages(cfg) for p in stage.trainable}
    if cls.sets_weights:  # WiSE-FT: every weight between the start and the source
        assert changed, f"{name} left the starting weights as they were"
        return
    frozen = {k for k in changed if not f"clip.{k}".startswith(tuple(trainable))}
    assert not frozen, f"{name} changed frozen parameters: {sorted(frozen)[:5]}"
    if cls.trains and any(p.startswith("clip.") for p in trainable):
        assert changed, f"{name} trained nothing"


@pytest.mark.slow
def test_lp_at_epoch_zero_is_zero_shot(ray_methods):
    _, zero, _ = _fit(ray_methods, {"name": "zero-shot"})
    _, lp, _ = _fit(ray_methods, {"name": "lp"}, **{"schedule.epochs": 0})
    # The two runs encode their images separately (the head changes the weights digest, so the
    # cache key), and the zero-shot entries may come from another test's batch size: features agree
    # to float rounding, which can swap a near-tied pair (one pair is ~2e-5 of AUROC here). A head
    # that is not the zero-shot classifier moves these by far more.
    assert lp["id_accuracy"] == pytest.approx(zero["id_accuracy"], abs=2e-3)
    for ours, theirs in zip(lp["ood"], zero["ood"]):
        assert (ours["score"], ours["dataset"]) == (theirs["score"], theirs["dataset"])
        assert ours["auroc"] == pytest.approx(theirs["auroc"], abs=2e-4), ours["score"]


@pytest.mark.slow
def test_wise_ft_endpoints_are_the_start_and_the_fine_tuned_run(ray_methods):
    _, zero, _ = _fit(ray_methods, {"name": "zero-shot"})
    flyp = json.loads((ray_methods["flyp"].parent / "result.json").read_text())
    _, at0, _ = _fit(ray_methods, {"name": "wise-ft", "source": str(ray_methods["flyp"]), "alpha": 0.0})
    _, at1, _ = _fit(ray_methods, {"name": "wise-ft", "source": ray_methods["flyp"].parent.name, "alpha": 1.0})
    for got, want in ((at0, zero), (at1, flyp)):
        assert got["id_accuracy"] == want["id_accuracy"] and got["gap"] == want["gap"]
        assert [(r["score"], r["auroc"], r["fpr95"]) for r in got["ood"]] == \
            [(r["score"], r["auroc"], r["fpr95"]) for r in want["ood"]]


@pytest.mark.slow
def test_a_wise_ft_run_directory_evaluates_to_its_own_rows_from_another_out(ray_methods, tmp_path):
    """WiSE-FT's weights are built (start and source interpolated), not loaded: `harness evaluate` of
    its run directory rebuilds them with the source found beside the run, whatever --out it writes."""
    from harness.orchestration import driver
    from harness.orchestration import evaluate_weights

    cfg, summary, run_dir = _fit(ray_methods, {"name": "wise-ft", "source": ray_methods["flyp"].parent.name,
                                               "alpha": 0.5})
    driver._record(ray_methods["out"], "methods", cfg, summary, None)
    source = evaluate_weights.resolve(str(run_dir), None, [])
    assert Path(source.cfg.method.source).is_absolute() and source.weights is None
    record = evaluate_weights.evaluate(source, tmp_path / "elsewhere", log=lambda *a: None)
    again = json.loads((tmp_path / "elsewhere" / "runs" / record.run_id / "result.json").read_text())
    assert again["cache_encoded"] == 0  # the same weights as the run's: every entry reused
    assert [(r["score"], r["dataset"], r["auroc"], r["fpr95"]) for r in again["ood"]] == \
        [(r["score"], r["dataset"], r["auroc"], r["fpr95"]) for r in summary["ood"]]


@pytest.mark.slow
def test_coop_changes_only_its_context_vectors(ray_methods):
    _, summary, run_dir = _fit(ray_methods, {"name": "coop", "n_ctx": 4, "shots": 4})
    classes = len(synthetic.id_classes(synthetic.small_spec().seed))
    assert summary["train_samples"] == 4 * classes and summary["n_ctx"] == 4  # 4 shots of every class
    assert not _changed(torch.load(ray_methods["start"], weights_only=True), run_dir)
    trained = torch.load(run_dir / "checkpoint" / "method.pt", weights_only=True)
    assert set(trained) == {"prompt.ctx"} and trained["prompt.ctx"].shape == (4, 64)
    _, _, untrained_dir = _fit(ray_methods, {"name": "coop", "n_ctx": 4, "shots": 4}, **{"schedule.epochs": 0})
    untrained = torch.load(untrained_dir / "checkpoint" / "method.pt", weights_only=True)
    assert not torch.equal(trained["prompt.ctx"], untrained["prompt.ctx"])  # the same seeded start, trained


def _kill_my_worker_after_checkpoints(out: Path, run_id: str, count: int, done, killed: list) -> None:
    """Kill this run's Train worker (the pid it recorded in workers/rank0.json, checked to be a
    descendant of this test process) once Ray has registered ``count`` training checkpoints. The
    controller's own snapshot is the signal: a checkpoint copied to storage but not yet registered
    (the controller polls, slowly on a loaded machine) is not the one Ray restores."""
    import os
    import time

    import psutil

    snapshot = out / "ray" / run_id / "checkpoint_manager_snapshot.json"
    deadline = time.time() + 600
    while time.time() < deadline and not done.is_set():
        try:
            registered = json.loads(snapshot.read_text()).get("checkpoint_results", [])
        except (OSError, ValueError):  # not written yet, or caught mid-write
            registered = []
        if len(registered) >= count:
            pid = json.loads((out / "runs" / run_id / "workers" / "rank0.json").read_text())["pid"]
            worker = psutil.Process(pid)
            assert os.getpid() in [p.pid for p in worker.parents()], "not a worker of this test's cluster"
            worker.kill()
            killed.append(pid)
            return
        time.sleep(0.2)


@pytest.mark.slow
def test_lp_ft_resumes_in_its_second_stage_after_a_killed_worker(ray_methods):
    import threading

    from harness.orchestration import ray_layer

    cfg = config.from_dict(ray_methods["base"], {"method": {"name": "lp-ft", "lp_epochs": 1},
                                                 "schedule.epochs": 4, "schedule.keep_checkpoints": 3})
    done, killed = threading.Event(), []
    watcher = threading.Thread(target=_kill_my_worker_after_checkpoints,
                               args=(ray_methods["out"], ray_layer.run_id(cfg), 2, done, killed))
    watcher.start()
    try:
        summary = ray_layer.fit(ray_layer.Job(cfg, ray_methods["inputs"], ray_methods["out"]))
    finally:
        done.set()
        watcher.join()
    assert killed, "no worker was killed: the test did not inject the fault"
    assert summary["status"] == "finished" and summary["resumed_from_epoch"] == 2  # inside the FT stage
    assert [e["epoch"] for e in summary["epochs"]] == [1, 2, 3, 4]
    run_dir = ray_methods["out"] / "runs" / ray_layer.run_id(cfg)
    changed = _changed(torch.load(ray_methods["start"], weights_only=True), run_dir)
    assert changed and all(k.startswith("visual.") for k in changed)  # FT trained the image encoder only


def test_the_head_starts_as_the_zero_shot_classifier_and_method_model_is_re_exported():
    torch.manual_seed(0)
    classes = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    features = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    head = ScaledHead(classes, 40.0)
    torch.testing.assert_close(head(features), 40.0 * features @ classes.T)
    assert methods.MethodModel is MethodModel  # harness.methods imports it on first use (no torch at listing)


@pytest.mark.parametrize("name", methods.names())
def test_portable_params_keep_every_method_rebuildable_from_anywhere(name, tmp_path):
    # harness evaluate --weights <run dir> rebuilds a sets_weights method's run from its params:
    # what they name relative to the run's <out>/runs must come back absolute; the rest unchanged.
    runs = tmp_path / "out" / "runs"
    (runs / "src-run" / "checkpoint").mkdir(parents=True)
    (runs / "src-run" / "checkpoint" / "model.pt").write_bytes(b"")
    method = methods.get(name)
    section = methods.params(method.example("src-run"))
    portable = method.portable(section, runs)
    changed = {k for k in type(section).model_fields if getattr(section, k) != getattr(portable, k)}
    if method.sets_weights:
        assert changed == {"source"} and portable.source == str((runs / "src-run" / "checkpoint").resolve())
        with pytest.raises(FileNotFoundError, match="method.source"):
            method.portable(section, tmp_path / "elsewhere")
    else:
        assert portable == section
