import subprocess
import sys

import pytest
import torch
from conftest import fast_config, quantize_until_first_unit
from torch import nn

import aiqvit
from aiqvit import AdapterError, CalibrationDataError, QuantConfig, quantization_disabled
from aiqvit.reconstruction import curriculum_fraction, curriculum_pool
from aiqvit.toy import ToyAdapter, ToyViT, make_outlier_toy


def rel_err(model, ref, x):
    with torch.no_grad():
        y = ref(x)
        return float((model(x) - y).pow(2).mean() / y.pow(2).mean())


def test_prepared_model_with_quantizers_off_equals_float(toy, test_inputs):
    ref = make_outlier_toy(seed=0)
    aiqvit.prepare(toy, QuantConfig())
    assert any(isinstance(m, aiqvit.AttentionQuantizers) for m in toy.modules())
    with quantization_disabled(toy), torch.no_grad():
        assert torch.equal(toy(test_inputs), ref(test_inputs))


def test_every_linear_and_conv_is_quantized(toy):
    aiqvit.prepare(toy, QuantConfig())
    assert not any(type(m) in (nn.Linear, nn.Conv2d) for m in toy.modules())


def test_curriculum_pool_grows_to_everything():
    fractions = [curriculum_fraction(t, 100, 0.5) for t in range(0, 101, 10)]
    assert fractions[0] == 0.5 and fractions[-1] == 1.0
    assert all(b >= a for a, b in zip(fractions, fractions[1:]))
    order = torch.arange(10)
    assert curriculum_pool(order, 0.5, 1).tolist() == [0, 1, 2, 3, 4]
    assert len(curriculum_pool(order, 0.05, 3)) == 3
    assert len(curriculum_pool(order, 1.0, 1)) == 10


def test_aiqvit_beats_minmax_w4a4(calib_batches, test_inputs):
    ref = make_outlier_toy(seed=0)
    errs = {}
    for method in ("minmax", "aiqvit"):
        model = make_outlier_toy(seed=0)
        cfg = fast_config(method)
        cfg.reconstruction.iters = 150
        aiqvit.quantize(model, calib_batches, cfg, progress_bar=False)
        errs[method] = rel_err(model, ref, test_inputs)
    assert errs["aiqvit"] < 0.6 * errs["minmax"], errs


@pytest.mark.parametrize("method", ["percentile", "repq", "brecq"])
def test_every_method_runs_and_beats_nothing_worse_than_chance(method, calib_batches, test_inputs):
    ref = make_outlier_toy(seed=0)
    model = make_outlier_toy(seed=0)
    aiqvit.quantize(model, calib_batches, fast_config(method), progress_bar=False)
    assert rel_err(model, ref, test_inputs) < 0.5


def test_ablation_switches(calib_batches):
    model = make_outlier_toy(seed=0)
    cfg = fast_config("aiqvit", lowrank="fixed", lowrank_rank=8, softmax_quantizer="log2")
    cfg.reconstruction.curriculum = False
    report = aiqvit.quantize(model, calib_batches, cfg, progress_bar=False)
    assert set(report.ranks.values()) == {8}
    assert not report.dfq_intervals


def test_searched_ranks_and_dfq_intervals_are_reported(calib_batches):
    model = make_outlier_toy(seed=0)
    report = aiqvit.quantize(model, calib_batches, fast_config("aiqvit"), progress_bar=False)
    assert len(report.ranks) == 8 and set(report.ranks.values()) <= {4, 8, 16}
    assert len(report.dfq_intervals) == 2
    for b1, b2 in report.dfq_intervals.values():
        assert 0 <= b1 < b2 <= 1


def test_reconstruction_from_quantized_inputs(calib_batches, test_inputs):
    model = make_outlier_toy(seed=0)
    cfg = fast_config("brecq")
    cfg.reconstruction.input_source = "quant"
    report = aiqvit.quantize(model, calib_batches, cfg, progress_bar=False)
    assert all(after <= before for before, after in report.unit_losses.values())


def test_reconstruction_max_batches_limits_the_reconstruction_data(calib_batches, monkeypatch):
    import aiqvit.api as api

    captured, calibrated = [], []
    real_capture, real_calibrate = api.capture_unit_io, api.calibrate_activations

    def capture(model, adapter, unit, batches, **kwargs):
        captured.append(len(batches))
        return real_capture(model, adapter, unit, batches, **kwargs)

    def calibrate(model, batches, show=True):
        calibrated.append(len(batches))
        return real_calibrate(model, batches, show)

    monkeypatch.setattr(api, "capture_unit_io", capture)
    monkeypatch.setattr(api, "calibrate_activations", calibrate)
    cfg = fast_config("brecq")
    cfg.reconstruction.max_batches = 1
    report = aiqvit.quantize(make_outlier_toy(seed=0), calib_batches, cfg, progress_bar=False)
    assert calibrated == [len(calib_batches)] and len(calib_batches) > 1
    assert captured and set(captured) == {1}
    assert all(after <= before for before, after in report.unit_losses.values())
    with pytest.raises(aiqvit.AIQViTError, match="max_batches"):
        fast_config("brecq", reconstruction=dict(max_batches=-1))


