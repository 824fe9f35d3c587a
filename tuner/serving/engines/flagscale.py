"""FlagScale's `flagscale serve`, which wraps vLLM (the hook runs through vLLM's plugin entry point)
and switches FlagGems on with USE_FLAGGEMS."""

from __future__ import annotations

import shutil
from pathlib import Path

from tuner.errors import UserError

INSTALL_HINT = "install FlagScale (github.com/FlagOpen/FlagScale) so that `flagscale` is on PATH"


def command(model: str, port: int, args: list[str]) -> list[str]:
    exe = shutil.which("flagscale")
    if exe is None:
        raise UserError(f"the flagscale engine is not installed: {INSTALL_HINT}")
    return [exe, "serve", model, *args]


def env(folder: Path) -> dict[str, str]:
    return {"USE_FLAGGEMS": "1"}
