import pytest
import torch

from tuner.profiling.workload import WORKLOADS, RequestOptions, WorkloadError, build_model, build_requests

SMALL = RequestOptions(prompt_tokens=16, prefill_batch=2, decode_batches=(1, 3), decode_steps=2,
                       image_slices=2, audio_seconds=45, speech_prompt_tokens=5, speech_tokens=3,
                       speech_context=7)


def _by_name(steps):
    return {s.name: s for s in steps}


def test_text_steps(tiny_model):
    d = tiny_model.dims.llm
    steps = build_requests(tiny_model, "text", SMALL)
    assert [s.name for s in steps] == [
        "text.prefill[b=2,S=16]", "text.decode[b=1,ctx=16,steps=2]", "text.decode[b=3,ctx=16,steps=2]"]
    assert {s.workload for s in steps} == {"text"}
    assert steps[0].run().shape == (2, 1, d.vocab)  # last-position logits only
    tokens = steps[2].run()
    assert tokens.shape == (3, 1) and tokens.dtype == torch.long
    assert torch.equal(steps[2].run(), tokens)  # re-runnable: the cache is rebuilt each time


def test_image_steps(tiny_model):
    v, r = tiny_model.dims.vision, tiny_model.dims.resampler
    steps = _by_name(build_requests(tiny_model, "image", SMALL))
    g2 = v.slice_grid ** 2
    assert steps[f"image.vision[slices=2,patches={g2}]"].run().shape == (2, g2, v.hidden)
    assert steps[f"image.resampler[slices=2,queries={r.queries}]"].run().shape == (2, r.queries, r.embed)


def test_audio_steps_use_whole_windows(tiny_model):
    a = tiny_model.dims.audio
    steps = _by_name(build_requests(tiny_model, "audio", SMALL))  # 45 s -> two 30 s windows
    assert steps[f"audio.whisper[windows=2,frames={a.window_frames}]"].run().shape == (2, a.positions, a.d_model)
    out = steps[f"audio.projector[M={2 * a.positions}]"].run()
    assert out.shape == (2, a.positions // 2, a.llm_hidden)


def test_speech_steps(tiny_model):
    t = tiny_model.dims.tts
    steps = _by_name(build_requests(tiny_model, "speech", SMALL))
    assert steps["speech.prefill[T=5]"].run().shape == (1, 1, t.codebooks, t.audio_tokens)
    codes = steps["speech.decode[ctx=7,steps=3]"].run()
    assert codes.shape == (1, 1, t.codebooks) and int(codes.max()) < t.audio_tokens


def test_all_is_every_workload_in_order(tiny_model):
    steps = build_requests(tiny_model, "all", SMALL)
    assert list(dict.fromkeys(s.workload for s in steps)) == list(WORKLOADS)
    assert len({s.name for s in steps}) == len(steps) == 9
    assert [s.name for s in build_requests(tiny_model, ["speech", "text", "speech"], SMALL)][:2] == [
        "speech.prefill[T=5]", "speech.decode[ctx=7,steps=3]"]


def test_options_accept_lists(tiny_model):
    options = RequestOptions(**{**SMALL.__dict__, "decode_batches": [2, 5]})
    names = [s.name for s in build_requests(tiny_model, "text", options)]
    assert names[1:] == ["text.decode[b=2,ctx=16,steps=2]", "text.decode[b=5,ctx=16,steps=2]"]


def test_default_options_name_the_serving_shapes(tiny_model):
    names = [s.name for s in build_requests(tiny_model, ["text", "image", "speech"])]
    assert names[:4] == ["text.prefill[b=1,S=512]", "text.decode[b=1,ctx=512,steps=16]",
                         "text.decode[b=8,ctx=512,steps=16]", "text.decode[b=32,ctx=512,steps=16]"]
    assert names[4].startswith("image.vision[slices=10,") and names[-2] == "speech.prefill[T=12]"


@pytest.mark.parametrize("name", ["video", "", "TEXT"])
def test_unknown_workload(tiny_model, name):
    with pytest.raises(WorkloadError, match="unknown workload"):
        build_requests(tiny_model, name)


def test_workload_needs_its_component():
    llm_only = build_model(0.01, torch.float32, device="cpu", components=["llm"])
    with pytest.raises(WorkloadError, match="'vision' component"):
        build_requests(llm_only, "image")
    with pytest.raises(WorkloadError, match="'tts' component"):
        build_requests(llm_only, ["text", "speech"])


@pytest.mark.parametrize("bad", [{"prompt_tokens": 0}, {"decode_batches": ()}, {"decode_batches": (4, -1)},
                                 {"audio_seconds": -3.0}, {"speech_tokens": True}])
def test_bad_options(tiny_model, bad):
    options = RequestOptions(**{**SMALL.__dict__, **bad})
    with pytest.raises(WorkloadError, match=next(iter(bad))):
        build_requests(tiny_model, "text", options)


def test_resolve_workloads_and_components():
    from tuner.profiling.workload import components_for, resolve_workloads
    assert resolve_workloads(["speech", "all", "speech"]) == ["speech", "text", "image", "audio"]
    assert components_for("image") == ["vision"]
    assert components_for(["speech", "text"]) == ["tts", "llm"]
    assert components_for("all") == ["llm", "vision", "audio", "tts"]
    with pytest.raises(WorkloadError, match="unknown workload"):
        components_for([])