def test_seeded_determinism(calib_batches, test_inputs):
    outs = []
    for _ in range(2):
        model = make_outlier_toy(seed=0)
        aiqvit.quantize(model, calib_batches, fast_config("aiqvit"), progress_bar=False)
        with torch.no_grad():
            outs.append(model(test_inputs))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("method,overrides", [("aiqvit", {}), ("brecq", {}),
                                              ("aiqvit", {"weight_rounding": "adaround"})])
def test_resume_gives_the_same_model(method, overrides, tmp_path, calib_batches, test_inputs):
    config = fast_config(method, **overrides)  # brecq (AdaRound): the learned rounding is checkpointed too
    full = make_outlier_toy(seed=0)
    aiqvit.quantize(full, calib_batches, config, progress_bar=False)
    quantize_until_first_unit(config, calib_batches, tmp_path)
    resumed = make_outlier_toy(seed=0)
    report = aiqvit.quantize(resumed, calib_batches, config, checkpoint_dir=tmp_path, progress_bar=False)
    assert report.resumed_units == ["blocks.0"]
    with torch.no_grad():
        assert torch.equal(resumed(test_inputs), full(test_inputs))


def test_resume_refuses_another_config(tmp_path, calib_batches):
    quantize_until_first_unit(fast_config("aiqvit"), calib_batches, tmp_path)
    with pytest.raises(aiqvit.CheckpointError, match="another config"):
        aiqvit.quantize(make_outlier_toy(), calib_batches, fast_config("aiqvit", bits=3), checkpoint_dir=tmp_path,
                        progress_bar=False)


@pytest.mark.parametrize("data,match", [([], "empty"), (None, "None"),
                                        ([torch.full((2, 3, 16, 16), float("nan"))], "non-finite"),
                                        (["not a tensor"], "no tensor")])
def test_bad_calibration_data(data, match):
    with pytest.raises(CalibrationDataError, match=match):
        aiqvit.quantize(make_outlier_toy(), data, fast_config("minmax"), progress_bar=False)


def test_bits_out_of_range_in_config():
    with pytest.raises(aiqvit.BitWidthError, match="w_bits=9"):
        QuantConfig.for_method("aiqvit", 9, 4)
    with pytest.raises(aiqvit.BitWidthError, match="a_bits=1"):
        QuantConfig(a_bits=1)


def test_set_options_parse_json_values_and_keep_text():
    from aiqvit.config import parse_overrides

    assert parse_overrides(["lowrank=off", "reconstruction.iters=7", "center_keys=true", "a=[1, 2]"]) == {
        "lowrank": "off", "reconstruction.iters": 7, "center_keys": True, "a": [1, 2]}
    assert parse_overrides(None) == {}
    for bad in ("lowrank", "=3"):
        with pytest.raises(aiqvit.AIQViTError, match="KEY=VALUE"):
            parse_overrides([bad])


def test_unknown_method():
    with pytest.raises(aiqvit.AIQViTError, match="method='gptq'"):
        QuantConfig.for_method("gptq")


def test_unknown_model_has_no_adapter():
    with pytest.raises(AdapterError, match="no adapter handles a model of type Sequential"):
        aiqvit.quantize(nn.Sequential(nn.Linear(4, 4)), [torch.randn(2, 4)], fast_config("minmax"))


def test_model_without_blocks():
    class Empty(ToyViT):
        pass

    model = Empty(depth=0)
    with pytest.raises(AdapterError, match="found no blocks"):
        aiqvit.prepare(model, QuantConfig(), ToyAdapter())


