"""FlagScale (`flagscale serve`), which runs `vllm serve` from a serve config of its own
(flagscale_config): the runtime hook runs through vLLM's plugin entry point as with the vllm engine.

FlagGems is enabled by tuner's plugin alone. FlagScale's own switch, USE_FLAGGEMS, is read only by
the vLLM FlagScale patches (backends/vllm/.../gpu_model_runner.py.patch: `flag_gems.enable(record=True,
unused=["exponential_", "softmax"])` when the module is imported), which would put back every op
tuner's exclude list leaves out; the config sets USE_FLAGGEMS=false, so a patched vLLM does not
enable FlagGems a second time and a stock vLLM is unaffected."""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys
from pathlib import Path

from tuner.errors import UserError
from tuner.serving.engines import flagscale_config, flagscale_job, vllm

# flag-scale 0.8.0 pins torch==2.7.1 and ~40 packages (ray, wandb, linters): without its dependencies,
# next to the host's torch, its serve path needs hydra-core/omegaconf (antlr4 runtime 4.9.x), pandas
# (its auto-tuner is imported by every command), click, psutil and PyYAML
INSTALL_HINT = ('pip install --no-deps flag-scale==0.8.0 hydra-core==1.3.2 omegaconf==2.3.0 '
                '"antlr4-python3-runtime==4.9.3" "pandas>=2,<3" pytz tzdata, with vLLM for your torch '
                '(pip install flag-scale alone replaces your torch with its pinned 2.7.1)')
NEEDS = ("flag_scale", "hydra", "omegaconf", "antlr4", "pandas", "click", "psutil", "yaml")
API_KEY_ENV = vllm.API_KEY_ENV  # read by the vLLM FlagScale starts, which inherits tuner's environment
# the launch environment only: FlagScale would write the key into a script and onto a command line, and
# an exported PATH / PYTHONPATH would undo the folders its script adds
LAUNCH_ONLY = (API_KEY_ENV, "PATH", "PYTHONPATH")
CONFIG_DIR = "flagscale"  # under the runtime folder
SHIM_DIR = "bin"  # under CONFIG_DIR: the `vllm` FlagScale runs when this interpreter's folder has none
batch_tokens = vllm.batch_tokens  # FlagScale runs vLLM: tuner's --max-tokens is its batched-token bound


def command(model: str, port: int, args: list[str], host: str = "127.0.0.1") -> list[str]:
    """`vllm serve` as FlagScale will run it (checked: model folder, FlagScale and vLLM installed,
    the arguments vLLM's parser takes); config_writer turns it into FlagScale's config and command."""
    if model.startswith(("/", "./", "../", "~")) and not Path(model).expanduser().exists():
        raise UserError(f"model folder {model} does not exist (write one with `tuner checkpoint`)")
    missing = [m for m in NEEDS if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"the flagscale engine is not installed (missing {', '.join(missing)}): {INSTALL_HINT}")
    if importlib.util.find_spec("vllm") is None:
        raise UserError(f"FlagScale serves through vLLM, which is not installed: {vllm.INSTALL_HINT}")
    if _needs_shim():
        _vllm_entry_point()  # refused now when there is nothing to run as `vllm`
    engine_args = flagscale_config.engine_args(model, host, port, args)  # refuses what FlagScale cannot pass
    flagscale_config.check_vllm_accepts(model, args)
    where = [] if "host" in {a.split("=", 1)[0][2:] for a in args} else ["--host", host]
    return ["vllm", "serve", engine_args["model"], *where, "--port", str(port), *args]


def config_writer(folder: Path, model: str, port: int, args: list[str], host: str) -> flagscale_config.ServeConfig:
    """The config under the runtime folder, checked before anything is written."""
    root = folder.expanduser().resolve() / CONFIG_DIR
    if not flagscale_config.SHELL_SAFE.fullmatch(str(root)):
        raise UserError(f"runtime folder {root.parent} would need shell quoting, which FlagScale does not do; "
                        "use a --runtime-dir path of letters, digits and / . _ - only")
    return flagscale_config.ServeConfig(root, flagscale_config.engine_args(model, host, port, args))


def write(config: flagscale_config.ServeConfig, env: dict[str, str]) -> list[str]:
    """Write the config with tuner's environment in its `experiment.envs` (not the API key: FlagScale
    writes envs into a script and a command line; vLLM gets the key from the inherited environment),
    the `vllm` shim where one is needed, and return the command that starts FlagScale with it."""
    config.write({k: v for k, v in env.items() if k not in LAUNCH_ONLY})
    if _needs_shim():
        _write_shim(config.root / SHIM_DIR)
    return [sys.executable, "-m", "flag_scale.flagscale.cli", "serve", "tuner", str(config.path)]


def env(folder: Path) -> dict[str, str]:
    """FlagScale's script runs `python` and `vllm` by name from its own package folder: this
    interpreter's folder comes first on PATH (after the shim's, below) and tuner's on PYTHONPATH (vLLM finds the plugin's entry
    point there; FlagScale appends its folders to a PYTHONPATH it inherits). Where that folder has no
    `vllm` (vLLM installed with --target or unpacked on PYTHONPATH, as on the H200 host: FlagScale
    failed with "No such file or directory: 'vllm'"), the shim `write` puts in front runs this
    interpreter's vLLM. USE_FLAGGEMS=false keeps a FlagScale-patched vLLM from enabling FlagGems."""
    first = [str(folder.expanduser().resolve() / CONFIG_DIR / SHIM_DIR)] if _needs_shim() else []
    bindir = str(Path(sys.executable).parent)
    repo = str(Path(__file__).resolve().parents[3])
    return {"USE_FLAGGEMS": "false",
            "PATH": os.pathsep.join([*first, bindir, os.environ.get("PATH", "")]).rstrip(os.pathsep),
            "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def _needs_shim() -> bool:
    return not os.access(Path(sys.executable).parent / "vllm", os.X_OK)


def _vllm_entry_point() -> tuple[str, str]:
    """(module, function) of the installed vLLM's `vllm` console script (vllm.entrypoints.cli.main,
    main in 0.26 and 0.33), read from its distribution's metadata, as pip writes the script."""
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group="console_scripts", name="vllm")
             if ep.dist is None or (ep.dist.name or "").lower() == "vllm"]
    if not found:
        raise UserError(f"FlagScale runs `vllm serve` by name, and there is no `vllm` command next to "
                        f"{sys.executable} nor vLLM metadata to write one from: install vLLM with pip "
                        "into this environment")
    return found[0].module, found[0].attr


def _write_shim(folder: Path) -> None:
    """`vllm` for this interpreter, which finds vLLM on its PYTHONPATH. As in pip's script, the
    current folder is not importable: FlagScale starts `vllm` from inside its own package, whose
    top-level `tests`, `tools`, `run` would otherwise shadow modules of those names."""
    module, func = _vllm_entry_point()
    code = (f"import sys; sys.path[:1] == [''] and sys.path.pop(0); "
            f"from {module} import {func}; sys.argv[0] = 'vllm'; sys.exit({func}())")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "vllm.tmp"
    tmp.write_text("#!/bin/sh\n# written by `tuner serve --engine flagscale`: FlagScale runs `vllm serve` by name\n"
                   f"exec {shlex.quote(sys.executable)} -c {shlex.quote(code)} \"$@\"\n")
    tmp.chmod(0o755)
    tmp.replace(folder / "vllm")


def launch(command: list[str], env: dict[str, str]) -> int:
    """Start FlagScale with the config `write` wrote (the command's last argument) and hold its job."""
    return flagscale_job.run(command, env, Path(command[-1]).parent.parent / "outputs")
