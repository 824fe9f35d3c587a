"""The config memo against the real flag_gems package (imported without a GPU)."""
from tests.conftest import needs_flag_gems, result, run_py


@needs_flag_gems
def test_memo_serves_hits_from_memory_and_misses_from_sql(fg_env):
    out = run_py("""
        import json, time, triton
        from tuner.inject.flaggems_memo import install_config_memo
        from tuner.inject.flaggems_cache import locate_mm_tuners

        cache = locate_mm_tuners()["fg_general"].cache  # a real LibTuner's SQL ConfigCache
        key, other = (32, 4608, 3584, "torch.bfloat16"), (64, 4608, 3584, "torch.bfloat16")
        cache[key] = triton.Config({"BLOCK_M": 32}, num_warps=4, num_stages=3)

        def per_call_us(n=300):
            t0 = time.perf_counter()
            for _ in range(n):
                assert key in cache and cache[key].kwargs["BLOCK_M"] == 32
            return (time.perf_counter() - t0) / n * 1e6

        sql_us = per_call_us()
        undo = install_config_memo()
        assert install_config_memo() is undo  # once per process
        memo_us = per_call_us()
        # a row changed behind the memo's back: a hit keeps the remembered config ...
        cache.model.put_config(cache.table_name, key, triton.Config({"BLOCK_M": 64}, num_warps=4, num_stages=3))
        kept = cache[key].kwargs["BLOCK_M"]
        # ... a miss goes to SQL and finds a row another process wrote
        assert other not in cache
        cache.model.put_config(cache.table_name, other, triton.Config({"BLOCK_M": 16}, num_warps=4, num_stages=3))
        found = cache[other].kwargs["BLOCK_M"]
        # a write goes to SQL and to memory
        cache[other] = triton.Config({"BLOCK_M": 128}, num_warps=8, num_stages=3)
        written = cache[other].kwargs["BLOCK_M"], cache.model.get_config(cache.table_name, other).kwargs["BLOCK_M"]
        undo()
        after_undo = cache[key].kwargs["BLOCK_M"]
        print("RESULT " + json.dumps([sql_us, memo_us, kept, found, written, after_undo]))
    """, fg_env)
    sql_us, memo_us, kept, found, written, after_undo = result(out)
    assert memo_us * 20 < sql_us, (sql_us, memo_us)
    assert kept == 32 and found == 16 and written == [128, 128] and after_undo == 64
