import pytest
import torch
from aiqvit.errors import CheckpointError

from aiqvit_pointcloud.models import PointTransformerConfig, build_model
from aiqvit_pointcloud.weights import (
    PACKAGED_DIR,
    checkpoint_filename,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)


def test_round_trip_in_fp16(tmp_path):
    torch.manual_seed(0)
    model = build_model(PointTransformerConfig(task="cls", num_points=32, widths=(16,), depths=(1,), k=4,
                                               num_classes=3)).eval()
    path = tmp_path / "m.safetensors"
    save_checkpoint(model, path, {"note": "x"})
    back, meta = load_checkpoint(path)
    assert meta == {"note": "x"} and back.config == model.config and not back.training
    for (k, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        expect = a.half().float() if a.is_floating_point() else a
        assert torch.equal(b, expect), k
    x = torch.randn(2, 32, 3)
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), atol=2e-2, rtol=2e-2)


def test_bad_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_checkpoint(junk)
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not an aiqvit-pointcloud checkpoint"):
        read_metadata(tmp_path / "foreign.safetensors")
    model = build_model(PointTransformerConfig(task="cls", num_points=32, widths=(16,), depths=(1,), k=4,
                                               num_classes=3))
    path = tmp_path / "m.safetensors"
    save_checkpoint(model, path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    state["head.mlp.8.weight"] = torch.zeros(4, 128, dtype=torch.float16)
    save_file(state, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_checkpoint(path)


def test_packaged_checkpoints_load():
    for task in ("cls", "partseg"):
        path = PACKAGED_DIR / checkpoint_filename(task)
        assert path.is_file(), f"packaged checkpoint missing: {path} (run benchmarks/pointcloud/train.py --task {task})"
        assert path.stat().st_size <= 10 * 2**20
        model, meta = load_checkpoint(path)
        assert model.config.task == task and meta["dataset"] == "SyntheticParts (synthetic)"
