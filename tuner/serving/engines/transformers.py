"""transformers' own OpenAI-compatible server (`transformers serve`). It has no plugin loader, so
the runtime hook runs from a `sitecustomize` module written into the runtime folder."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from tuner.errors import UserError

INSTALL_HINT = 'pip install "transformers[serving]" (fastapi, uvicorn, pydantic, openai)'
SITECUSTOMIZE = '''# written by tuner serve: applies tuned configs in engines without vLLM's plugin loader
import os
if os.environ.get("TUNER_RUNTIME_DIR"):
    try:
        from tuner.inject.plugin import register
        register()
    except Exception as e:  # never serve silently without the state the user asked for
        import sys
        print(f"tuner: cannot apply {os.environ['TUNER_RUNTIME_DIR']}: {type(e).__name__}: {e}", file=sys.stderr)
        os._exit(3)
'''


def command(model: str, port: int, args: list[str], host: str = "127.0.0.1") -> list[str]:
    if not Path(model).exists():  # the user's input first
        raise UserError(f"model folder {model} does not exist (write one with `tuner checkpoint`)")
    if importlib.util.find_spec("transformers") is None:
        raise UserError(f"the transformers engine is not installed: {INSTALL_HINT}")
    from transformers.utils.import_utils import is_serve_available

    if not is_serve_available():
        raise UserError(f"transformers' server needs its serving extras: {INSTALL_HINT}")
    return [sys.executable, "-c", "from transformers.cli.transformers import main; main()", "serve",
            model, "--host", host, "--port", str(port), "--device", os.environ.get("TUNER_SERVE_DEVICE", "cuda"), "--dtype", "auto", *args]


def env(folder: Path) -> dict[str, str]:
    site = folder / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    repo = str(Path(__file__).resolve().parents[3])  # tuner importable in the engine
    return {"PYTHONPATH": os.pathsep.join([str(site), repo, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
