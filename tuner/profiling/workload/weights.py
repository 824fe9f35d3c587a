"""Load real MiniCPM-o 2.6 weights from a local folder of *.safetensors files.

Everything is checked (names present, shapes equal) before the first tensor is copied, so a
failed load leaves the random weights untouched rather than a half-loaded model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from .errors import WorkloadError


def _index(folder: Path) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """tensor name -> (file, shape), read from the safetensors headers only."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise WorkloadError(f"no *.safetensors files in weights folder {folder}.")
    index: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    index[name] = (path, tuple(f.get_slice(name).get_shape()))
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise WorkloadError(f"cannot read weights file {path}: {exc}.") from exc
    return index


def load_weights(model: torch.nn.Module, folder: str | Path) -> dict:
    """Copy the checkpoint's tensors into `model` (cast to its dtype, on its device).

    Tensors in the folder that the model does not have (e.g. the TTS vocoder, components not
    built) are ignored and counted. Returns {"loaded": n, "ignored": n, "files": n}.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise WorkloadError(f"weights folder {folder} does not exist or is not a directory.")
    index = _index(folder)
    targets = model.state_dict(keep_vars=True)

    missing = [name for name in targets if name not in index]
    if missing:
        raise WorkloadError(
            f"checkpoint in {folder} is incomplete: {len(missing)} of {len(targets)} tensors are "
            f"missing, e.g. {', '.join(missing[:3])}."
        )
    wrong = [(n, index[n][1], tuple(t.shape)) for n, t in targets.items() if index[n][1] != tuple(t.shape)]
    if wrong:
        name, got, want = wrong[0]
        scale = getattr(getattr(model, "dims", None), "scale", None)
        built = f" (built at scale {scale})" if scale is not None else ""
        raise WorkloadError(
            f"checkpoint in {folder} does not fit this model{built}: {len(wrong)} tensors have "
            f"the wrong shape, e.g. {name} is {list(got)} where the model expects {list(want)}."
        )

    by_file: dict[Path, list[str]] = {}
    for name in targets:
        by_file.setdefault(index[name][0], []).append(name)
    with torch.no_grad():
        for path, names in by_file.items():
            with safe_open(str(path), framework="pt") as f:
                for name in names:
                    dest = targets[name]
                    dest.copy_(f.get_tensor(name).to(device=dest.device, dtype=dest.dtype))
    files = {path for path, _ in index.values()}
    return {"loaded": len(targets), "ignored": len(index) - len(targets), "files": len(files)}
