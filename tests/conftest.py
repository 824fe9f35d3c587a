"""Helpers shared by the test packages: real flag_gems / vllm code, each in a clean subprocess.

FlagGems imports without a GPU only with GEMS_VENDOR=nvidia and FLAGGEMS_DB_URL set
(ARCH=sm_90 selects the Hopper modules) and never under TRITON_INTERPRET=1; vLLM reads
several settings at import. So both run in subprocesses with an explicit environment.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

# Without a GPU every Triton kernel runs under the interpreter, and triton.jit (triton.language's
# own helpers included) decides when a function is defined: set it before any test imports triton,
# not in the test modules that happen to be collected first (a run of one folder broke on that)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
H100 = "NVIDIA H100 80GB HBM3"

needs_flag_gems = pytest.mark.skipif(
    importlib.util.find_spec("flag_gems") is None,
    reason="flag_gems not installed (pip install --no-deps flag-gems==5.0.2)",
)
needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vllm not installed (pip install --no-deps vllm==0.33.0 plus its small deps, see .ci/run)",
)


def run_py(code: str, env: dict[str, str] | None = None, timeout: int = 120) -> str:
    """Run `code` in a fresh interpreter with a minimal environment; return stdout+stderr.

    The code prints a final line `RESULT <json>`; use `result()` to read it.
    """
    # the caller's PYTHONPATH stays behind the checkout: on the GPU host flag_gems is installed
    # there (tuner/benchmarks/gpu_env.sh), not in site-packages
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    base = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": path,
            "HOME": os.environ.get("HOME", "/tmp"), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO,
                          env={**base, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def result(out: str):
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert lines, out[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


def flaggems_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a FlagGems subprocess on any host, its cache DB and home in tmp_path."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"GEMS_VENDOR": "nvidia", "ARCH": "sm_90", "HOME": str(home),
            "FLAGGEMS_DB_URL": f"sqlite:///{tmp_path / 'flaggems.db'}"}


@pytest.fixture
def fg_env(tmp_path):
    """`flaggems_env` of the test's tmp_path."""
    return flaggems_env(tmp_path)


@pytest.fixture(scope="session")
def pg_cluster():
    """A PostgreSQL cluster for the whole session (tests/postgres.py). When it cannot start, the
    tests using it fail: CI installs PostgreSQL; only $TUNER_TEST_SKIP_POSTGRES=1 skips them."""
    import shutil
    import tempfile

    from tests.postgres import SKIP_ENV, Cluster

    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: PostgreSQL tests skipped")
    root = Path(tempfile.mkdtemp(prefix="tuner-pg-"))  # not under pytest's tmp: the postgres user reads it
    cluster = Cluster(root)
    try:
        cluster.start()
    except Exception as e:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {e}")
    yield cluster
    cluster.stop()
    shutil.rmtree(root, ignore_errors=True)


_PG_DATABASES = iter(range(1, 1_000_000))


@pytest.fixture
def pg_url(pg_cluster):
    """A fresh, empty database of the session's cluster; its URL carries a password."""
    return pg_cluster.create_database(f"t{next(_PG_DATABASES)}")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh database: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tuner.db'}"
    return request.getfixturevalue("pg_url")


def hidden_modules(*names: str) -> str:
    """Python source that hides the named top-level packages from every import finder (prepend it to a
    child interpreter's code): the package is then missing, as on a host without it."""
    return textwrap.dedent(f"""
        import sys
        class Hidden:
            def __init__(self, finder):
                self.finder = finder
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {names!r}:
                    return None
                return self.finder.find_spec(name, path, target)
        sys.meta_path = [Hidden(f) if hasattr(f, "find_spec") else f for f in sys.meta_path]
    """)


def model_folder(path: Path) -> Path:
    """A folder `tuner serve` and `tuner bench` take for a checkpoint (they refuse one without
    config.json); the tests' engines never load it."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text('{"model_type": "qwen2"}')
    return path
