import json

import pytest
import torch
from conftest import fast_config

import aiqvit
from aiqvit import CheckpointError
from aiqvit.safetensors_io import load_file, save_file
from aiqvit.toy import make_outlier_toy


@pytest.fixture
def quantized(calib_batches):
    model = make_outlier_toy(seed=0)
    aiqvit.quantize(model, calib_batches, fast_config("aiqvit"), progress_bar=False)
    return model


def test_roundtrip_reproduces_outputs_exactly(quantized, tmp_path, test_inputs):
    qmap = aiqvit.save_quantized(quantized, tmp_path / "q")
    assert set(qmap["ranks"]) and qmap["dfq_intervals"]
    loaded = aiqvit.load_quantized(make_outlier_toy(seed=1), tmp_path / "q")
    with torch.no_grad():
        assert torch.equal(loaded(test_inputs), quantized(test_inputs))
    assert aiqvit.get_info(loaded).ranks == aiqvit.get_info(quantized).ranks


def test_map_records_the_calibration_environment(calib_batches, tmp_path):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        model = make_outlier_toy(seed=0)
        report = aiqvit.quantize(model, calib_batches, fast_config("minmax"), progress_bar=False)
    finally:
        torch.set_num_threads(threads)
    assert report.environment == {"torch": torch.__version__, "threads": 1}
    aiqvit.save_quantized(model, tmp_path / "q")
    assert json.loads((tmp_path / "q" / "quantization.json").read_text())["calibrated_with"] == report.environment
    loaded = aiqvit.load_quantized(make_outlier_toy(seed=1), tmp_path / "q")
    assert aiqvit.get_info(loaded).calibrated_with == report.environment


@pytest.mark.parametrize("bits", [3, 4, 6])
def test_packed_sizes(bits, calib_batches, tmp_path):
    model = make_outlier_toy(seed=0, dim=64)
    aiqvit.quantize(model, calib_batches, fast_config("minmax", bits=bits), progress_bar=False)
    qmap = aiqvit.save_quantized(model, tmp_path / "q")
    n_weights = sum(v["shape"][0] * torch.Size(v["shape"][1:]).numel() for v in qmap["layers"].values())
    assert qmap["sizes"]["packed_weight_bytes"] == sum(
        -(-torch.Size(v["shape"]).numel() * bits // 8) for v in qmap["layers"].values())
    assert qmap["sizes"]["packed_weight_bytes"] <= n_weights * bits / 8 + len(qmap["layers"])


def test_4bit_file_is_about_an_eighth(calib_batches, tmp_path):
    model = make_outlier_toy(seed=0, dim=128, depth=2)
    aiqvit.quantize(model, calib_batches, fast_config("minmax", bits=4), progress_bar=False)
    qmap = aiqvit.save_quantized(model, tmp_path / "q")
    weights_fp32 = sum(torch.Size(v["shape"]).numel() * 4 for v in qmap["layers"].values())
    assert qmap["sizes"]["packed_weight_bytes"] == weights_fp32 // 8
    # the file holds the packed codes plus scales, zero-points and the unquantized tensors
    assert qmap["sizes"]["file_bytes"] < 0.25 * qmap["sizes"]["fp32_state_bytes"]


def test_save_refuses_an_unfinished_model(tmp_path):
    model = make_outlier_toy()
    aiqvit.prepare(model, aiqvit.QuantConfig())
    with pytest.raises(aiqvit.AIQViTError, match="not finalized"):
        aiqvit.save_quantized(model, tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_corrupt_weights_file(quantized, tmp_path):
    aiqvit.save_quantized(quantized, tmp_path / "q")
    path = tmp_path / "q" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt|truncated"):
        aiqvit.load_quantized(make_outlier_toy(), tmp_path / "q")


def test_corrupt_map(quantized, tmp_path):
    aiqvit.save_quantized(quantized, tmp_path / "q")
    (tmp_path / "q" / "quantization.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        aiqvit.load_quantized(make_outlier_toy(), tmp_path / "q")


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not a saved quantized model"):
        aiqvit.load_quantized(make_outlier_toy(), tmp_path / "nope")


def test_mismatched_model(quantized, tmp_path):
    aiqvit.save_quantized(quantized, tmp_path / "q")
    with pytest.raises(CheckpointError, match="does not match"):
        aiqvit.load_quantized(make_outlier_toy(dim=64), tmp_path / "q")
    with pytest.raises(CheckpointError, match="does not match"):
        aiqvit.load_quantized(make_outlier_toy(depth=3), tmp_path / "q")


def test_overwrite_is_atomic(quantized, tmp_path):
    aiqvit.save_quantized(quantized, tmp_path / "q")
    aiqvit.save_quantized(quantized, tmp_path / "q")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]
    assert json.loads((tmp_path / "q" / "quantization.json").read_text())["format"] == "aiqvit-quantized"


def test_safetensors_compatibility(tmp_path):
    st = pytest.importorskip("safetensors.torch", reason="the test extra installs safetensors")
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(10, dtype=torch.uint8), "c": torch.tensor(True),
               "d": torch.randn(2).half()}
    save_file(tensors, tmp_path / "ours.safetensors", {"k": "v"})
    theirs = st.load_file(str(tmp_path / "ours.safetensors"))
    assert all(torch.equal(theirs[k], tensors[k]) for k in tensors)
    st.save_file(tensors, str(tmp_path / "theirs.safetensors"))
    ours, _ = load_file(tmp_path / "theirs.safetensors")
    assert all(torch.equal(ours[k], tensors[k]) for k in tensors)


def test_roundtrip_with_every_input_reparameterized(calib_batches, tmp_path, test_inputs):
    model = make_outlier_toy(seed=0)
    aiqvit.quantize(model, calib_batches, fast_config("aiqvit", channelwise_inputs="all"), progress_bar=False)
    assert any(m.input_scale is not None for m in model.modules() if isinstance(m, aiqvit.QuantLinear))
    aiqvit.save_quantized(model, tmp_path / "q")
    loaded = aiqvit.load_quantized(make_outlier_toy(seed=3), tmp_path / "q")
    with torch.no_grad():
        assert torch.equal(loaded(test_inputs), model(test_inputs))
