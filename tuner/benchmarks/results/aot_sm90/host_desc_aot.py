import sys, json, re, time
sys.path.insert(0, ".")  # run from the repository root
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from kernels.persistent_host_mm import persistent_host_mm_kernel as hk
from kernels.persistent_mm import persistent_mm_kernel as dk

def compile_one(cfg, host=True, b_nk=True, dt="bf16", bias=False):
    bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
    cb = bn // 2 if cfg.get("EPILOGUE_SUBTILE") else bn
    const = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=cfg.get("GROUP_M", 8), B_NK=b_nk, HAS_BIAS=bias,
                 IEEE=dt == "fp32", WARP_SPECIALIZE=bool(cfg.get("WARP_SPECIALIZE")), FLATTEN=bool(cfg.get("FLATTEN")),
                 EPILOGUE_SUBTILE=bool(cfg.get("EPILOGUE_SUBTILE")))
    if host:
        bshape = f"[{bn}, {bk}]" if b_nk else f"[{bk}, {bn}]"
        types = {"a_desc": f"tensordesc<{dt}[{bm}, {bk}]>", "b_desc": f"tensordesc<{dt}{bshape}>",
                 "c_desc": f"tensordesc<{dt}[{bm}, {cb}]>", "BIAS": f"*{dt}", "M": "i32", "N": "i32", "K": "i32",
                 "NUM_PROGRAMS": "i32"}
        fn = hk
    else:
        types = {"A": f"*{dt}", "B": f"*{dt}", "C": f"*{dt}", "BIAS": f"*{dt}", "M": "i32", "N": "i32", "K": "i32",
                 "stride_am": "i32", "stride_b": "i32", "stride_cm": "i32", "NUM_PROGRAMS": "i32"}
        fn = dk
    sig = {**types, **{k: "constexpr" for k in const}}
    t = time.time()
    try:
        k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const), target=GPUTarget("cuda", 90, 32),
                           options=dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"]))
    except Exception as e:
        return dict(ok=False, err=f"{type(e).__name__}: {str(e)[:600]}", s=round(time.time() - t, 1))
    ptx = k.asm["ptx"]
    md = k.metadata
    return dict(ok=True, s=round(time.time() - t, 1), shared=md.shared, regs=getattr(k, "n_regs", None),
                setmaxnreg="setmaxnreg" in ptx, wgmma="wgmma" in ptx, tensormap_param=".param .align 64 .b8" in ptx or "tensormap" in ptx,
                global_scratch=md.global_scratch_size, tdmeta=md.tensordesc_meta,
                cubin_hash=hash(k.asm["cubin"]))

if __name__ == "__main__":
    cfgs = json.loads(sys.argv[1])
    for c in cfgs:
        host = c.pop("_host", True); b_nk = c.pop("_bnk", True); dt = c.pop("_dt", "bf16"); bias = c.pop("_bias", False)
        print(json.dumps(dict(cfg=c, host=host, b_nk=b_nk, dt=dt, bias=bias, **compile_one(c, host, b_nk, dt, bias))), flush=True)
