"""route_headroom on recorded data: the H200's run 9 engine profiles (native and tuned at
--route-within 1.03) and the session 13 database that tuned engine served."""
import lzma
import subprocess
import sys
from pathlib import Path

import pytest

from tuner.benchmarks import route_headroom as rh

REPO = Path(__file__).resolve().parents[3]
RESULTS = REPO / "tuner" / "benchmarks" / "results"
PROFILES = RESULTS / "vllm" / "h200_run9" / "profiles_native_tuned_w1.03.json"
DB = RESULTS / "gemm_h200" / "session13" / "gemm.db.xz"


@pytest.fixture(scope="module")
def db_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("headroom") / "gemm.db"
    path.write_bytes(lzma.decompress(DB.read_bytes()))
    return path


def _run(*args):
    return subprocess.run([sys.executable, "-m", "tuner.benchmarks.route_headroom", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_run_9s_eager_gemms_bound_what_routing_could_save(db_path):
    import json

    h = rh.headroom(json.loads(PROFILES.read_text()), rh.best_ratios(f"sqlite:///{db_path}"), 1.05)
    gate_up = h["rows"][0]
    assert gate_up["key"] == ("mm", 4096, 37888, 3584, "bf16")  # the largest eager key
    assert gate_up["db_ratio"] == pytest.approx(1.028, abs=5e-4)  # recorded slower than cuBLAS: saves nothing
    assert gate_up["oracle_saved_ms"] == 0
    assert gate_up["tuned_ms"] / gate_up["native_ms"] == pytest.approx(1.031, abs=5e-4)  # run 9's README
    down = h["rows"][1]
    assert down["key"][:4] == ("mm", 4096, 3584, 18944)
    assert down["oracle_saved_ms"] == pytest.approx(down["native_ms"] * (1 - down["db_ratio"]))
    assert h["oracle_saved_ms"] == pytest.approx(sum(r["oracle_saved_ms"] for r in h["rows"]))
    assert 15 < h["oracle_saved_ms"] < 25  # 19.1 ms of 1048.9: far from the 49.9 that 1.05x needs
    assert h["needed_ms"] == pytest.approx(h["kernel_ms"] * (1 - 1 / 1.05))
    # keys the tuned engine's prefill chunks did not hit (their M varies per run) have no tuned time
    assert any(r["tuned_ms"] is None for r in h["rows"])


def test_the_report_fits_80_columns_and_bad_input_is_refused(db_path, tmp_path):
    r = _run(PROFILES, db_path)
    assert r.returncode == 0, r.stderr
    assert max(len(line) for line in r.stdout.splitlines()) <= 80
    assert "mm 4096,37888,3584" in r.stdout and "1.05x needs" in r.stdout
    assert "needs" in _run(PROFILES, db_path, "--target", "1.10").stdout
    bad = _run(PROFILES, db_path, "--target", "0.9")
    assert bad.returncode == 2 and "--target must be above 1" in bad.stderr
    missing = _run(tmp_path / "none.json", db_path)
    assert missing.returncode == 2 and "no profiles file" in missing.stderr
    (tmp_path / "p.json").write_text('{"tuned": {}}')
    no_native = _run(tmp_path / "p.json", db_path)
    assert no_native.returncode == 2 and "holds no native engine profile" in no_native.stderr
    missing_db = _run(PROFILES, tmp_path / "none.db")
    assert missing_db.returncode == 2 and "no tuner database at" in missing_db.stderr
    assert not (tmp_path / "none.db").exists()  # read only: nothing created


def test_run_10s_profiles_say_which_keys_ran_the_same_kernels(tmp_path):
    """Run 10's profiles name each key's kernels: 19 keys ran the same cuBLAS kernels in both engines
    and took 1.2% longer in the tuned one (o at M=4096 2.4%): the engines' own gap beside "x eng"."""
    import json

    db = tmp_path / "s16.db"
    db.write_bytes(lzma.decompress((RESULTS / "gemm_h200" / "session16" / "gemm.db.xz").read_bytes()))
    profiles = json.loads((RESULTS / "vllm" / "h200_run10" / "profiles_b.json").read_text())
    h = rh.headroom(profiles, rh.best_ratios(f"sqlite:///{db}"), 1.05)
    by_key = {r["key"][:4]: r for r in h["rows"]}
    assert by_key[("mm", 4096, 37888, 3584)]["same_kernels"] is False  # tuner's persistent kernel vs cuBLAS
    assert by_key[("mm", 4096, 37888, 3584)]["db_ratio"] == pytest.approx(0.992, abs=5e-4)
    assert by_key[("mm", 4096, 3584, 3584)]["same_kernels"] is True  # o stays native eagerly
    same = [r for r in h["rows"] if r["same_kernels"]]
    assert h["same_kernel_keys"] == len(same) and h["same_kernel_ratio"] == pytest.approx(
        sum(r["tuned_ms"] for r in same) / sum(r["native_ms"] for r in same))
    assert h["same_kernel_keys"] == 19 and h["same_kernel_ratio"] == pytest.approx(1.012, abs=5e-4)
    o = by_key[("mm", 4096, 3584, 3584)]
    assert o["tuned_ms"] / o["native_ms"] == pytest.approx(1.024, abs=5e-4)
    text = rh.lines(h)
    assert any(line.startswith("the same kernels in both engines") for line in text) and max(map(len, text)) <= 80
    # run 9's profiles predate the kernel names: no column value, no line
    old = rh.headroom(json.loads(PROFILES.read_text()), {}, 1.05)
    assert {r["same_kernels"] for r in old["rows"]} == {None} and old["same_kernel_ratio"] is None
    assert not any(line.startswith("the same kernels") for line in rh.lines(old))


def test_run_11s_prefill_gemms_compare_per_token_row_across_other_chunk_splits(tmp_path):
    """Run 11's engines cut the batch's tail differently (native 3305 + 1024 tokens, tuned 2297 +
    2048): no per-key row compares those chunks, a token row of each layer does."""
    import json

    profiles = json.loads((RESULTS / "vllm" / "h200_run11" / "profiles.json").read_text())
    h = rh.headroom(profiles, {}, 1.05)
    gate_up = next(r for r in h["per_row"] if r["layer"] == ("mm", 37888, 3584, "bf16"))

    def rows_us(mode):
        keys = [g for g in profiles[mode]["gemm_keys"] if g["place"] == "eager" and g["op"] == "mm"
                and (g["N"], g["K"]) == (37888, 3584) and g["M"] >= 512]
        return sum(g["M"] * g["calls"] for g in keys), sum(g["gpu_us"] for g in keys), {g["M"] for g in keys}

    n_rows, n_us, n_ms = rows_us("native")
    t_rows, t_us, t_ms = rows_us("tuned")
    assert n_ms == {4096, 3305, 1024} and t_ms == {4096, 2297, 2048}  # the splits differ
    assert abs(t_rows / n_rows - 1) < 1e-3  # the same batch
    assert gate_up["native_rows"] == n_rows and gate_up["tuned_rows"] == t_rows
    assert gate_up["ratio"] == pytest.approx((t_us / t_rows) / (n_us / n_rows))
    assert 1.0 < gate_up["ratio"] < 1.05  # tuner's 4096 config, the tails on cuBLAS (PREFILL_M)
    text = rh.lines(h)
    assert any(line.startswith("prefill GEMMs per token row (M >= 512)") for line in text)
    assert any(line.split()[:4] == ["mm", "37888,3584", str(n_rows), str(t_rows)] for line in text)
    assert max(map(len, text)) <= 80
    # decode sizes are left out, and without a tuned profile there is no such table
    assert rh.prefill_rows({"gemm_keys": [
        {"op": "mm", "M": 64, "N": 8, "K": 8, "dtype": "bf16", "place": "eager", "calls": 3, "gpu_us": 9.0},
        {"op": "mm", "M": 600, "N": 8, "K": 8, "dtype": "bf16", "place": "graph", "calls": 3, "gpu_us": 9.0},
        {"op": "mm", "M": 600, "N": 8, "K": 8, "dtype": "bf16", "place": "eager", "calls": 2, "gpu_us": 6.0},
    ]}, 512) == {("mm", 8, 8, "bf16"): (1200, 6.0)}
    assert rh.headroom({"native": profiles["native"]}, {}, 1.05)["per_row"] == []
