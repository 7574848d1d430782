"""torch, imported the first time one of its names is read.

Every method and score registers itself beside its definition, so `harness methods`, `harness scores`
and the check of a config import all of them, yet run none of them; torch alone takes over a second
to import here. The modules that define methods and scores therefore write
``from harness.lazy import torch`` and pay for torch at their first tensor, not at registration.
What must subclass a torch class at import (the methods' nn.Modules) lives in modules that import
torch plainly and are imported inside the hooks that build models.

Not importlib.util.LazyLoader: it puts a half-made module object into sys.modules while torch
imports itself, and torch's import then fails (its pytree registers torch.Size twice).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for the module ``name``; the first attribute read imports it (once) and every read
    is then passed to the real module, so it sees the module's state as it is now."""

    def __init__(self, name: str):
        self.__dict__["_name"] = name
        self.__dict__["_module"] = None

    def _load(self) -> ModuleType:
        module = self.__dict__["_module"]
        if module is None:
            module = self.__dict__["_module"] = importlib.import_module(self.__dict__["_name"])
        return module

    def __getattr__(self, attr: str) -> Any:  # only for names not set on the proxy itself
        return getattr(self._load(), attr)

    def __setattr__(self, attr: str, value: Any) -> None:
        setattr(self._load(), attr, value)

    def __repr__(self) -> str:
        state = "imported" if self.__dict__["_module"] is not None else "not imported yet"
        return f"<lazy module {self.__dict__['_name']!r} ({state})>"


torch = LazyModule("torch")
