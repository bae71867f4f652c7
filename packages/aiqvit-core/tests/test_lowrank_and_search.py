import torch
from torch import nn

from aiqvit.config import SearchConfig
from aiqvit.lowrank import LowRankBranch, RankSearchBranch, cap_ranks
from aiqvit.modules import QuantLinear
from aiqvit.quantizers import UniformQuantizer
from aiqvit.reconstruction import UnitData, search_unit_ranks


def _quant_linear(inf=32, outf=24, bits=4, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(inf, outf)
    q = QuantLinear(lin, UniformQuantizer(bits, per_channel=True, channel_dim=0), UniformQuantizer(8))
    q.init_weight_quantizer()
    q.input_quantizer.enabled = False
    return q


def test_cap_ranks():
    assert cap_ranks((10, 20, 50, 100, 150), 64, 384) == [10, 20, 50, 64]


def test_lowrank_starts_at_zero():
    b = LowRankBranch(16, 8, 4, torch.Generator().manual_seed(0))
    assert torch.count_nonzero(b.delta()) == 0


def test_fold_equivalence():
    q = _quant_linear()
    branch = LowRankBranch(32, 24, 5, torch.Generator().manual_seed(0))
    with torch.no_grad():
        branch.B.normal_(0, 0.05)
    q.attach_lowrank(branch)
    x = torch.randn(10, 32)
    before = q(x)
    q.fold_lowrank()
    assert q.lowrank is None
    assert torch.allclose(q(x), before, atol=1e-6)


def test_branch_outside_quantizer_adds_float_output():
    q = _quant_linear()
    branch = LowRankBranch(32, 24, 3, torch.Generator().manual_seed(0))
    with torch.no_grad():
        branch.B.normal_(0, 0.05)
    x = torch.randn(4, 32)
    plain = q(x)
    q.attach_lowrank(branch, inside_quantizer=False)
    assert torch.allclose(q(x), plain + x @ branch.delta().T, atol=1e-6)


def test_search_branch_mixture_and_single_path():
    s = RankSearchBranch(16, 8, [2, 4], torch.Generator().manual_seed(0))
    for b in s.branches:
        with torch.no_grad():
            b.B.normal_()
    w = s.weights()
    mix = w[0] * s.branches[0].delta() + w[1] * s.branches[1].delta()
    assert torch.allclose(s.delta(), mix)
    s.active = 1
    assert torch.allclose(s.delta(), s.branches[1].delta())


def _search_rank(true_rank, seed):
    g = torch.Generator().manual_seed(seed)
    q = _quant_linear(64, 64, seed=seed)
    u = torch.randn(64, true_rank, generator=g) * 0.1
    v = torch.randn(true_rank, 64, generator=g) * 0.1
    x = torch.randn(256, 64, generator=g)
    with torch.no_grad():
        y = nn.functional.linear(x, q.weight_quantizer(q.weight) + u @ v, q.bias)
    data = UnitData([(x[i:i + 1],) for i in range(256)], [{}] * 256, [y[i:i + 1] for i in range(256)], True)
    cfg = SearchConfig(iters=300, candidate_ranks=(4, 16, 48), rank_cost=0.3, lr_theta=1e-2, lr_alpha=3e-2)
    return search_unit_ranks(nn.Sequential(q), data, cfg, torch.Generator().manual_seed(seed + 1))


def test_rank_search_recovers_the_rank_of_the_quantization_error():
    # the target is the quantized layer plus an exactly rank-16 correction: rank 4 cannot fit it,
    # 48 fits no better than 16 and costs more
    for seed in (0, 1):
        assert _search_rank(16, seed) == {"0": 16}
