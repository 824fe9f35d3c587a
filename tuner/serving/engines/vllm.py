"""vLLM's OpenAI-compatible server; the runtime hook runs through its `vllm.general_plugins` entry point."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from tuner.errors import UserError

INSTALL_HINT = ("pip install vllm with a version built for your torch (vLLM 0.20-0.26 pin torch 2.11, "
                "0.27-0.32 torch 2.13, 0.33 torch 2.14)")
BATCH_FLAG = "--max-num-batched-tokens"
DEFAULT_MAX_TOKENS = 8192


API_KEY_ENV = "VLLM_API_KEY"  # vLLM reads it: the key stays out of the process list


def command(model: str, port: int, args: list[str], host: str = "127.0.0.1") -> list[str]:
    """vLLM listens on every interface by default; tuner passes --host (127.0.0.1 unless told),
    unless the engine arguments name one."""
    if model.startswith(("/", "./", "../", "~")) and not Path(model).expanduser().exists():
        raise UserError(f"model folder {model} does not exist (write one with `tuner checkpoint`)")
    if importlib.util.find_spec("vllm") is None:
        raise UserError(f"the vllm engine is not installed: {INSTALL_HINT}")
    where = [] if any(a == "--host" or a.startswith("--host=") for a in args) else ["--host", host]
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
            *where, "--port", str(port), *args]


def batch_tokens(max_tokens: int | None, args: list[str]) -> tuple[int, list[str]]:
    """tuner's --max-tokens and vLLM's --max-num-batched-tokens are one setting: the largest M a
    GEMM meets in one engine step (chunked prefill) is the bound tuner seeds configs up to. A value
    in the engine arguments wins; otherwise tuner's (default 8192) is passed to the engine."""
    spellings = (BATCH_FLAG, BATCH_FLAG.replace("-", "_").replace("__", "--"))  # vLLM takes both
    for i, a in enumerate(args):
        if a in spellings or a.startswith(tuple(f"{f}=" for f in spellings)):
            text = a.split("=", 1)[1] if "=" in a else (args[i + 1] if i + 1 < len(args) else "")
            try:
                n = int(text)
            except ValueError:
                raise UserError(f"{BATCH_FLAG} needs a whole number, got {text!r}") from None
            if max_tokens is not None and max_tokens != n:
                raise UserError(f"--max-tokens {max_tokens} and the engine's {BATCH_FLAG} {n} differ: they "
                                "are one setting (the largest batch of tokens); give one of them")
            return n, list(args)
    n = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
    return n, [*args, BATCH_FLAG, str(n)]


def env(folder: Path) -> dict[str, str]:
    return {}
