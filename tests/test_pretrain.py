"""harness.train.pretrain: the cache key of the pretrained weights (pretraining itself runs in the slow tests)."""

from harness import config
from harness.train import pretrain


def test_the_checkpoint_is_keyed_by_arch_pretraining_settings_and_world_not_the_run_seed(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    world = tmp_path / "world"
    world.mkdir()
    (world / "world.json").write_text('{"seed": 1}')
    cfg = config.load(None)
    first = pretrain.checkpoint_path(cfg, world)
    assert first == pretrain.checkpoint_path(cfg, world) and first.parent.name == "pretrained"
    assert pretrain.checkpoint_path(config.load(None, ["pretrain.seed=7"]), world) != first
    assert pretrain.checkpoint_path(config.load(None, ["pretrain.epochs=4"]), world) != first
    # a training seed starts from the same stand-in checkpoint, as from a published one
    assert pretrain.checkpoint_path(config.load(None, ["seed=7"]), world) == first
    (world / "world.json").write_text('{"seed": 2}')
    assert pretrain.checkpoint_path(cfg, world) != first
