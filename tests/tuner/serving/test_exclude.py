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
