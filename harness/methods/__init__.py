"""Every fine-tuning method of the comparison, registered beside its definition (harness.methods.base
has the contract). Importing this package registers them all, in the report's reading order, and
imports no torch: `harness methods` lists them at once. MethodModel (a torch module) is imported on
first use of ``harness.methods.MethodModel``."""

from harness.methods.base import (REGISTRY, Method, Setup, Stage, UnknownMethodError, build,
                                  check_space, colour, describe, get, label, load_saved, minimal, names, params,
                                  register, renamed,
                                  save, set_trainable, text_classifier)
from harness.methods import contrastive, head, wise, prompts  # noqa: E402,F401  (registration, in order)

__all__ = ["REGISTRY", "Method", "MethodModel", "Setup", "Stage", "UnknownMethodError", "build", "check_space", "describe",
           "colour", "get", "label", "load_saved", "minimal", "names", "params", "register", "renamed", "save",
           "set_trainable", "text_classifier"]


def __getattr__(name: str):
    if name == "MethodModel":
        from harness.methods.model import MethodModel

        return MethodModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
