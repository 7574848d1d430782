"""WiSE-FT: no training; the weights are theta = (1 - alpha) theta_start + alpha theta_fine_tuned,
between the starting weights and a finished run's (``method.source``), evaluated the way that run's
method evaluates (its head, or its class prompts). alpha 0 is the start, alpha 1 the fine-tuned run,
exactly (torch.lerp is exact at both ends)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from harness.config import MethodParams
from harness.lazy import torch
from harness.methods.base import Method, build, load_saved, register


class WiseFtParams(MethodParams):
    name: Literal["wise-ft"] = "wise-ft"
    source: str
    """The fine-tuned run: its run id (a directory under the same <out>/runs), or its checkpoint
    directory (holding model.pt, method.pt, method.json) or model.pt. It must have started from this
    config's model.pretrained."""
    alpha: float = Field(0.5, ge=0, le=1)
    """0: the starting weights; 1: the fine-tuned run's."""


def source_dir(source: str, runs: Path) -> Path:
    path = Path(source).expanduser()
    if path.is_file():
        path = path.parent
    if path.is_dir() and (path / "model.pt").is_file():
        return path
    run = runs / source / "checkpoint"
    if run.is_dir():
        return run
    raise FileNotFoundError(f"method.source: {source!r} is neither a checkpoint directory or model.pt nor the id "
                            f"of a finished run under {runs}")


@register
class WiseFt(Method):
    name, label, colour = "wise-ft", "WiSE-FT", "tab:green"
    description = "weight-space interpolation between the starting weights and method.source's, alpha"
    Params = WiseFtParams
    trains, sets_weights = False, True
    demo, demo_source = ({"alpha": 0.25}, {"alpha": 0.5}, {"alpha": 0.75}), "flyp"  # alpha 0 and 1 are runs already

    @classmethod
    def example(cls, checkpoint: str) -> dict:
        return {"name": cls.name, "source": checkpoint, "alpha": 0.5}

    @classmethod
    def portable(cls, params, runs):
        return params.model_copy(update={"source": str(source_dir(params.source, runs).resolve())})

    def extend(self, model, setup):
        section, clip_state, extra_state = load_saved(source_dir(self.params.source, setup.run_dir.parent))
        if section.name == self.name:
            raise ValueError("method.source: a wise-ft run; give the fine-tuned run it interpolated")
        self.source = build(section)
        self.source.extend(model, setup)  # the source's additions at their starting values
        fine = {**{f"clip.{k}": v for k, v in clip_state.items()}, **{f"extra.{k}": v for k, v in extra_state.items()}}
        start = model.state_dict()
        if set(fine) != set(start):
            raise ValueError(f"method.source: its weights do not fit this model (e.g. {sorted(set(fine) ^ set(start))[:3]})")
        with torch.no_grad():
            for key, tensor in start.items():
                end = fine[key].to(tensor.dtype)
                tensor.copy_(torch.lerp(tensor, end, self.params.alpha) if tensor.is_floating_point() else end)

    def classifier(self, model, tokenizer, classnames, cfg, device):
        return self.source.classifier(model, tokenizer, classnames, cfg, device)

    def facts(self):
        return {"source_method": self.source.name}
