import math

import pytest
import torch

from tuner.profiling.workload import WorkloadError, build_model, describe
from tuner.profiling.workload.resampler import sincos_pos_embed_2d


def test_llm_logits_shape(tiny_model):
    d = tiny_model.dims.llm
    with torch.inference_mode():
        logits = tiny_model.llm(input_ids=torch.randint(d.vocab, (2, 5))).logits
    assert logits.shape == (2, 5, d.vocab)
    assert torch.isfinite(logits).all()


def test_vision_and_resampler_shapes(tiny_model):
    v, r = tiny_model.dims.vision, tiny_model.dims.resampler
    pixels = torch.randn(3, 3, v.slice_pixels, v.slice_pixels)
    with torch.inference_mode():
        patches = tiny_model.vpm(pixel_values=pixels).last_hidden_state
        tokens = tiny_model.resampler(patches, [(v.slice_grid, v.slice_grid)] * 3)
    assert patches.shape == (3, v.slice_grid ** 2, v.hidden)
    assert tokens.shape == (3, r.queries, r.embed)


def test_resampler_ignores_padding(tiny_model):
    # a small slice padded into a batch must give what it gives alone: the key padding mask works
    v = tiny_model.dims.vision
    g = v.slice_grid
    x = torch.randn(2, g * g, v.hidden)
    small = (g - 1, g)
    with torch.inference_mode():
        batched = tiny_model.resampler(x, [small, (g, g)])
        alone = tiny_model.resampler(x[:1, : small[0] * small[1]], [small])
        x_garbage = x.clone()
        x_garbage[0, small[0] * small[1]:] = 1e3
        garbage = tiny_model.resampler(x_garbage, [small, (g, g)])
    torch.testing.assert_close(batched[0], alone[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(garbage[0], batched[0], rtol=1e-4, atol=1e-4)


def test_audio_encoder_projector_and_pool_shapes(tiny_model):
    a = tiny_model.dims.audio
    with torch.inference_mode():
        h = tiny_model.apm(torch.randn(2, a.mels, a.window_frames)).last_hidden_state
        x = tiny_model.audio_projection_layer(h)
        pooled = tiny_model.audio_avg_pooler(x.transpose(1, 2)).transpose(1, 2)
    assert h.shape == (2, a.positions, a.d_model)
    assert pooled.shape == (2, a.positions // a.pool, a.llm_hidden)


def test_tts_shapes(tiny_model):
    t = tiny_model.dims.tts
    tts = tiny_model.tts
    with torch.inference_mode():
        emb = tts.emb_text(torch.randint(t.text_vocab, (1, 12))) + tts.projector(torch.randn(1, 12, t.llm_hidden))
        h = tts.model(inputs_embeds=emb).last_hidden_state
        logits = tts.code_logits(h)
        codes = logits.argmax(-1)
        next_emb = tts.embed_codes(codes)
    assert h.shape == (1, 12, t.hidden)
    assert logits.shape == (1, 12, t.codebooks, t.audio_tokens)
    assert next_emb.shape == (1, 12, t.hidden)
    assert not hasattr(tts.model, "embed_tokens")


def test_full_scale_gemm_shapes_match_the_facts():
    # meta device: exact shapes of the 8.6 B-parameter model without allocating it
    m = build_model(1.0, torch.bfloat16, device="meta")
    sd = m.state_dict()
    expect = {
        "llm.model.layers.0.self_attn.q_proj.weight": (3584, 3584),
        "llm.model.layers.27.self_attn.k_proj.weight": (512, 3584),
        "llm.model.layers.0.self_attn.v_proj.bias": (512,),
        "llm.model.layers.0.mlp.gate_proj.weight": (18944, 3584),
        "llm.model.layers.0.mlp.down_proj.weight": (3584, 18944),
        "llm.lm_head.weight": (151700, 3584),
        "vpm.encoder.layers.26.mlp.fc1.weight": (4304, 1152),
        "vpm.embeddings.patch_embedding.weight": (1152, 3, 14, 14),
        "resampler.kv_proj.weight": (3584, 1152),
        "resampler.attn.in_proj_weight": (3 * 3584, 3584),
        "resampler.proj": (3584, 3584),
        "resampler.query": (64, 3584),
        "apm.layers.23.fc1.weight": (4096, 1024),
        "apm.conv1.weight": (1024, 80, 3),
        "audio_projection_layer.linear1.weight": (3584, 1024),
        "audio_projection_layer.linear2.weight": (3584, 3584),
        "tts.projector.linear1.weight": (768, 3584),
        "tts.model.layers.19.mlp.down_proj.weight": (768, 3072),
        "tts.head_code.3.parametrizations.weight.original1": (626, 768),
        "tts.emb_text.weight": (21178, 768),
    }
    assert {k: tuple(sd[k].shape) for k in expect} == expect
    assert "llm.model.layers.28.mlp.up_proj.weight" not in sd
    assert "llm.model.layers.0.self_attn.o_proj.bias" not in sd  # o_proj has no bias
    info = describe(m)
    assert 8.5e9 < info["parameters"] < 8.8e9 and info["exact_shapes"] and info["dtype"] == "bfloat16"


def test_dtype_device_components_and_describe():
    m = build_model(0.02, torch.bfloat16, device="cpu", components=["llm", "tts"])
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    assert m.vpm is None and m.apm is None and m.llm is not None and m.tts is not None
    info = describe(m)
    assert info["scale"] == 0.02 and not info["exact_shapes"]
    assert info["components"] == ["llm", "tts"] and info["device"] == "cpu"
    assert info["parameters"] == sum(p.numel() for p in m.parameters())
    assert info["dims"]["llm"]["hidden"] == m.dims.llm.hidden
    assert not any(p.requires_grad for p in m.parameters()) and not m.training


def test_same_seed_same_weights():
    a = build_model(0.01, torch.float32, device="cpu", components=["audio"], seed=3)
    b = build_model(0.01, torch.float32, device="cpu", components=["audio"], seed=3)
    c = build_model(0.01, torch.float32, device="cpu", components=["audio"], seed=4)
    w = "audio_projection_layer.linear1.weight"
    assert torch.equal(a.state_dict()[w], b.state_dict()[w])
    assert not torch.equal(a.state_dict()[w], c.state_dict()[w])


@pytest.mark.parametrize("kwargs, match", [
    ({"components": ["llm", "video"]}, "components"),
    ({"components": []}, "components"),
    ({"dtype": torch.int8}, "dtype"),
    ({"scale": 2.0}, "scale"),
])
def test_bad_build_arguments(kwargs, match):
    with pytest.raises(WorkloadError, match=match):
        build_model(**{"scale": 0.01, "dtype": torch.float32, "device": "cpu", **kwargs})


def test_sincos_pos_embed_rows_then_columns():
    e = sincos_pos_embed_2d(8, 3, 4)  # quarter = 2: [sin_h(2), cos_h(2), sin_w(2), cos_w(2)]
    assert e.shape == (3, 4, 8)
    torch.testing.assert_close(e[0, 0], torch.tensor([0, 0, 1, 1, 0, 0, 1, 1.0]))
    assert math.isclose(e[2, 1, 0].item(), math.sin(2.0), rel_tol=1e-6)  # row 2, first frequency
    assert math.isclose(e[2, 1, 4].item(), math.sin(1.0), rel_tol=1e-6)  # column 1
    assert torch.equal(e[1, :, :4], e[1, 0, :4].expand(4, 4))  # row half constant along a row
    with pytest.raises(ValueError):
        sincos_pos_embed_2d(6, 2, 2)
