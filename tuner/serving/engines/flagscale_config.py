"""The FlagScale serve config `tuner serve --engine flagscale` writes, in FlagScale's own schema: its
shipped `examples/minicpm_o_2.6/conf/serve.yaml` (a Hydra config: experiment, envs, action) with a
`serve/<name>.yaml` beside it (one `vllm_model` whose `engine_args` become `vllm serve` options).

What FlagScale 0.8.0's code does with it (flagscale/runner/runner_serve.py, serve/run_inference_engine.py):
`deploy.use_fs_serve: false` on one node starts no Ray (`ray start --head` comes only with
use_fs_serve, FlagScale's default); `experiment.envs` are exported, unquoted, in a shell script it
writes and runs in the background; `engine_args` go through `flatten_dict_to_args` (key -> --key,
true -> a flag; a list it cannot pass) into `vllm serve MODEL ...`, found on PATH, from FlagScale's
package folder (so the model path is made absolute). The engine arguments are kept token for token,
so FlagScale's vLLM gets the command `tuner serve --engine vllm` would give it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.errors import UserError

CONFIG = "serve"      # conf/serve.yaml: Hydra's config name, as in FlagScale's examples
SERVE_GROUP = "tuner"  # conf/serve/tuner.yaml: the serve list
SERVE_ID = "vllm_model"  # the id FlagScale's runner looks the engine arguments up by
# FlagScale writes `export K=V` and `K=V python ...` unquoted into bash: values must need no quoting
SHELL_SAFE = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
OPTION = re.compile(r"--[A-Za-z0-9][A-Za-z0-9_.-]*")
VALUE = re.compile(r"(?!-[A-Za-z-])")  # "-1" is a value, "-tp" / "--x" are options


def engine_args(model: str, host: str, port: int, args: list[str]) -> dict[str, Any]:
    """`vllm serve` options as FlagScale's `engine_args`: `--max-model-len 4096` -> max_model_len: "4096"
    (values stay the strings given), a bare flag -> true; `--host` in the engine arguments wins over
    tuner's, as with the vllm engine."""
    out: dict[str, Any] = {"model": str(Path(model).expanduser().resolve()) if _is_path(model) else model,
                           "host": host, "port": port}
    i = 0
    while i < len(args):
        a = args[i]
        name, eq, value = a.partition("=")
        if not OPTION.fullmatch(name):
            hint = " (write options in their long form, e.g. --tensor-parallel-size, not -tp)" \
                if a.startswith("-") else ""
            raise UserError(f"engine argument {a!r} is not a --option FlagScale can pass to vLLM{hint}")
        key = name[2:].replace("-", "_")
        if key == "model":
            raise UserError("give the model as tuner serve's MODEL argument, not as --model")
        values = [value] if eq else []
        i += 1
        while not eq and i < len(args) and VALUE.match(args[i]):
            values.append(args[i])
            i += 1
        for v in values:
            if "${" in v:  # OmegaConf would read it as an interpolation, twice (FlagScale re-saves it)
                raise UserError(f"engine argument {a} {v!r}: FlagScale's config cannot hold '${{'")
        if len(values) > 1:  # its flatten_dict_to_args writes an OmegaConf list as one "['a', 'b']"
            raise UserError(f"engine argument {name} has {len(values)} values; FlagScale passes one value "
                            "per option to vLLM")
        out[key] = values[0] if values else True
    return out


def _is_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or Path(model).exists()


def check_vllm_accepts(model: str, args: list[str]) -> None:
    """Refuse what the installed vLLM's own `vllm serve` parser refuses (an unknown option, a bad
    value), in a child process (vLLM's arguments import torch). Without a GPU vLLM builds its parser
    only for the CPU target: that one is used then (the same option names)."""
    code = r"""
import json, sys
args = json.loads(sys.argv[1])
try:
    from vllm.entrypoints.common.cli_args import make_arg_parser  # vLLM >= 0.27
except ImportError:
    from vllm.entrypoints.openai.cli_args import make_arg_parser
try:
    from vllm.utils.argparse_utils import FlexibleArgumentParser
except ImportError:
    from vllm.utils import FlexibleArgumentParser
try:
    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
except Exception as e:
    print("RESULT " + json.dumps({"built": False, "why": f"{type(e).__name__}: {e}"})); sys.exit(0)
class Refused(Exception):
    pass
def error(message):
    raise Refused(message)
parser.error = error
try:
    parser.parse_args(args)
    print("RESULT " + json.dumps({"built": True}))
except Refused as e:
    print("RESULT " + json.dumps({"built": True, "error": str(e)}))
"""
    tries = [{}] if os.environ.get("VLLM_TARGET_DEVICE") == "cpu" else [{}, {"VLLM_TARGET_DEVICE": "cpu"}]
    for extra in tries:
        r = subprocess.run([sys.executable, "-c", code, json.dumps([model, *args])], capture_output=True,
                           text=True, timeout=300, env={**os.environ, **extra}, check=False)
        lines = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
        verdict = json.loads(lines[-1][7:]) if lines else {"built": False}
        if verdict["built"]:
            if "error" in verdict:
                raise UserError(f"vLLM refuses the engine arguments: {verdict['error']}")
            return
    # no parser could be built here: vLLM itself refuses bad arguments when FlagScale starts it


@dataclass
class ServeConfig:
    """One FlagScale serve config: conf/serve.yaml and conf/serve/tuner.yaml under `root`, FlagScale's
    logs and scripts under root/outputs."""
    root: Path
    engine_args: dict[str, Any]

    @property
    def path(self) -> Path:
        return self.root / "conf" / f"{CONFIG}.yaml"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    def documents(self, envs: dict[str, str]) -> dict[Path, Any]:
        for k, v in envs.items():
            if not SHELL_SAFE.fullmatch(v):
                raise UserError(f"{k}={v!r} would need shell quoting, which FlagScale does not do; "
                                "use a --runtime-dir path of letters, digits and / . _ - only")
        main = {
            "defaults": ["_self_", {"serve": SERVE_GROUP}],
            "experiment": {
                "exp_name": "tuner",
                "exp_dir": str(self.outputs),
                "task": {"type": "serve"},
                # one node, vLLM's own OpenAI server (run_inference_engine.py): no Ray
                "runner": {"deploy": {"use_fs_serve": False}},
                "envs": dict(envs),
            },
            "action": "run",
            "hydra": {"run": {"dir": "${experiment.exp_dir}/hydra"}},
        }
        serve = [{"serve_id": SERVE_ID, "engine": "vllm", "engine_args": dict(self.engine_args)}]
        return {self.path: main, self.root / "conf" / "serve" / f"{SERVE_GROUP}.yaml": serve}

    def write(self, envs: dict[str, str]) -> None:
        import yaml

        docs = self.documents(envs)
        for path, doc in docs.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text("# written by `tuner serve --engine flagscale`; FlagScale's schema "
                           "(examples/minicpm_o_2.6/conf)\n" + yaml.safe_dump(doc, sort_keys=False))
            tmp.replace(path)
