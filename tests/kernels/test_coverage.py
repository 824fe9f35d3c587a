"""Every tunable op declares what it covers (kernels.base.Coverage), and what it declares is what
the profiler, `tune --from-profile`, `serve` and the plugin act on."""
import subprocess
import sys
from pathlib import Path

import pytest

from kernels import REGISTRY, Coverage, coverage, coverages
from tuner.errors import UserError
from tuner.inject import registry

REPO = Path(__file__).resolve().parents[2]


def test_every_registered_op_declares_its_coverage():
    assert list(coverages()) == list(REGISTRY)
    assert all(isinstance(c, Coverage) for c in coverages().values())
    assert all(c.aten_ops or c.op_patterns for c in coverages().values())  # each covers something
    assert coverage("not-an-op") is None and coverage(None) is None


def test_every_named_injector_is_registered_and_every_injector_is_named():
    named = [name for c in coverages().values() for name in c.injectors]
    registered = [i.name for i in registry.injectors()]
    assert all(c.injectors or c.no_injector for c in coverages().values())
    assert [op for op, c in coverages().items() if c.no_injector] == ["scaled_mm"]  # fp8: measured, not served
    # an injector may serve several ops (the GEMM router: mm and addmm); none is named twice by one op
    assert set(named) == set(registered)
    assert all(len(set(c.injectors)) == len(c.injectors) for c in coverages().values())


def test_declarations_read_without_torch_or_flag_gems():
    code = ("import sys; from kernels import coverages; from tuner.inject import registry; "
            "c = coverages(); registry.injectors(); "
            "print(sorted(m for m in ('torch', 'flag_gems', 'triton', 'vllm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]


def test_declared_values_are_todays_behaviour():
    from tuner.profiling.hot_keys import profile_key_ops

    assert {op: c.flaggems_op for op, c in coverages().items() if c.flaggems_op} == {"addmm": "addmm", "bmm": "bmm"}
    assert profile_key_ops() == ["mm", "addmm", "scaled_mm"]
    assert [op for op, c in coverages().items() if c.no_profile_keys] == ["bmm"]


@pytest.mark.parametrize("op, message", [
    ("bmm", "--from-profile cannot give bmm keys: a profile row has the shapes but not the operand layout the "
            "key needs; pass them with --shape BATCH,M,N,K,bmm|linear"),
    ("fused_moe", "--from-profile gives keys for mm, addmm, scaled_mm only, not 'fused_moe'"),
    ("attention", "--from-profile gives keys for mm, addmm, scaled_mm only, not 'attention'"),
    ("nope", "--from-profile gives keys for mm, addmm, scaled_mm only, not 'nope'"),
])
def test_from_profile_refusals(op, message):
    from tuner.profiling.hot_keys import keys_from_profile

    with pytest.raises(UserError) as e:
        keys_from_profile("sqlite:///does-not-matter.db", "latest", None, op)
    assert str(e.value) == message


def test_an_op_gives_profile_keys_or_says_why_not():
    with pytest.raises(ValueError):
        Coverage(aten_ops={"aten::mm": "mm"}, profile_keys=True, no_profile_keys="because", injectors=("x",))


@pytest.mark.parametrize("injectors, why", [((), None), (("x",), "because")])
def test_an_op_names_its_injectors_or_says_why_none(injectors, why):
    with pytest.raises(ValueError):
        Coverage(aten_ops={"aten::mm": "mm"}, injectors=injectors, no_injector=why)


def test_every_key_field_is_explained():
    """`tuner ops` explains each key field from the kernel's own key_help."""
    from kernels import REGISTRY, get_kernel

    for op in REGISTRY:
        k = get_kernel(op)
        assert set(k.key_help) == set(k.key_names), op
        assert all(text.strip() for text in k.key_help.values()), op
