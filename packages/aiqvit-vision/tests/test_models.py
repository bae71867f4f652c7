import pickle

import pytest
import torch
from safetensors.torch import save_file

from aiqvit.errors import AIQViTError, CheckpointError
from aiqvit_vision.models import UnknownModelError, create_model, load_state_dict_strict, read_state_dict, resample_pos_embed
from aiqvit_vision.recipes import build_config, get_recipe, parse_overrides

TINY = dict(num_classes=3, img_size=32)


def test_unknown_model_name():
    with pytest.raises(UnknownModelError, match="unknown timm model 'vit_tinyy_patch16_224'"):
        create_model("vit_tinyy_patch16_224")


def test_weights_roundtrip_safetensors_and_pth(tmp_path):
    model = create_model("vit_tiny_patch16_224", **TINY)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": state}, tmp_path / "w.pth")
    x = torch.randn(1, 3, 32, 32)
    for name in ("w.safetensors", "w.pth"):
        other = create_model("vit_tiny_patch16_224", weights=tmp_path / name, **TINY)
        with torch.no_grad():
            torch.testing.assert_close(other(x), model(x))


def test_bad_weights_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "missing.safetensors")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unsupported weights format"):
        read_state_dict(tmp_path / "w.npz")
    (tmp_path / "corrupt.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_state_dict(tmp_path / "corrupt.safetensors")

    class Evil:
        def __reduce__(self):
            return (print, ("pickle executed",))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"w": Evil()}, f)
    with pytest.raises(CheckpointError, match="cannot read"):  # weights_only=True refuses arbitrary objects
        read_state_dict(tmp_path / "evil.pth")


def test_mismatched_keys_are_named(tmp_path):
    model = create_model("vit_tiny_patch16_224", **TINY)
    state = dict(model.state_dict())
    state.pop("blocks.0.attn.qkv.weight")
    state["extra.weight"] = torch.zeros(1)
    state["head.weight"] = torch.zeros(7, 192)
    with pytest.raises(CheckpointError) as err:
        load_state_dict_strict(create_model("vit_tiny_patch16_224", **TINY), state, source="w.safetensors")
    msg = str(err.value)
    assert "missing keys blocks.0.attn.qkv.weight" in msg and "unexpected keys extra.weight" in msg
    assert "head.weight: file (7, 192) vs model (3, 192)" in msg
    with pytest.raises(AIQViTError, match="not both"):
        create_model("vit_tiny_patch16_224", pretrained=True, weights=tmp_path / "w.safetensors")


def test_pos_embed_of_another_grid_is_resampled():
    big = create_model("vit_tiny_patch16_224", num_classes=3, img_size=64)  # 4x4 grid
    small = create_model("vit_tiny_patch16_224", **TINY)  # 2x2 grid
    load_state_dict_strict(small, big.state_dict())
    assert small.pos_embed.shape == (1, 5, 192)
    torch.testing.assert_close(small.pos_embed[:, :1], big.pos_embed[:, :1])  # class token position kept
    same = resample_pos_embed(big.pos_embed, (4, 4))
    assert same is big.pos_embed


def test_recipe_config_overrides():
    cfg = build_config("aiqvit", 4, 4, get_recipe("fast"), 3,
                       parse_overrides(["lowrank=fixed", "lowrank_rank=20", "reconstruction.curriculum=false",
                                        "softmax_quantizer=log2"]))
    assert (cfg.lowrank, cfg.lowrank_rank, cfg.softmax_quantizer, cfg.seed) == ("fixed", 20, "log2", 3)
    assert cfg.reconstruction.curriculum is False and cfg.reconstruction.iters == get_recipe("fast").recon_iters
    assert build_config("aiqvit", 4, 4, get_recipe("fast"), 0, parse_overrides(["lowrank=off"])).lowrank == "off"
    with pytest.raises(AIQViTError, match="unknown config keys"):
        build_config("aiqvit", 4, 4, get_recipe("fast"), 0, {"lowrnk": "off"})
    with pytest.raises(AIQViTError, match="key=value"):
        parse_overrides(["lowrank"])
    with pytest.raises(AIQViTError, match="unknown recipe"):
        get_recipe("slow")
    with pytest.raises(AIQViTError, match="out of range"):
        build_config("aiqvit", 9, 4, get_recipe("fast"))


def test_recipe_reconstructs_longer_at_3_bits():
    fast = get_recipe("fast")
    iters = {(w, a): build_config("brecq", w, a, fast).reconstruction.iters for w, a in ((3, 3), (3, 4), (4, 3), (4, 4), (6, 6))}
    assert iters == {(3, 3): 384, (3, 4): 384, (4, 3): 384, (4, 4): 128, (6, 6): 128}
    assert build_config("aiqvit", 3, 3, fast, 0, parse_overrides(["reconstruction.iters=64"])).reconstruction.iters == 64
    assert "(384 at <= 3 bits)" in fast.describe() and "+ 128 reconstruction" in fast.describe(4, 4)
    assert get_recipe("paper").recon_iters_for(3, 3) == get_recipe("paper").recon_iters


def test_fast_recipe_learns_input_gains_for_aiqvit_only():
    fast, paper = get_recipe("fast"), get_recipe("paper")
    assert build_config("aiqvit", 4, 4, fast).reconstruction.lr_input_gain == 0.03
    assert all(build_config("aiqvit", b, b, fast).reconstruction.lr_input_gain == 0.0 for b in (3, 6))
    assert build_config("aiqvit", 6, 4, fast).reconstruction.lr_input_gain == 0.03  # the lower bit-width decides
    assert build_config("brecq", 4, 4, fast).reconstruction.lr_input_gain == 0.0
    assert build_config("aiqvit", 4, 4, paper).reconstruction.lr_input_gain == 0.0
    off = build_config("aiqvit", 4, 4, fast, 0, parse_overrides(["reconstruction.lr_input_gain=0"]))
    assert off.reconstruction.lr_input_gain == 0.0
    assert "input gains at 4 bits" in fast.describe() and "input gains" not in paper.describe()
    assert "input gains" in fast.describe(4, 4) and "input gains" not in fast.describe(6, 6) + fast.describe(3, 3)


def test_fast_recipe_reconstructs_without_the_curriculum_paper_recipe_keeps_it():
    fast, paper = get_recipe("fast"), get_recipe("paper")
    assert all(not build_config(m, b, b, fast).reconstruction.curriculum for m in ("aiqvit", "brecq") for b in (3, 4, 6))
    assert build_config("aiqvit", 4, 4, paper).reconstruction.curriculum is True
    assert build_config("brecq", 4, 4, paper).reconstruction.curriculum is False  # brecq's preset has none
    restored = build_config("aiqvit", 4, 4, fast, 0, parse_overrides(["reconstruction.curriculum=true"]))
    assert restored.reconstruction.curriculum is True
    assert "no curriculum" in fast.describe() and "curriculum" not in paper.describe()
