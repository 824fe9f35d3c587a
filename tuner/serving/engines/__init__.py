"""The engines `tuner serve` launches, one module each: `command` (its command line; a missing
install is a UserError naming `INSTALL_HINT`) and `env` (what it needs in its environment besides
the runtime folder's variables)."""

from __future__ import annotations

from types import ModuleType

from tuner.errors import UserError
from tuner.serving.engines import flagscale, transformers, vllm

ENGINES: dict[str, ModuleType] = {"vllm": vllm, "flagscale": flagscale, "transformers": transformers}


def engine(name: str) -> ModuleType:
    if name not in ENGINES:
        raise UserError(f"unknown engine {name!r}; use one of {', '.join(ENGINES)}")
    return ENGINES[name]
