import pytest
import torch

from harness import models


def test_weights_round_trip_through_a_local_checkpoint(tmp_path):
    torch.manual_seed(0)
    first = models.build("tiny-vit-32", None)
    path = models.save_weights(first.model, tmp_path / "w" / "model.pt")
    resolved = models.resolve_weights("tiny-vit-32", str(path))
    assert resolved == str(path.resolve())
    second = models.build("tiny-vit-32", resolved)
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert not list((tmp_path / "w").glob("*.tmp*"))


def test_named_architectures_build_with_matching_transforms():
    bundle = models.build("tiny-vit-32", None)
    from PIL import Image

    image = Image.new("RGB", (50, 40), (200, 10, 10))
    assert bundle.eval_transform(image).shape == (3, 32, 32)
    assert bundle.train_transform(image).shape == (3, 32, 32)
    tokens = bundle.tokenizer(["a photo of a red star"])
    assert tokens.shape == (1, 16)
    with torch.no_grad():
        feats = bundle.model.encode_image(bundle.eval_transform(image)[None], normalize=True)
    assert torch.allclose(feats.norm(dim=1), torch.ones(1))


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown model.arch 'ViT-Q-99'.*ViT-B-16"):
        models.build("ViT-Q-99", None)


def test_missing_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))  # an empty cache: nothing there
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(models.WeightsNotFound, match="checkpoint file not found"):
        models.resolve_weights("ViT-B-16", str(tmp_path / "nope.pt"))
    with pytest.raises(ValueError, match="no pretrained tag 'bogus'.*openai"):
        models.resolve_weights("ViT-B-16", "bogus")
    with pytest.raises(models.WeightsNotFound, match="never downloads.*model.pretrained=/path/to/file"):
        models.resolve_weights("ViT-B-16", "openai")


def test_a_cached_openai_file_is_found(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    url_cache = tmp_path / ".cache" / "clip"
    url_cache.mkdir(parents=True)
    import open_clip
    import os

    name = os.path.basename(open_clip.get_pretrained_cfg("ViT-B-16", "openai")["url"])
    (url_cache / name).write_bytes(b"weights")
    assert models.resolve_weights("ViT-B-16", "openai") == str(url_cache / name)
    assert models.resolve_weights("tiny-vit-32", None) is None


def test_openai_weights_resolve_from_a_hugging_face_cache_and_load(tmp_path, monkeypatch):
    # A real hub layout (refs/main -> snapshots/<rev>/open_clip_pytorch_model.bin) under HF_HUB_CACHE; the
    # file is a tiny-vit-32 state dict (ViT-B/16 weights are 600 MB), so resolve as ViT-B-16, load as tiny.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(models.WeightsNotFound) as missing:
        models.resolve_weights("ViT-B-16", "openai")
    expected = (tmp_path / "hub" / "models--timm--vit_base_patch16_clip_224.openai" / "snapshots" / "<any-name>"
                / "open_clip_model.safetensors")
    message = str(missing.value)
    assert str(expected) in message and str(tmp_path / ".cache" / "clip" / "ViT-B-16.pt") in message
    assert "(or open_clip_pytorch_model.bin)" in message and "--set model.pretrained=/path/to/file" in message
    torch.manual_seed(1)
    original = models.build("tiny-vit-32", None)
    repo = tmp_path / "hub" / "models--timm--vit_base_patch16_clip_224.openai"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    placed = models.save_weights(original.model, repo / "snapshots" / "abc123" / "open_clip_pytorch_model.bin")
    resolved = models.resolve_weights("ViT-B-16", "openai")
    assert resolved == str(placed)
    loaded = models.build("tiny-vit-32", resolved)
    for (name, a), (_, b) in zip(original.model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_preflight_names_where_the_weights_go_before_any_compute(tmp_path, monkeypatch):
    from harness import config as config_mod
    from harness.orchestration import preflight

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    cfg = config_mod.load(config_mod.Path(__file__).resolve().parent.parent / "sweeps" / "demo.yaml",
                          ["model.arch=ViT-B-16", "model.pretrained=openai"])
    with pytest.raises(preflight.PreflightError, match="models--timm--vit_base_patch16_clip_224.openai.*"
                                                       "model.pretrained=/path/to/file"):
        preflight.check_model(cfg)


def test_openai_tags_build_with_quick_gelu_even_from_a_path(tmp_path):
    # open_clip sets QuickGELU only when handed the tag; the harness hands it the resolved file.
    assert models.needs_quick_gelu("ViT-B-16", "openai")
    assert not models.needs_quick_gelu("ViT-B-16", "laion2b_s34b_b88k")  # trained with nn.GELU
    assert not models.needs_quick_gelu("ViT-B-16-quickgelu", "openai")  # the arch has it already
    assert not models.needs_quick_gelu("ViT-B-16", str(tmp_path / "w.pt"))
    assert not models.needs_quick_gelu("ViT-B-16", None)

    def activations(bundle):
        return {type(m).__name__ for m in bundle.model.modules() if "GELU" in type(m).__name__}

    assert activations(models.build("tiny-vit-32", None, quick_gelu=True)) == {"QuickGELU"}
    assert activations(models.build("tiny-vit-32", None)) == {"GELU"}


@pytest.mark.filterwarnings("ignore")  # torch.jit.trace's tracer warnings, about the trace, not the test
def test_an_openai_style_torchscript_file_in_the_url_cache_loads(tmp_path, monkeypatch):
    # OpenAI's ViT-B-16.pt is a TorchScript archive; torch.load(weights_only=True) refuses those.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    torch.manual_seed(2)
    original = models.build("tiny-vit-32", None).model.eval()
    tokens = models.build("tiny-vit-32", None).tokenizer(["a"])
    traced = torch.jit.trace(original, (torch.randn(1, 3, 32, 32), tokens), strict=False)
    placed = tmp_path / ".cache" / "clip" / "ViT-B-16.pt"
    placed.parent.mkdir(parents=True)
    traced.save(str(placed))
    resolved = models.resolve_weights("ViT-B-16", "openai")
    assert resolved == str(placed)
    loaded = models.build("tiny-vit-32", resolved).model
    for (name, a), (_, b) in zip(original.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="TorchScript archive without"):
        models.build("ViT-B-16", resolved)


def test_encode_texts_batches_like_one_forward_and_keeps_no_graph():
    # results tables turn these into numpy: a graph attached to them fails a run at record time
    torch.manual_seed(0)
    bundle = models.build("tiny-vit-32", None)
    texts = [f"a photo of a class {i}" for i in range(7)]
    features = models.encode_texts(bundle.model, bundle.tokenizer, texts, batch_size=3)
    assert features.shape[0] == 7 and not features.requires_grad
    assert torch.allclose(features.norm(dim=-1), torch.ones(7), atol=1e-5)
    with torch.no_grad():
        whole = bundle.model.encode_text(bundle.tokenizer(texts), normalize=True).float()
    torch.testing.assert_close(features, whole, atol=1e-5, rtol=1e-5)
