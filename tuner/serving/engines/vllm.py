"""vLLM's OpenAI-compatible server; the runtime hook runs through its `vllm.general_plugins` entry point."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from tuner.errors import UserError

INSTALL_HINT = "pip install vllm (0.33 pins torch 2.14; match your torch)"


def command(model: str, port: int, args: list[str]) -> list[str]:
    if importlib.util.find_spec("vllm") is None:
        raise UserError(f"the vllm engine is not installed: {INSTALL_HINT}")
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
            "--port", str(port), *args]


def env(folder: Path) -> dict[str, str]:
    return {}
