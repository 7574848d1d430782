"""open_clip factory: (model, transforms, tokenizer) from a model config, and offline weight resolution.

Nothing here downloads. Weights come from a local file, or from a file that an
earlier online session left in the open_clip / Hugging Face caches.
"""

from __future__ import annotations

import logging

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import open_clip
import torch

from harness.paths import torch_save_atomic

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

# open_clip's Hugging Face file names, newest first (see open_clip.pretrained).
_HF_FILENAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class WeightsNotFound(FileNotFoundError):
    """Pretrained weights that are not on this machine; the message says where to put them."""


@dataclass(frozen=True)
class ClipBundle:
    model: open_clip.CLIP
    train_transform: Callable
    eval_transform: Callable
    tokenizer: Callable[[list[str]], torch.Tensor]


def build(arch: str, weights: str | None, train_crop_scale: tuple[float, float] = (0.9, 1.0),
          quick_gelu: bool = False) -> ClipBundle:
    """Build ``arch`` with ``weights`` (a local checkpoint path, or None for random init).

    ``quick_gelu``: the activation OpenAI's weights were trained with (see ``needs_quick_gelu``);
    open_clip only sets it itself when given the tag, and the harness gives it a path.

    The train transform is the method's RandomResizedCrop(scale=train_crop_scale, bicubic);
    the eval transform is Resize + CenterCrop, both from open_clip so they match its models.
    """
    if arch not in open_clip.list_models():
        raise ValueError(f"unknown model.arch {arch!r}; open_clip knows: {', '.join(open_clip.list_models())}")
    scripted = weights is not None and _is_torchscript(weights)
    quiet = _RandomInitAsked()
    if weights is None:  # random weights asked for: open_clip's warning about them says nothing
        logging.getLogger().addFilter(quiet)
    try:
        model, train_tf, eval_tf = open_clip.create_model_and_transforms(
            arch,
            pretrained=None if scripted else weights,
            aug_cfg={"scale": train_crop_scale},
            output_dict=True,
            force_quick_gelu=quick_gelu,
            weights_only=True,  # never unpickle arbitrary objects from a checkpoint
        )
    finally:
        logging.getLogger().removeFilter(quiet)
    if scripted:
        _load_torchscript_weights(model, weights)
    return ClipBundle(model, train_tf, eval_tf, open_clip.get_tokenizer(arch))


class _RandomInitAsked(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded" when random weights are what was asked for."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")


def _is_torchscript(path: str) -> bool:
    # OpenAI's own files (open_clip's URL cache, e.g. ~/.cache/clip/ViT-B-16.pt) are TorchScript archives,
    # which torch.load refuses with weights_only=True; a plain state dict has no code/ inside.
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1].startswith("code/") for name in archive.namelist())


def _load_torchscript_weights(model: torch.nn.Module, path: str) -> None:
    """The tensors of a TorchScript CLIP (OpenAI's format; names match open_clip's CLIP)."""
    state = torch.jit.load(path, map_location="cpu").state_dict()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"model.pretrained: {path} is a TorchScript archive without {len(missing)} of the "
                         f"model's tensors (e.g. {missing[:3]}): not a CLIP of this architecture")
    # Extra entries (input_resolution, context_length, vocab_size, attn_mask) are not weights.
    model.load_state_dict({k: state[k] for k in expected})


def resolve_weights(arch: str, spec: str | None) -> str | None:
    """Turn ``model.pretrained`` into a local file path (or None for random init).

    ``spec`` is a path to a checkpoint, or an open_clip pretrained tag (e.g. "openai")
    whose file must already be in the local caches. Raises WeightsNotFound naming
    where to put the file.
    """
    if spec is None:
        return None
    path = Path(spec).expanduser()
    if path.is_file():
        return str(path.resolve())
    if os.sep in spec or path.suffix in {".pt", ".pth", ".bin", ".safetensors"}:
        raise WeightsNotFound(f"model.pretrained: checkpoint file not found: {path}")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if spec not in tags:
        raise ValueError(f"model.pretrained: {arch} has no pretrained tag {spec!r}; "
                         f"known tags: {', '.join(tags) or 'none'}; or give a checkpoint path")
    cached = _cached_pretrained_file(arch, spec)
    if cached is None:
        raise WeightsNotFound(_where_to_put(arch, spec))
    return cached


def check_checkpoint(path: Path) -> None:
    """ValueError naming ``path`` and why, unless it loads as a checkpoint of tensors and plain
    containers (``weights_only``: a file that would run code, or a truncated or foreign one, is
    refused). Cheap: memory-mapped, no tensor is read. TorchScript and safetensors files are left
    to their own loaders."""
    path = Path(path)
    if path.suffix == ".safetensors" or _is_torchscript(str(path)):
        return
    import zipfile

    try:  # mmap needs the zip format (torch >= 1.6); an older file is read whole
        torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as err:  # noqa: BLE001 - whatever torch says, the file is refused with it
        # torch's weights_only message opens with advice; the line that says what was found comes after
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = next((line for line in lines if "unsupported" in line.lower()), lines[0] if lines else "")
        raise ValueError(f"{path}: not a readable checkpoint ({type(err).__name__}: {reason[:300]}); "
                         "only tensors and plain containers are loaded (torch.load weights_only)") from None


def needs_quick_gelu(arch: str, spec: str | None) -> bool:
    """True when ``model.pretrained`` is an open_clip tag trained with QuickGELU (e.g. ViT-B-16 openai):
    building ViT-B-16 from that file without it would silently use nn.GELU."""
    if spec is None or arch.endswith("-quickgelu") or spec not in open_clip.list_pretrained_tags_by_model(arch):
        return False
    return bool(open_clip.get_pretrained_cfg(arch, spec).get("quick_gelu", False))


