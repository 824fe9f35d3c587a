import pytest
import torch
from safetensors.torch import save_file

from tuner.profiling.workload import WorkloadError, build_model, load_weights


def _model(seed):
    return build_model(0.02, torch.float32, device="cpu", components=["vision", "audio"], seed=seed)


def _checkpoint(seed):
    # contiguous, unshared copies as safetensors requires
    return {k: v.detach().clone().contiguous() for k, v in _model(seed).state_dict().items()}


def _save_split(tensors, folder):
    names = sorted(tensors)
    half = len(names) // 2
    save_file({n: tensors[n] for n in names[:half]}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({n: tensors[n] for n in names[half:]}, str(folder / "model-00002-of-00002.safetensors"))


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_round_trip_over_two_files_ignoring_extra_tensors(tmp_path):
    ckpt = _checkpoint(seed=1)
    ckpt["tts.dvae.decoder.weight"] = torch.zeros(3)  # not modelled: must be ignored
    _save_split(ckpt, tmp_path)
    model = _model(seed=2)
    key = "vpm.encoder.layers.0.mlp.fc1.weight"
    assert not torch.equal(model.state_dict()[key], ckpt[key])
    report = load_weights(model, tmp_path)
    assert report == {"loaded": len(ckpt) - 1, "ignored": 1, "files": 2}
    for name, value in model.state_dict().items():
        assert torch.equal(value, ckpt[name]), name


def test_loading_casts_to_the_model_dtype(tmp_path):
    ckpt = _checkpoint(seed=1)
    save_file(ckpt, str(tmp_path / "model.safetensors"))
    model = build_model(0.02, torch.bfloat16, device="cpu", components=["vision", "audio"], seed=2)
    load_weights(model, tmp_path)
    key = "apm.layers.0.fc2.weight"
    assert model.state_dict()[key].dtype == torch.bfloat16
    torch.testing.assert_close(model.state_dict()[key], ckpt[key].to(torch.bfloat16))


def test_missing_folder(tmp_path):
    with pytest.raises(WorkloadError, match="does not exist"):
        load_weights(_model(seed=0), tmp_path / "nowhere")


def test_folder_without_safetensors(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(WorkloadError, match=r"no \*\.safetensors"):
        load_weights(_model(seed=0), tmp_path)


def test_incomplete_checkpoint_leaves_model_untouched(tmp_path):
    ckpt = _checkpoint(seed=1)
    del ckpt["apm.layer_norm.weight"]
    _save_split(ckpt, tmp_path)
    model = _model(seed=2)
    before = _snapshot(model)
    with pytest.raises(WorkloadError, match="incomplete: 1 of .* apm.layer_norm.weight"):
        load_weights(model, tmp_path)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_wrong_shape_leaves_model_untouched(tmp_path):
    ckpt = _checkpoint(seed=1)
    w = ckpt["resampler.kv_proj.weight"]
    ckpt["resampler.kv_proj.weight"] = torch.zeros(w.shape[0] + 1, w.shape[1])
    _save_split(ckpt, tmp_path)
    model = _model(seed=2)
    before = _snapshot(model)
    with pytest.raises(WorkloadError, match=rf"scale 0\.02.*wrong shape, e\.g\. resampler\.kv_proj\.weight is \[{w.shape[0] + 1}, {w.shape[1]}\]"):
        load_weights(model, tmp_path)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_unreadable_file(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x00\x01 not a safetensors file")
    with pytest.raises(WorkloadError, match="cannot read"):
        load_weights(_model(seed=0), tmp_path)
