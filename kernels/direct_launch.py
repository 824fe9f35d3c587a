"""Launch a Triton kernel's compiled binary again without Triton's JIT dispatch.

Triton's `JITFunction.run` binds and specialises every argument, looks the kernel up, checks the
globals it read and builds launch metadata on every call. On the eager path (vLLM's prefill runs
outside CUDA graphs) that is host time each GEMM pays, and a tuned engine's GPU waited on late
GEMM launches (session 13's engine profile). A call whose grid, non-tensor arguments, tensor dtypes
and 16-byte alignments and options were all seen before is the same specialisation Triton compiled
then, so it runs that binary through the same launcher.

Measured on the H200 host (session 14, results/gemm_h200/session14/launch_call3, idle GPU, the two
ways alternated 4 times, two runs; the direct side's best also over one earlier pass): the
persistent kernel 39.2 / 35.5 us a call direct against 51.1 / 47.9 through Triton's dispatch,
split-K 35.9 / 36.1 against 46.3 / 45.6; cheaper in all 14 pairs (cuBLAS 17.9 / 14.9).
Unalternated passes of one way had differed by up to 22 us. In the engine no effect is shown: a
routed aten::mm took 124 us of host time a call with it and 172 without, but in two engine
processes, and two native engines took 89 and 54 us on cuBLAS.

Only on the Triton release whose launcher signature this was checked against (3.6, the GPU host's);
elsewhere, under the interpreter and while a launch hook is set (a profiler such as proton reads
launch metadata), every call takes Triton's own path. TUNER_DIRECT_LAUNCH=0 in the environment (or
`ENABLED = False`) turns it off: host_cost.py times both ways, an engine can be served both ways.
"""

import os

import torch
import triton
from triton import knobs
from triton.runtime.driver import driver

# the CompiledKernel.run(grid x3, stream, function, packed_metadata, launch_metadata, enter/exit
# hooks, *every parameter) call below is Triton 3.6's own (runtime/jit.py JITFunction.run)
CHECKED_RELEASES = ("3.6.",)
ENABLED = os.environ.get("TUNER_DIRECT_LAUNCH", "1") != "0"
MAX_ENTRIES = 4096  # distinct shapes kept per kernel (an engine's prefill chunks vary M); then start over
_ALIGN = 16  # Triton specialises pointers on 16-byte alignment (integers: exact values are keyed)


def cdiv(a: int, b: int) -> int:
    """Ceiling division on the host: `triton.cdiv` is a constexpr function whose host call unwraps
    its arguments (num_programs' two calls were 12 of the persistent launch's 103 us under
    cProfile on the H200 host, session 14)."""
    return -(-a // b)


def _arg_key(arg):
    """What Triton's specialisation can depend on in one argument, or raise TypeError for a kind
    this cache does not know (the call then goes through Triton). Tensors are tested first: the
    key is built on every launch."""
    if isinstance(arg, torch.Tensor):
        return arg.dtype, arg.data_ptr() % _ALIGN == 0
    kind = type(arg)
    if kind is int or kind is float or kind is bool or arg is None:
        return kind, arg  # exact: covers == 1, divisibility by 16 and i32 vs i64
    if kind.__name__ == "TensorDescriptor":
        return ("desc", arg.base.dtype, arg.base.data_ptr() % _ALIGN == 0, tuple(arg.shape), tuple(arg.strides),
                tuple(arg.block_shape), arg.padding)
    raise TypeError(f"no launch key for {kind.__name__}")


def hooked(hook) -> bool:
    """Whether a Triton launch hook is set: Triton 3.6's knobs hold an empty HookChain, not None."""
    return hook is not None and bool(getattr(hook, "calls", True))


class DirectLaunch:
    """`DirectLaunch(kernel)[grid](*args, **constexprs_and_options)`, as `kernel[grid](...)`: the
    first call of a specialisation goes through Triton, the later ones straight to its binary.
    Parameters after the positional ones must be given by name (no defaults are filled in)."""

    def __init__(self, fn):
        self.fn = fn
        self.compiled: dict = {}
        self.direct_calls = 0  # launches that skipped Triton's dispatch (tests read it)
        jit = getattr(triton.runtime, "JITFunction", None)
        self._usable = (jit is not None and isinstance(fn, jit)
                        and triton.__version__.startswith(CHECKED_RELEASES))

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launch(grid, args, kwargs)

    def launch(self, grid, args: tuple, kwargs: dict):
        if not (ENABLED and self._usable) or hooked(knobs.runtime.launch_enter_hook) \
                or hooked(knobs.runtime.launch_exit_hook):
            return self.fn[grid](*args, **kwargs)
        device = driver.active.get_current_device()
        try:
            key = (device, tuple(grid), tuple(map(_arg_key, args)), tuple(kwargs.items()))
        except TypeError:
            return self.fn[grid](*args, **kwargs)
        entry = self.compiled.get(key)
        if entry is None:
            kernel = self.fn[grid](*args, **kwargs)
            if hasattr(kernel, "result"):  # an asynchronous compile's future
                kernel = kernel.result()
            names = self.fn.arg_names[len(args):]
            if kernel is not None and all(n in kwargs for n in names):
                if len(self.compiled) >= MAX_ENTRIES:
                    self.compiled.clear()
                self.compiled[key] = (kernel, names)
            return kernel
        kernel, names = entry
        grid_x, grid_y, grid_z = (*grid, 1, 1)[:3]
        stream = driver.active.get_current_stream(device)
        kernel.run(grid_x, grid_y, grid_z, stream, kernel.function, kernel.packed_metadata, None, None, None,
                   *args, *(kwargs[n] for n in names))
        self.direct_calls += 1
        return kernel