def test_lean_import():
    code = ("import sys, aiqvit, aiqvit.api, aiqvit.serialization; "
            "bad = [m for m in ('timm', 'torchvision', 'mmcv', 'mmdet', 'open3d') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_quantized_model_moves_with_to(calib_batches, test_inputs):
    model = make_outlier_toy(seed=0)
    aiqvit.quantize(model, calib_batches, fast_config("minmax"), progress_bar=False)
    with torch.no_grad():
        expected = model(test_inputs)
        model.to("cpu").float()  # nn.Module._apply must stay intact on quantized layers
        assert torch.equal(model(test_inputs), expected)
        model.double()
        assert all(p.dtype == torch.float64 for p in model.parameters())


def test_presets_are_not_shared_between_configs():
    first = QuantConfig.for_method("brecq")
    first.reconstruction.iters = 3
    assert QuantConfig.for_method("brecq").reconstruction.iters != 3


def test_nested_overrides_change_only_the_fields_they_name():
    """``reconstruction={...}`` edits the preset's group: brecq stays BRECQ (no curriculum, quantized
    inputs) with a longer budget. A config object replaces the group; an unknown key is an error."""
    brecq = QuantConfig.for_method("brecq", reconstruction={"iters": 7}, search={"candidate_ranks": [4, 8]})
    assert (brecq.reconstruction.iters, brecq.reconstruction.curriculum, brecq.reconstruction.input_source) == \
        (7, False, "quant")
    assert brecq.search.candidate_ranks == (4, 8)
    assert QuantConfig.for_method("aiqvit", reconstruction={"iters": 7}).reconstruction.input_source == "quant"
    whole = QuantConfig.for_method("brecq", reconstruction=aiqvit.ReconstructionConfig(iters=7))
    assert whole.reconstruction.curriculum is True
    with pytest.raises(aiqvit.AIQViTError, match="unknown reconstruction config keys"):
        QuantConfig.for_method("aiqvit", reconstruction={"itres": 7})


def test_for_method_takes_dotted_keys_and_names_unknown_ones():
    cfg = QuantConfig.for_method("brecq", **{"reconstruction.iters": 7, "search.iters": 3, "lowrank": "fixed"})
    assert (cfg.reconstruction.iters, cfg.search.iters, cfg.lowrank) == (7, 3, "fixed")
    assert cfg.reconstruction.curriculum is False  # the rest of brecq's group stays
    both = QuantConfig.for_method("aiqvit", reconstruction={"iters": 7}, **{"reconstruction.batch_size": 4})
    assert (both.reconstruction.iters, both.reconstruction.batch_size) == (7, 4)
    for bad, match in (({"lowrnak": "off"}, "lowrnak"), ({"recon.iters": 3}, "dotted"),
                       ({"reconstruction.itres": 3}, "itres")):
        with pytest.raises(aiqvit.AIQViTError, match=match):
            QuantConfig.for_method("aiqvit", **bad)


def test_reparameterization_after_reconstruction(calib_batches, test_inputs, tmp_path):
    ref = make_outlier_toy(seed=0)
    model = make_outlier_toy(seed=0)
    aiqvit.quantize(model, calib_batches, fast_config("aiqvit", reparam="after"), progress_bar=False)
    assert aiqvit.get_info(model).reparam_done
    assert all(m.input_quantizer.scale.ndim == 0 for m in model.modules() if isinstance(m, aiqvit.QuantLinear))
    assert rel_err(model, ref, test_inputs) < 0.5
    aiqvit.save_quantized(model, tmp_path / "q")
    loaded = aiqvit.load_quantized(make_outlier_toy(seed=2), tmp_path / "q")
    with torch.no_grad():
        assert torch.equal(loaded(test_inputs), model(test_inputs))


@pytest.mark.parametrize("value", [1.5, -0.1, "half"])
def test_reparam_strength_out_of_range(value):
    with pytest.raises(aiqvit.AIQViTError, match="reparam_strength"):
        QuantConfig(reparam_strength=value)


def test_paper_settings_undo_our_additions():
    ours = QuantConfig.for_method("aiqvit")
    assert (ours.channelwise_inputs, ours.reparam_strength, ours.reconstruction.input_source) == ("all", "search", "quant")
    paper = QuantConfig.for_method("aiqvit", **{k: v for k, v in aiqvit.AIQVIT_PAPER_SETTINGS.items()
                                                if k != "reconstruction"})
    paper.reconstruction.input_source = aiqvit.AIQVIT_PAPER_SETTINGS["reconstruction"]["input_source"]
    assert (paper.channelwise_inputs, paper.reparam_strength, paper.reconstruction.input_source) == ("post_ln", 1.0, "fp")
    assert (ours.dfq_spacing, ours.act_init) == ("log", "auto")
    assert (paper.dfq_spacing, paper.act_init) == ("uniform", "minmax")
    assert QuantConfig.from_dict(ours.to_dict()) == ours


@pytest.mark.parametrize("a_bits, expected", [(3, "percentile"), (4, "percentile"), (6, "minmax"), (8, "minmax")])
def test_auto_activation_init_depends_on_bits(a_bits, expected):
    config = QuantConfig.for_method("aiqvit", 4, a_bits)
    assert config.act_init == "auto" and config.resolved_act_init() == expected
    model = make_outlier_toy(seed=0)
    aiqvit.prepare(model, config)
    assert model.blocks[0].fc2.input_quantizer.init == expected
    assert model.blocks[0].attn.matmul_quantizers.key_quantizer.init == expected
    assert QuantConfig.for_method("aiqvit", 4, a_bits, act_init="mse").resolved_act_init() == "mse"


def test_searched_strengths_are_reported(calib_batches):
    model = make_outlier_toy()
    report = aiqvit.quantize(model, calib_batches, fast_config("repq", channelwise_inputs="all", reparam_strength="search"),
                             progress_bar=False)
    layers = [n for n, m in model.named_modules() if isinstance(m, aiqvit.QuantLinear)]
    assert set(report.reparam_strengths) == set(layers)
    assert set(report.reparam_strengths.values()) <= {0.0, 0.25, 0.5, 0.75, 1.0}
    assert all(m.input_quantizer.kept_rows is None for m in model.modules() if isinstance(m, aiqvit.QuantLinear))


def test_qdrop_keeps_float_values_while_training_only():
    q = aiqvit.UniformQuantizer(2)
    q.calibrate_from(torch.linspace(-1, 1, 100))
    x = torch.randn(10_000)
    assert not torch.equal(q(x), x)
    q.drop_prob = 0.5
    kept = float((q(x) == x).float().mean())
    assert 0.45 < kept < 0.6  # half skip the quantizer (plus the few already on the grid)


def test_qdrop_reconstruction_is_seeded_and_resets(calib_batches, test_inputs):
    outs = []
    for _ in range(2):
        model = make_outlier_toy(seed=0)
        cfg = fast_config("aiqvit")
        cfg.reconstruction.qdrop_prob = 0.5
        aiqvit.quantize(model, calib_batches, cfg, progress_bar=False)
        assert all(q.drop_prob == 0.0 for _, q in aiqvit.quantizers(model))
        with torch.no_grad():
            outs.append(model(test_inputs))
    assert torch.equal(outs[0], outs[1])


def test_qdrop_probability_out_of_range():
    with pytest.raises(aiqvit.AIQViTError, match="qdrop_prob"):
        QuantConfig(reconstruction=dict(qdrop_prob=1.0))


def test_network_stage_lowers_last_unit_error_and_is_seeded(calib_batches, test_inputs):
    outs, reports = [], []
    for _ in range(2):
        model = make_outlier_toy(seed=0)
        cfg = fast_config("aiqvit", reconstruction=dict(network_iters=30, network_lr_scale=0.5))
        reports.append(aiqvit.quantize(model, calib_batches, cfg, progress_bar=False))
        assert not any(p.requires_grad for p in model.parameters())
        with torch.no_grad():
            outs.append(model(test_inputs))
    before, after = reports[0].network_loss
    assert after < before
    assert reports[0].network_loss == reports[1].network_loss
    assert torch.equal(outs[0], outs[1])
    off = aiqvit.quantize(make_outlier_toy(seed=0), calib_batches, fast_config("aiqvit"), progress_bar=False)
    assert off.network_loss is None


def test_network_stage_settings_are_checked():
    with pytest.raises(aiqvit.AIQViTError, match="network_iters"):
        QuantConfig(reconstruction=dict(network_iters=-1))
    with pytest.raises(aiqvit.AIQViTError, match="network_lr_scale"):
        QuantConfig(reconstruction=dict(network_batch_size=0))


def test_reconstruction_that_ends_worse_keeps_its_starting_point(calib_batches):
    # float-model inputs: each unit's starting loss then does not depend on how the units before it trained
    cfg = fast_config("aiqvit", lowrank="off", reconstruction=dict(lr_weight_scale=50.0, lr_act_scale=50.0,
                                                                   lr_dfq=50.0, curriculum=False, input_source="fp"))
    report = aiqvit.quantize(make_outlier_toy(seed=0), calib_batches, cfg, progress_bar=False)
    assert all(after <= before for before, after in report.unit_losses.values())
    no_training = fast_config("aiqvit", lowrank="off", reconstruction=dict(iters=0, input_source="fp"))
    start = aiqvit.quantize(make_outlier_toy(seed=0), calib_batches, no_training, progress_bar=False)
    restored = [n for n, (b, a) in report.unit_losses.items() if a == b]
    assert restored, "the learning rates above were meant to make at least one unit worse"
    for name in restored:
        assert report.unit_losses[name][1] == pytest.approx(start.unit_losses[name][0], rel=1e-5)


def test_network_stage_that_ends_worse_keeps_its_starting_point(calib_batches, test_inputs):
    """A network stage whose steps raise the loss (here: absurd learning rates) is undone: the model
    equals the one the unit-wise reconstruction left."""
    units_only = make_outlier_toy(seed=0)
    aiqvit.quantize(units_only, calib_batches, fast_config("aiqvit"), progress_bar=False)
    model = make_outlier_toy(seed=0)
    cfg = fast_config("aiqvit", reconstruction=dict(network_iters=10, network_lr_scale=500.0))
    before, after = aiqvit.quantize(model, calib_batches, cfg, progress_bar=False).network_loss
    assert after == pytest.approx(before, rel=1e-6)
    with torch.no_grad():
        assert torch.allclose(model(test_inputs), units_only(test_inputs), atol=1e-6)


class _FirstTokenAdapter(ToyAdapter):
    """The toy model's adapter, but its last block's reconstruction compares only token 0."""

    calls = 0

    def output_view(self, model, unit_name):
        if unit_name != f"blocks.{len(model.blocks) - 1}":
            return None

        def first_token(y):
            _FirstTokenAdapter.calls += 1
            return y[:, :1]
        return first_token


def test_output_view_narrows_the_reconstruction_loss(calib_batches):
    from aiqvit.reconstruction import build_unit_data, sample_losses

    unit = nn.Identity()
    inputs = [[(torch.randn(4, 3, 5),), {}, None]]
    targets = [[(), {}, inputs[0][0][0].clone()]]
    targets[0][2][:, 1:] += 1.0  # only rows the view drops differ
    assert sample_losses(unit, build_unit_data(inputs, targets), [0, 1]).min() > 0
    viewed = build_unit_data(inputs, targets, view=lambda y: y[:, :1])
    assert torch.equal(sample_losses(unit, viewed, [0, 1, 2, 3]), torch.zeros(4))

    cfg = fast_config("aiqvit")
    full = aiqvit.quantize(make_outlier_toy(seed=0), calib_batches, cfg, progress_bar=False)
    narrowed = aiqvit.quantize(make_outlier_toy(seed=0), calib_batches, cfg, adapter=_FirstTokenAdapter(),
                               progress_bar=False)
    assert _FirstTokenAdapter.calls > 0
    assert narrowed.unit_losses["blocks.0"] == full.unit_losses["blocks.0"]
    assert narrowed.unit_losses["blocks.1"][0] < full.unit_losses["blocks.1"][0]


def test_kl_logits_loss_ignores_a_logit_shift_and_sees_a_changed_prediction():
    from aiqvit.reconstruction import build_unit_data, sample_losses

    unit = nn.Identity()
    logits = torch.randn(6, 10)
    inputs = [[(logits,), {}, None]]
    shifted = [[(), {}, logits + 3.0]]  # the same softmax
    kl = build_unit_data(inputs, shifted, loss="kl")
    assert len(kl) == 6 and torch.allclose(sample_losses(unit, kl, list(range(6))), torch.zeros(6), atol=1e-6)
    assert sample_losses(unit, build_unit_data(inputs, shifted), list(range(6))).min() > 1.0  # l2 sees the shift
    swapped = logits.clone()
    swapped[:, [0, 1]] = swapped[:, [1, 0]]
    moved = sample_losses(unit, build_unit_data([[(logits,), {}, None]], [[(), {}, swapped]], loss="kl"), [0, 1])
    assert (moved >= 0).all() and moved.sum() > 0


class _ToyWithHeadUnit(ToyAdapter):
    def units(self, model):
        return super().units(model) + [("head", model.head)]

    def logit_units(self, model):
        return {"head"}


def test_logits_loss_kl_reaches_the_logit_units_only(calib_batches):
    cfg = fast_config("aiqvit")
    l2 = aiqvit.quantize(make_outlier_toy(seed=0), calib_batches, cfg, adapter=_ToyWithHeadUnit(), progress_bar=False)
    cfg.reconstruction.logits_loss = "kl"
    kl = aiqvit.quantize(make_outlier_toy(seed=0), calib_batches, cfg, adapter=_ToyWithHeadUnit(), progress_bar=False)
    assert kl.unit_losses["blocks.1"] == l2.unit_losses["blocks.1"]  # blocks keep the l2 loss
    assert kl.unit_losses["head"] != l2.unit_losses["head"]
    with pytest.raises(aiqvit.AIQViTError, match="logits_loss"):
        QuantConfig.for_method("aiqvit", 4, 4, reconstruction=aiqvit.ReconstructionConfig(logits_loss="ce")).validate()
