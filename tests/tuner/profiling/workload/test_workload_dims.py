import pytest

from tuner.profiling.workload import WorkloadError, model_dims


def test_scale_one_is_the_published_model():
    d = model_dims(1.0)
    llm = d.llm
    assert (llm.hidden, llm.layers, llm.heads, llm.kv_heads, llm.head_dim) == (3584, 28, 28, 4, 128)
    assert (llm.intermediate, llm.vocab, llm.rope_theta, llm.rms_eps) == (18944, 151700, 1e6, 1e-6)
    v = d.vision
    assert (v.hidden, v.layers, v.heads, v.head_dim, v.intermediate, v.patch) == (1152, 27, 16, 72, 4304, 14)
    assert v.slice_pixels == 448 and v.slice_grid ** 2 == 1024
    r = d.resampler
    assert (r.queries, r.embed, r.heads, r.kv_dim) == (64, 3584, 28, 1152)
    a = d.audio
    assert (a.d_model, a.layers, a.heads, a.ffn, a.mels, a.positions, a.window_frames) == (1024, 24, 16, 4096, 80, 1500, 3000)
    t = d.tts
    assert (t.hidden, t.layers, t.heads, t.head_dim, t.intermediate) == (768, 20, 12, 64, 3072)
    assert (t.codebooks, t.audio_tokens, t.text_vocab, t.llm_hidden) == (4, 626, 21178, 3584)


@pytest.mark.parametrize("scale", [0.001, 0.01, 0.05, 0.3, 0.77])
def test_scaled_dims_keep_the_structure(scale):
    d = model_dims(scale)
    assert d.llm.heads % d.llm.kv_heads == 0 and d.llm.heads // d.llm.kv_heads == 7
    assert d.llm.hidden == d.llm.heads * d.llm.head_dim and d.llm.head_dim % 8 == 0
    assert d.vision.hidden == d.vision.heads * d.vision.head_dim
    assert d.audio.d_model % d.audio.heads == 0 and (d.audio.d_model // d.audio.heads) % 8 == 0
    assert d.tts.hidden == d.tts.heads * d.tts.head_dim
    assert d.resampler.embed == d.llm.hidden and d.resampler.embed % d.resampler.heads == 0
    assert d.resampler.kv_dim == d.vision.hidden and d.audio.llm_hidden == d.llm.hidden
    assert min(d.llm.layers, d.vision.layers, d.audio.layers, d.tts.layers) >= 1
    assert d.vision.pos_grid >= d.vision.slice_grid
    full = model_dims(1.0)
    assert d.llm.hidden <= full.llm.hidden and d.llm.vocab <= full.llm.vocab


def test_small_scale_is_small():
    d = model_dims(0.05)
    assert d.llm.hidden < 300 and d.llm.layers == 1 and d.llm.vocab < 10000


@pytest.mark.parametrize("bad", [0, -0.5, 1.5, float("nan"), "0.1", None])
def test_bad_scale_is_a_workload_error(bad):
    with pytest.raises(WorkloadError, match="scale"):
        model_dims(bad)