def _url_cache_dir() -> Path:
    # open_clip's download_pretrained_from_url default location.
    return Path("~/.cache/clip").expanduser()


def _hf_hub_dir() -> Path:
    # Read at call time (huggingface_hub's own constant is frozen at import): HF_HUB_CACHE, else HF_HOME/hub.
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    return Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub"


def _hf_repo_dir(repo_id: str) -> Path:
    # The hub's layout: models--org--repo/{refs/main, snapshots/<revision>/<file>}.
    return _hf_hub_dir() / f"models--{repo_id.replace('/', '--')}"


def _hf_repo_and_names(hub: str) -> tuple[str, tuple[str, ...]]:
    # open_clip's hf_hub is "org/repo/" (open_clip's file names) or "org/repo/file".
    if hub.endswith("/"):
        return hub.rstrip("/"), _HF_FILENAMES
    repo_id, filename = os.path.split(hub)
    return repo_id, (filename,)


def _where_to_put(arch: str, tag: str) -> str:
    """The exact places the resolver looks, so a user can copy the file there."""
    pcfg = open_clip.get_pretrained_cfg(arch, tag)
    places = []
    if pcfg.get("hf_hub"):
        repo_id, names = _hf_repo_and_names(pcfg["hf_hub"])
        snapshot = _hf_repo_dir(repo_id) / "snapshots" / "<any-name>"
        alternatives = "".join(f" (or {n})" for n in names[1:])
        places.append(f"the Hugging Face cache: {snapshot / names[0]}{alternatives} (from https://huggingface.co/{repo_id}; "
                      f"`huggingface-cli download {repo_id} {names[0]}` on a machine with internet fills it, "
                      "HF_HUB_CACHE / HF_HOME move it)")
    if pcfg.get("url"):
        places.append(f"open_clip's cache: {_url_cache_dir() / os.path.basename(pcfg['url'])} (from {pcfg['url']})")
    return (f"model.pretrained: weights {arch}/{tag} are not on this machine and the harness never downloads. "
            f"Put the file at {' or at '.join(places)}; "
            "or give its path: --set model.pretrained=/path/to/file")


def _cached_pretrained_file(arch: str, tag: str) -> str | None:
    pcfg = open_clip.get_pretrained_cfg(arch, tag)
    url = pcfg.get("url", "")
    if url:
        candidate = _url_cache_dir() / os.path.basename(url)
        if candidate.is_file():
            return str(candidate)
    hub = pcfg.get("hf_hub", "")
    if hub:
        repo_id, names = _hf_repo_and_names(hub)
        repo_dir = _hf_repo_dir(repo_id)  # refs/main names the revision to try first
        ref = repo_dir / "refs" / "main"
        revisions = [ref.read_text().strip()] if ref.is_file() else []
        if (repo_dir / "snapshots").is_dir():
            revisions += sorted(p.name for p in (repo_dir / "snapshots").iterdir())
        for revision in revisions:
            for name in names:
                candidate = repo_dir / "snapshots" / revision / name
                if candidate.is_file():
                    return str(candidate)
    return None


def save_weights(model: torch.nn.Module, path: str | Path) -> Path:
    """Write the CLIP's state dict atomically (temp + rename); loadable with weights_only=True and as
    ``model.pretrained`` (a method's additions, e.g. a head, are saved beside it by harness.methods)."""
    return torch_save_atomic({k: v.detach().cpu() for k, v in clip_of(model).state_dict().items()}, path)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model behind a DistributedDataParallel wrapper."""
    return getattr(model, "module", model)


def clip_of(model: torch.nn.Module) -> open_clip.CLIP:
    """The open_clip CLIP inside ``model`` (itself, a DDP wrapper's, or a method's wrapper's ``clip``)."""
    model = unwrap(model)
    return getattr(model, "clip", model)


def encode_text_embeddings(model: torch.nn.Module, embeddings: torch.Tensor, tokens: torch.Tensor,
                           normalize: bool = True) -> torch.Tensor:
    """The text encoder run on given token embeddings (B, L, width) instead of looking up ``tokens``
    (B, L), which still say where each sequence ends (its pooling position): open_clip's
    ``encode_text`` after its embedding lookup, so prompt learning (CoOp) can put learned vectors in
    the sequence. ``encode_text_embeddings(m, m.token_embedding(t), t) == m.encode_text(t)``."""
    from open_clip.transformer import text_global_pool

    clip = clip_of(model)
    cast_dtype = clip.transformer.get_cast_dtype()
    x = embeddings.to(cast_dtype) + clip.positional_embedding.to(cast_dtype)
    x = clip.transformer(x, attn_mask=clip.attn_mask)
    x = clip.ln_final(x)
    x = text_global_pool(x, tokens, clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None))
    if clip.text_projection is not None:
        x = clip.text_projection(x) if isinstance(clip.text_projection, torch.nn.Linear) else x @ clip.text_projection
    return torch.nn.functional.normalize(x, dim=-1) if normalize else x


@torch.no_grad()
def encode_texts(model, tokenizer: Callable, texts: Sequence[str], batch_size: int = 512,
                 device: torch.device | str = "cpu", normalize: bool = True) -> torch.Tensor:
    """(len(texts), D) float32 text embeddings on the CPU, ``batch_size`` prompts per forward."""
    model.eval()
    out = [model.encode_text(tokenizer(list(texts[i:i + batch_size])).to(device), normalize=normalize).float().cpu()
           for i in range(0, len(texts), batch_size)]
    return torch.cat(out)
