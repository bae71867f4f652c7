import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aiqvit import primitives as P

bits_st = st.integers(2, 8)
tensor_st = st.lists(st.floats(-50, 50, allow_nan=False, width=32), min_size=1, max_size=64).map(torch.tensor)


@given(tensor_st, bits_st, st.floats(1e-3, 10), st.integers(0, 255))
def test_affine_codes_stay_in_range(x, bits, scale, zp):
    zp = min(zp, 2**bits - 1)
    codes = P.quantize_affine(x, torch.tensor(scale), torch.tensor(float(zp)), bits)
    assert codes.min() >= 0 and codes.max() <= 2**bits - 1


@given(tensor_st, bits_st)
def test_fake_quant_is_idempotent(x, bits):
    s, z = P.affine_params_from_range(x.min(), x.max(), bits)
    once = P.fake_quantize_affine(x, s, z, bits)
    assert torch.allclose(P.fake_quantize_affine(once, s, z, bits), once, atol=1e-5 * float(s))


@given(tensor_st, bits_st)
def test_fake_quant_is_monotone(x, bits):
    s, z = P.affine_params_from_range(x.min(), x.max(), bits)
    xs, _ = torch.sort(x)
    q = P.fake_quantize_affine(xs, s, z, bits)
    assert bool((q[1:] >= q[:-1] - 1e-6).all())


@given(tensor_st, bits_st)
def test_minmax_error_is_at_most_half_a_step(x, bits):
    s, z = P.affine_params_from_range(x.min(), x.max(), bits)
    err = (P.fake_quantize_affine(x, s, z, bits) - x).abs().max()
    assert float(err) <= float(s) / 2 + 1e-4 * float(s) + 1e-6


def test_gradient_reaches_scale_and_input():
    x = torch.linspace(-1, 1, 50, requires_grad=True)
    s = torch.tensor(0.1, requires_grad=True)
    P.fake_quantize_affine(x, s, torch.tensor(8.0), 4).pow(2).sum().backward()
    assert s.grad is not None and s.grad.abs() > 0
    assert x.grad is not None and (x.grad != 0).any()


@given(st.lists(st.floats(0, 1, width=32), min_size=1, max_size=64).map(torch.tensor), bits_st,
       st.sampled_from(["b2", "one"]), st.sampled_from(P.DFQ_SPACINGS))
def test_dfq_codes_range_and_monotone(p, bits, top, spacing):
    b1, b2 = torch.tensor(0.01), torch.tensor(0.3)
    ps, _ = torch.sort(p)
    codes = P.dfq_quantize(ps, b1, b2, bits, top, spacing)
    assert codes.min() >= 0 and codes.max() <= 2**bits - 1
    assert bool((codes[1:] >= codes[:-1]).all())
    deq = P.dfq_dequantize(codes, b1, b2, bits, top, spacing)
    assert bool((deq[1:] >= deq[:-1] - 1e-7).all())
    assert torch.allclose(P.fake_dfq(ps, b1, b2, bits, top, spacing), deq, atol=1e-6)


def test_dfq_log_spacing_levels_are_geometric():
    b1, b2, bits = torch.tensor(1e-3), torch.tensor(0.5), 4
    levels = P.dfq_dequantize(torch.arange(1, 2**bits), b1, b2, bits, "b2", "log")
    assert float(levels[0]) == pytest.approx(1e-3) and float(levels[-1]) == pytest.approx(0.5)
    ratios = levels[1:] / levels[:-1]
    assert torch.allclose(ratios, torch.full_like(ratios, (500.0) ** (1 / 14)), rtol=1e-5)
    # every level is a fixed point of the fake quantizer
    assert torch.allclose(P.fake_dfq(levels, b1, b2, bits, "b2", "log"), levels, rtol=1e-5)


def test_dfq_log_spacing_keeps_small_probabilities():
    probs = torch.softmax(torch.randn(512, 65, generator=torch.Generator().manual_seed(0)) * 1.5, -1)
    b1, b2 = torch.tensor(3e-3), torch.tensor(float(probs.max()))
    inside = probs[probs >= b1]
    rel = {sp: float(((P.fake_dfq(inside, b1, b2, 4, "b2", sp) - inside) / inside).abs().mean())
           for sp in P.DFQ_SPACINGS}
    assert rel["log"] < rel["uniform"] / 2


def test_dfq_unknown_spacing():
    with pytest.raises(ValueError, match="spacing"):
        P.fake_dfq(torch.rand(4), torch.tensor(0.01), torch.tensor(0.3), 4, "b2", "cubic")


def test_dfq_regions():
    b1, b2 = torch.tensor(0.01), torch.tensor(0.2)
    x = torch.tensor([0.0, 0.005, 0.01, 0.2, 0.5, 1.0])
    assert P.fake_dfq(x, b1, b2, 4, "b2").tolist()[:2] == [0.0, 0.0]
    assert P.fake_dfq(x, b1, b2, 4, "b2")[-2:].tolist() == pytest.approx([0.2, 0.2])
    assert P.fake_dfq(x, b1, b2, 4, "one")[-2:].tolist() == pytest.approx([1.0, 1.0])
    assert float(P.fake_dfq(x, b1, b2, 4, "b2")[2]) == pytest.approx(0.01)


@pytest.mark.parametrize("spacing", P.DFQ_SPACINGS)
def test_dfq_gradients_reach_b1_and_b2(spacing):
    x = torch.rand(1000) ** 4
    b1 = torch.tensor(0.01, requires_grad=True)
    b2 = torch.tensor(0.3, requires_grad=True)
    (P.fake_dfq(x, b1, b2, 4, "b2", spacing) - x).pow(2).sum().backward()
    assert b1.grad.abs() > 0 and b2.grad.abs() > 0
    assert torch.isfinite(b1.grad) and torch.isfinite(b2.grad)


@given(st.lists(st.floats(0, 1, width=32), min_size=1, max_size=64).map(torch.tensor), bits_st,
       st.sampled_from(["2", "sqrt2"]))
def test_log_quantizer_range(p, bits, base):
    codes = P.log_quantize(p, bits, base)
    assert codes.min() >= 0 and codes.max() <= 2**bits - 1
    deq = P.log_dequantize(codes, bits, base)
    assert bool((deq >= 0).all()) and bool((deq <= 1).all())


def test_log_quantizer_exact_on_powers():
    x = torch.tensor([1.0, 0.5, 0.25, 0.125])
    assert torch.equal(P.log_dequantize(P.log_quantize(x, 4, "2"), 4, "2"), x)
    assert torch.allclose(P.log_dequantize(P.log_quantize(x, 4, "sqrt2"), 4, "sqrt2"), x)


@settings(max_examples=40)
@given(bits_st, st.integers(1, 300), st.integers(0, 10_000))
def test_pack_unpack_roundtrip(bits, n, seed):
    codes = torch.randint(0, 2**bits, (n,), generator=torch.Generator().manual_seed(seed), dtype=torch.int32)
    packed = P.pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(n * bits / 8)
    assert torch.equal(P.unpack_codes(packed, bits, n), codes)


def test_pack_rejects_out_of_range():
    with pytest.raises(ValueError):
        P.pack_codes(torch.tensor([16]), 4)
