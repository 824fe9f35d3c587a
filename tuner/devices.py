"""Device and dtype names, once for the whole project.

tuner names dtypes bf16 / fp16 / fp32 (the kernels', the CLI's and the database's names);
torch's own names (bfloat16 / float16 / float32) are accepted as aliases where a record or a
user may give them. torch is imported inside the functions only: importing this module stays
light (kernels/ import it, and so may anything that must not pull torch in).
"""

from __future__ import annotations

import os

from tuner.errors import UserError

DTYPES = ("bf16", "fp16", "fp32")
# tuner's name -> torch's name (the attribute of the torch module, of triton.language too)
TORCH_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# every accepted name -> tuner's name: tuner's own and torch's ("bfloat16" -> "bf16")
DTYPE_ALIASES = {name: short for short, torch_name in TORCH_NAMES.items() for name in (short, torch_name)}
ELEM_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}

DEVICES = ("auto", "cuda", "cpu")


def torch_dtype(name: str):
    """The torch.dtype of a dtype name, tuner's or torch's own ('bf16' or 'bfloat16');
    KeyError(name) for any other."""
    import torch

    return getattr(torch, TORCH_NAMES[DTYPE_ALIASES[name]])


def resolve_device(device: str, interpreter: bool = True) -> str:
    """'auto' -> cuda when a GPU is visible, else cpu; UserError for an unknown device or for
    cuda without a GPU. With `interpreter`, cpu also sets TRITON_INTERPRET=1: Triton kernels
    launched on CPU tensors only run in Triton's interpreter (tuning needs it, profiling not)."""
    import torch

    if device not in DEVICES:
        raise UserError(f"unknown device {device!r}; use cuda, cpu or auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda needs an NVIDIA GPU, and none is visible on this machine")
    if interpreter and device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        os.environ["TRITON_INTERPRET"] = "1"
    return device
