"""The engines `tuner serve` launches, one module each: `command` (its command line; a missing
install is a UserError naming `INSTALL_HINT`) and `env` (what it needs in its environment besides
the runtime folder's variables)."""

from __future__ import annotations

from types import ModuleType

from tuner.errors import UserError
from tuner.serving.engines import flagscale, transformers, vllm

ENGINES: dict[str, ModuleType] = {"vllm": vllm, "flagscale": flagscale, "transformers": transformers}


def batch_tokens(module: ModuleType, max_tokens: int | None, args: list[str]) -> tuple[int, list[str]]:
    """The largest batch of tokens the engine meets and its arguments: engines that take the
    setting (vllm) get tuner's value passed; the others keep their arguments."""
    if hasattr(module, "batch_tokens"):
        return module.batch_tokens(max_tokens, args)
    return (vllm.DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens), list(args)


def engine(name: str) -> ModuleType:
    if name not in ENGINES:
        raise UserError(f"unknown engine {name!r}; use one of {', '.join(ENGINES)}")
    return ENGINES[name]
