import pytest
import torch
from conftest import fast_config, quantize_until_first_unit, weight_grid

import aiqvit
from aiqvit import QuantConfig
from aiqvit import primitives as P
from aiqvit.adaround import AdaRound, annealed_beta, inverse_rectified_sigmoid, rounding_penalty
from aiqvit.reconstruction import reconstruct_unit
from aiqvit.safetensors_io import load_file, save_file
from aiqvit.toy import make_outlier_toy, make_weight_rounding_toy


def test_floor_offset_interpolates_between_the_neighbouring_levels():
    w = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    q = weight_grid(w, 4)
    s, z = q.scale.detach(), q.zero_point
    frac = w / s - torch.floor(w / s)
    inside = 0.8 * w  # the grid's zero point is rounded, so its ends may clip the extreme weights
    frac_inside = inside / s - torch.floor(inside / s)
    assert torch.allclose(P.fake_quantize_floor_offset(inside, s, z, 4, frac_inside), inside, atol=1e-6)
    nearest = P.fake_quantize_affine(w, s, z, 4)
    assert torch.allclose(P.fake_quantize_floor_offset(w, s, z, 4, (frac >= 0.5).float()), nearest, atol=1e-6)
    h = P.rectified_sigmoid(inverse_rectified_sigmoid(frac))
    assert torch.allclose(h, frac, atol=1e-5)


def test_penalty_and_schedule():
    v = torch.tensor([-10.0, 10.0])
    assert float(rounding_penalty(v, 2.0)) == pytest.approx(0.0)
    assert float(rounding_penalty(torch.zeros(3), 2.0)) == pytest.approx(1.0)
    assert annealed_beta(0, 100) is None and annealed_beta(19, 100) is None
    assert annealed_beta(20, 100) == pytest.approx(20.0)
    assert annealed_beta(100, 100) == pytest.approx(2.0)


def test_learned_rounding_beats_nearest_and_lands_on_the_grid():
    unit, data, x, linear = make_weight_rounding_toy(w_bits=3)
    cfg = aiqvit.ReconstructionConfig(iters=300, batch_size=32, curriculum=False)
    rounding = AdaRound(unit, reg=10.0, lr=0.05)
    before, after = reconstruct_unit(unit, data, cfg, torch.Generator().manual_seed(0), rounding=rounding)
    assert after < 0.85 * before
    scale = unit.layer.weight_quantizer.scale.detach().clone()
    float_weight = unit.layer.weight.detach().clone()
    rounding.finish()
    wq = unit.layer.weight_quantizer
    assert wq.rounding is None and wq.rounding_offset is not None
    assert not any(k.startswith("rounding") for k in wq.state_dict())
    assert torch.equal(wq.scale.detach(), scale)  # step sizes stay at their init
    assert torch.equal(unit.layer.weight.detach(), float_weight)  # the float path (the targets) is untouched
    with torch.no_grad():
        kept = float((unit(x) - linear(x)).norm(dim=1).mean())
        unit.layer.freeze()
        frozen = float((unit(x) - linear(x)).norm(dim=1).mean())
    assert kept == pytest.approx(after, rel=1e-4)
    assert frozen == pytest.approx(after, rel=1e-4)  # the stored codes are the learned ones
    assert wq.rounding_offset is None
    w = unit.layer.weight.detach()
    assert torch.allclose(wq.dequantize(wq.quantize(w)), w, atol=1e-6)


def test_pipeline_with_adaround_is_seeded_and_reloads(calib_batches, test_inputs, tmp_path):
    outs = []
    for _ in range(2):
        model = make_outlier_toy(seed=0)
        report = aiqvit.quantize(model, calib_batches, fast_config("aiqvit", weight_rounding="adaround"),
                                 progress_bar=False)
        assert all(after <= before for before, after in report.unit_losses.values())
        with torch.no_grad():
            outs.append(model(test_inputs))
    assert torch.equal(outs[0], outs[1])
    aiqvit.save_quantized(model, tmp_path / "q")
    fresh = aiqvit.load_quantized(make_outlier_toy(seed=0), tmp_path / "q")
    with torch.no_grad():
        assert torch.allclose(fresh(test_inputs), outs[0], atol=1e-5)


def test_checkpoint_with_a_mismatched_rounding_offset_is_refused(calib_batches, tmp_path):
    config = fast_config("brecq", weight_rounding="adaround")
    quantize_until_first_unit(config, calib_batches, tmp_path)
    state, meta = load_file(tmp_path / "state.safetensors")
    key = next(k for k in state if k.startswith("aiqvit.rounding_offset."))
    state[key] = state[key][:, :1].clone()
    save_file(state, tmp_path / "state.safetensors", meta)
    with pytest.raises(aiqvit.CheckpointError, match="rounding offset"):
        aiqvit.quantize(make_outlier_toy(seed=0), calib_batches, config, checkpoint_dir=tmp_path, progress_bar=False)


def test_adaround_needs_per_unit_reconstruction_and_no_later_fold():
    with pytest.raises(aiqvit.AIQViTError, match="adaround"):
        QuantConfig.for_method("repq", weight_rounding="adaround")
    with pytest.raises(aiqvit.AIQViTError, match="adaround"):
        QuantConfig(weight_rounding="adaround", reparam="after")
    with pytest.raises(aiqvit.AIQViTError, match="adaround"):
        QuantConfig(weight_rounding="adaround", reconstruction={"network_iters": 8})
    with pytest.raises(aiqvit.AIQViTError, match="adaround_lr"):
        QuantConfig(weight_rounding="adaround", adaround_lr=0.0)


def test_brecq_preset_is_adaround_and_says_how_to_turn_reconstruction_off():
    assert QuantConfig.for_method("brecq").weight_rounding == "adaround"
    with pytest.raises(aiqvit.AIQViTError, match="weight_rounding='nearest'"):
        QuantConfig.for_method("brecq", reconstruct=False)
    assert not QuantConfig.for_method("brecq", reconstruct=False, weight_rounding="nearest").reconstruct
