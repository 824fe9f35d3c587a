"""--exclude names against the FlagGems installed here (flag-gems 5.0.2, .ci/nodeps.txt): its
registration table read from the package's source."""
from tuner.serving.exclude import exclusion_error, flaggems_names, unknown_exclusions


def test_the_installed_table_names_functions_and_aten_ops():
    names = flaggems_names()
    assert names is not None and len(names) > 300
    # function names (what enable(unused=) takes) and aten op names without the overload
    assert {"mm", "addmm", "addmm_out", "bmm", "mul", "layer_norm", "bitwise_or_scalar_", "__ior__"} <= names


def test_unknown_names_are_those_no_overload_of_matches():
    names = flaggems_names()
    assert unknown_exclusions(["addmm", "mul_out", "mm_", "admm", "softmaxx"], names) == ["admm", "softmaxx"]
    assert exclusion_error(["addmm", "mul"]) is None
    why = exclusion_error(["admm", "zzzz"])
    assert "admm (did you mean addmm" in why and "; zzzz." in why and "ignore them" in why


def test_every_name_the_gpu_checks_stored_is_known():
    """The exclude lists `tuner check` stored on the H100 / H200 (function names as FlagGems
    registered them, results/**.json) all pass: the table read from source names what enable() takes."""
    import json
    from pathlib import Path

    stored: set[str] = set()

    def walk(o):
        if isinstance(o, dict):
            for k, v in o.items():
                if k in ("exclude", "exclude_ops") and isinstance(v, list):
                    stored.update(x for x in v if isinstance(x, str))
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    for f in (Path(__file__).resolve().parents[3] / "tuner/benchmarks/results").rglob("*.json"):
        try:
            walk(json.loads(f.read_text()))
        except (ValueError, UnicodeDecodeError):
            continue
    assert {"addmm", "layer_norm", "weight_norm_interface", "pow_tensor_scalar"} <= stored
    assert unknown_exclusions(sorted(stored), flaggems_names()) == []
