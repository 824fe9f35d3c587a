"""FlagScale's `flagscale serve`, which wraps vLLM (the hook runs through vLLM's plugin entry point)
and switches FlagGems on with USE_FLAGGEMS."""

from __future__ import annotations

import shutil
from pathlib import Path

from tuner.errors import UserError

INSTALL_HINT = "install FlagScale (github.com/FlagOpen/FlagScale) so that `flagscale` is on PATH"


def command(model: str, port: int, args: list[str], host: str = "127.0.0.1") -> list[str]:
    """FlagScale takes host and port from its serve config (the model argument), not from tuner."""
    exe = shutil.which("flagscale")
    if exe is None:
        raise UserError(f"the flagscale engine is not installed: {INSTALL_HINT}")
    return [exe, "serve", model, *args]


def env(folder: Path) -> dict[str, str]:
    return {"USE_FLAGGEMS": "1"}
