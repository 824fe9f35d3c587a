"""A bench report rebuilt from a bench folder whose run never summarised.

`tuner bench` writes modes.json after every engine, and every engine (in-process or served) its
result.json in its own folder, but the report only at the end: a bench killed by a call's time limit (session 16: two
three-round H200 benches, each in its last engine after 5 of 6 engines) left ~8 minutes of engines
on disk and no report. This reads them back: the tags and batches from modes.json, the
teacher-forced logprobs from each result.json (modes.json leaves them out), and summarises as the
bench would have; an engine folder without a finished entry is named among the errors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuner.errors import UserError
from tuner.serving.bench import folder_name, report_of

UNFINISHED = "no result: the bench ended before this engine finished"


def _unfinished_name(folder: str) -> str:
    """How the errors name an engine folder's run: `tuned`, `tuned (round 3)`, `flagscale/tuned`
    (the inverse of bench.folder_name; engine and mode names hold no '-')."""
    name, dot, n = folder.rpartition(".r")
    if not (dot and n.isdigit()):
        name, n = folder, "1"
    label = name.replace("-", "/", 1)
    return label if n == "1" else f"{label} (round {n})"


def read_rounds(out_dir: str | Path) -> tuple[list[list[dict]], dict[str, str]]:
    """Each round's finished engines as the bench held them (logprobs put back), in round order,
    and the engines that started but never finished ({"tuned (round 3)": UNFINISHED})."""
    out = Path(out_dir)
    modes = out / "modes.json"
    if not out.is_dir():
        raise UserError(f"{out} is not a folder: give the --out-dir of a `tuner bench` run")
    if not modes.is_file():
        raise UserError(f"no modes.json in {out}: not a `tuner bench` folder, or no engine finished there")
    try:
        entries = json.loads(modes.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{modes} is not JSON ({e.msg} at line {e.lineno}): written while the bench was killed?")
    rounds: dict[int, list[dict]] = {}
    seen = set()
    for entry in entries:
        r = dict(entry)
        folder = out / folder_name(r.get("label", r["mode"]), int(r.get("round", 1)))
        seen.add(folder.name)
        if "error" not in r:
            result = folder / "result.json"
            try:
                raw = json.loads(result.read_text()) if result.is_file() else {}
            except json.JSONDecodeError as e:  # modes.json lists an engine only after its result was read
                raise UserError(f"{result} is not JSON ({e.msg} at line {e.lineno}); modes.json lists it as finished")
            # without them (an older folder) agreement has no positions and reads "not measured"
            r["prompt_logprobs"] = raw.get("prompt_logprobs", [])
        rounds.setdefault(int(r.get("round", 1)), []).append(r)
    unfinished = {}
    for folder in sorted(p for p in out.iterdir() if p.is_dir() and (p / "engine.log").is_file()):
        if folder.name not in seen:
            unfinished[_unfinished_name(folder.name)] = UNFINISHED
    return [rounds[n] for n in sorted(rounds)], unfinished


def recover(out_dir: str | Path) -> dict[str, Any]:
    """The report `tuner bench` would have printed for the engines that finished in out_dir."""
    rounds, unfinished = read_rounds(out_dir)
    if not rounds:
        raise UserError(f"{Path(out_dir) / 'modes.json'} lists no engine")
    report = report_of(rounds)
    report["errors"].update(unfinished)
    report["recovered_from"] = str(out_dir)
    return report
