"""The contract every tunable kernel module fulfils.

A kernel module owns one op: its search space, the constraints checked before compiling, how to
build inputs and the reference, how to run one config, what the runtime picks untuned, and how
its winner is exported. It never talks to the database or to Optuna: the flows in `tuner/` do.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from tuner import devices
from tuner.devices import DTYPES

Config = dict[str, Any]
Key = tuple[int, ...]


class KernelInputError(ValueError):
    """A user-supplied key or dtype that this kernel cannot take."""


def next_pow2(x: int) -> int:
    """The smallest power of two >= x (1 for x <= 1): block sizes are compared with it."""
    return 1 << max(0, math.ceil(math.log2(max(1, x))))


def torch_dtype(name: str):
    """The torch.dtype of one of tuner's dtype names (torch's own names are not kernel dtypes)."""
    if name not in DTYPES:
        raise KernelInputError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return devices.torch_dtype(name)


@dataclass
class Inputs:
    """Input sets that rotate between timed calls (so weights are not read from L2) and the
    output buffer of each set. `ref` is the high-precision reference of set 0."""

    sets: list[tuple]
    outs: list[Any]
    ref: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Coverage:
    """What a tunable op covers, declared by its kernel module as `COVERAGE` (plain data: reading
    it imports neither torch nor flag_gems). The profiler, `tune --from-profile`, `serve` and the
    serve-time plugin read it instead of keeping per-op tables of their own.

    aten_ops: the profiled ops whose rows this op tunes, each with the form of its operands, which
        says how a profile row's shapes give its key (tuner.profiling.profiler.ROW_FORMS): "mm" (A, B),
        "addmm" (bias, A, B), "linear" (x, W[N, K], bias), "matmul" (a, b), "bmm" (A, B),
        "baddbmm" (bias, A, B), "bhld" / "blhd" (attention's q, k as (B, H, L, D) / (B, L, H, D)).
    op_patterns: lower-case parts of the names of other profiled ops it tunes (vLLM's custom ops),
        tried after every declared aten op name of every op.
    flaggems_op: the FlagGems op (the name `flag_gems.enable(unused=...)` takes) that this op's tuned
        kernel is, one to one: `serve` leaves it to PyTorch when every tuned key is still slower than
        native. None when the tuned kernel is not exactly one FlagGems op.
    profile_keys: `tune --from-profile` gives this op's keys: M,N,K of its batch-1 rows (GEMM forms).
    no_profile_keys: why `tune --from-profile` cannot, where that needs saying (the refusal says it).
    injectors: the injectors (tuner.inject.registry) that put its tuned configs to use at serve time.
    no_injector: why none does, where none does yet (its winners are measured, not served).
    """

    aten_ops: Mapping[str, str] = field(default_factory=dict)
    op_patterns: tuple[str, ...] = ()
    flaggems_op: str | None = None
    profile_keys: bool = False
    no_profile_keys: str | None = None
    injectors: tuple[str, ...] = ()
    no_injector: str | None = None

    def __post_init__(self) -> None:
        if self.profile_keys and self.no_profile_keys:
            raise ValueError("an op either gives keys from a profile or says why not, not both")
        if bool(self.injectors) == bool(self.no_injector):
            raise ValueError("an op names the injectors that serve its winners or says why none does, one of both")


# A runner takes one input set and its output buffer, and writes the result into the buffer.
Runner = Callable[[tuple, Any], Any]

# precompile runs in helper processes, one call per candidate: keep one key's inputs around
_PRECOMPILE_INPUTS: dict = {}


def precompile_by_running(kernel: "Kernel", key: Key, config: Config, dtype: str, device: str) -> None:
    """Compile a GPU-only kernel by running it once on the real shapes (Triton specialises on
    sizes and strides); the inputs of the last key are kept for the next candidate."""
    if device != "cuda":
        return
    import torch

    if (kernel.name, key, dtype) not in _PRECOMPILE_INPUTS:
        _PRECOMPILE_INPUTS.clear()
        _PRECOMPILE_INPUTS[kernel.name, key, dtype] = kernel.make_inputs(key, dtype, device, 1, seed=0)
    inputs = _PRECOMPILE_INPUTS[kernel.name, key, dtype]
    kernel.runner(key, config, dtype, device)(inputs.sets[0], inputs.outs[0])
    torch.cuda.synchronize()


def jit_source_hash(module_name: str) -> str:
    """sha256 of the Triton functions a kernel module of tuner's lists in KERNEL_FUNCTIONS: the
    identity of its tuned timings (an edit of the launch code keeps them, a kernel edit does not),
    the same under TRITON_INTERPRET=1 as on the GPU."""
    import importlib

    mod = importlib.import_module(module_name)
    text = "".join(inspect.getsource(getattr(f, "fn", f)) for f in mod.KERNEL_FUNCTIONS)
    return hashlib.sha256(text.encode()).hexdigest()


class Kernel(ABC):
    name: str = ""
    description: str = ""
    key_names: tuple[str, ...] = ()
    key_help: dict[str, str] = {}  # what each key field means (`tuner ops` prints it)
    dtypes: tuple[str, ...] = DTYPES
    # where the op can run: "cpu" means a Triton kernel of the project's own, in the interpreter
    devices: tuple[str, ...] = ("cuda", "cpu")
    # modules whose source defines the kernels measured; hashed into every stored result
    source_modules: tuple[str, ...] = ()

    # ---- keys -------------------------------------------------------------------------
    def parse_key(self, text: str) -> Key:
        """'1,4608,3584' -> (1, 4608, 3584); a clear KernelInputError for anything else."""
        parts = [p.strip() for p in text.replace("x", ",").split(",") if p.strip()]
        if len(parts) != len(self.key_names):
            raise KernelInputError(
                f"shape {text!r} for op {self.name} needs {len(self.key_names)} integers "
                f"{','.join(self.key_names)}"
            )
        try:
            key = tuple(int(p) for p in parts)
        except ValueError:
            raise KernelInputError(f"shape {text!r} must be integers {','.join(self.key_names)}") from None
        if any(v <= 0 for v in key):
            raise KernelInputError(f"shape {text!r} must be positive integers")
        return key

    def key_dict(self, key: Key) -> dict[str, int]:
        return dict(zip(self.key_names, key))

    def presets(self) -> Mapping[str, list[Key]]:
        return {}

    def default_dtype(self, device: str) -> str:
        """bf16 on the GPU (what vLLM serves MiniCPM-o in), fp16 on the CPU (the interpreter casts to
        bf16 by truncation); an op without those (scaled_mm: fp8 only) takes its first dtype."""
        usual = "bf16" if device == "cuda" else "fp16"
        return usual if usual in self.dtypes else self.dtypes[0]

    # ---- search space -------------------------------------------------------------------
    @abstractmethod
    def space(self, key: Key, dtype: str, device: str) -> dict[str, tuple]:
        """Every parameter with its choices; 'variant' picks the kernel implementation."""

    def grid_spaces(self, key: Key, dtype: str, device: str) -> list[dict[str, tuple]]:
        """The space as parts whose products hold, canonicalised, every canonical config of the
        whole product: an op whose variants ignore each other's knobs cuts it by variant, those
        knobs held at one value, so that enumerating every config (the grid sampler, a stuck
        search) does not walk combinations that canonicalise to the same config."""
        return [self.space(key, dtype, device)]

    def canonical(self, key: Key, config: Config) -> Config:
        """Normalise parameters that cannot matter for this key, so equal programs compare equal."""
        return dict(config)

    @abstractmethod
    def invalid_reason(self, key: Key, config: Config, dtype: str, device: str, arch: int = 9) -> str | None:
        """Why this config cannot run (checked before compiling), or None. `arch` is the GPU's
        compute capability major (shared-memory limits differ by architecture)."""

    # ---- running ------------------------------------------------------------------------
    @abstractmethod
    def make_inputs(self, key: Key, dtype: str, device: str, n_sets: int, seed: int) -> Inputs: ...

    @abstractmethod
    def bytes_per_set(self, key: Key, dtype: str) -> int:
        """Bytes of the inputs one set reads (decides how many sets defeat the L2 cache)."""

    @abstractmethod
    def reference(self, args: tuple) -> Any:
        """High-precision reference for one input set."""

    @abstractmethod
    def runner(self, key: Key, config: Config, dtype: str, device: str) -> Runner:
        """A callable running `config` on one input set; raises if the config cannot run."""

    def precompile(self, key: Key, config: Config, dtype: str, device: str) -> None:
        """Compile `config` without running it (in a helper process); default: nothing."""

    def baselines(self, key: Key, dtype: str, device: str) -> dict[str, Runner]:
        """Runners for the references every result is compared with (native, untuned runtime)."""
        return {}

    def untuned_configs(self, key: Key, dtype: str, device: str) -> list[Config]:
        """What the runtime would pick untuned, as configs of this space: the warm start."""
        return []

    def starting_configs(self, key: Key, dtype: str, device: str) -> list[Config]:
        """Configs known to do well on this kind of key, tried early beside the untuned pick (for a
        variant the runtime never picks, so a short search still measures it); invalid ones are
        dropped when they are queued."""
        return []

    def tolerance(self, dtype: str) -> float:
        """Largest accepted ||out - ref|| / ||ref||."""
        return {"bf16": 1e-2, "fp16": 5e-3, "fp32": 1e-3}[dtype]

    def elementwise_tolerance(self, dtype: str) -> float:
        """Largest accepted max |out - ref| / max |ref|: the bound no single element may break. The
        reference's own scale carries K (an output element grows like sqrt(K)), so one number per
        dtype serves every key; it is far above rounding (bf16 keeps 8 bits: ~0.4% of an element)
        and far below a wrong tile (a zeroed 16x16 tile of a 64x64 product passed the relative
        check alone: 0.6% of the norm, yet elements off by half the largest)."""
        return {"bf16": 5e-2, "fp16": 2e-2, "fp32": 2e-2}[dtype]

    def flops(self, key: Key) -> float:
        return 0.0

    # ---- identity -----------------------------------------------------------------------
    def source_hash(self, config: Config | None = None) -> str:
        """Hash of the source that defines the kernel `config` runs (every module of the op when
        no config is given). Injection refuses a result whose hash differs from the running one."""
        import importlib

        h = hashlib.sha256()
        for mod_name in (type(self).__module__, *self.source_modules):
            try:
                mod = importlib.import_module(mod_name)
                h.update(inspect.getsource(mod).encode())
            except Exception:  # a runtime module that cannot import here (flag_gems on CPU)
                h.update(f"<unavailable:{mod_name}>".encode())
        return h.hexdigest()[:16]
