import numpy as np
import pytest
import torch

from aiqvit_pointcloud import ops


def brute_fps(xyz: np.ndarray, m: int) -> list[int]:
    chosen, dist = [0], np.full(len(xyz), np.inf)
    for _ in range(m - 1):
        dist = np.minimum(dist, ((xyz - xyz[chosen[-1]]) ** 2).sum(1))
        chosen.append(int(np.argmax(dist)))
    return chosen


def test_fps_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    xyz = torch.rand(3, 200, 3, generator=g, dtype=torch.float64)
    idx = ops.farthest_point_sample(xyz, 37, backend="torch")
    assert idx.shape == (3, 37)
    for b in range(3):
        assert idx[b].tolist() == brute_fps(xyz[b].numpy(), 37)
        assert len(set(idx[b].tolist())) == 37


def test_fps_all_points_is_a_permutation():
    xyz = torch.rand(2, 50, 3, generator=torch.Generator().manual_seed(1))
    idx = ops.farthest_point_sample(xyz, 50)
    assert (idx.sort(1).values == torch.arange(50)).all()


def test_knn_matches_brute_force_distances():
    g = torch.Generator().manual_seed(2)
    ref = torch.rand(2, 300, 3, generator=g)
    query = torch.rand(2, 40, 3, generator=g)
    dist2, idx = ops.knn(query, ref, 16)
    assert idx.shape == (2, 40, 16) and dist2.shape == (2, 40, 16)
    brute = ((query[:, :, None].double() - ref[:, None].double()) ** 2).sum(-1)
    expect = brute.sort(-1).values[..., :16]
    got = torch.gather(brute, 2, idx)  # true distances of the chosen neighbours
    torch.testing.assert_close(got, expect, atol=1e-5, rtol=0)
    torch.testing.assert_close(dist2.double(), expect, atol=1e-5, rtol=0)
    assert (dist2[..., 1:] >= dist2[..., :-1] - 1e-6).all()  # nearest first


def test_knn_self_is_first_neighbour():
    xyz = torch.rand(2, 64, 3, generator=torch.Generator().manual_seed(3))
    _, idx = ops.knn(xyz, xyz, 8)
    assert (idx[..., 0] == torch.arange(64)).all()


def test_index_points_matches_loop():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 20, 5, generator=g)
    idx = torch.randint(0, 20, (3, 7, 4), generator=g)
    out = ops.index_points(x, idx)
    assert out.shape == (3, 7, 4, 5)
    for b in range(3):
        torch.testing.assert_close(out[b], x[b][idx[b]])
    flat = ops.index_points(x, idx[:, :, 0])
    torch.testing.assert_close(flat, out[:, :, 0])


def test_three_nn_interpolation():
    g = torch.Generator().manual_seed(5)
    coarse = torch.rand(2, 30, 3, generator=g)
    fine = torch.rand(2, 100, 3, generator=g)
    idx, w = ops.three_nn_weights(fine, coarse)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 100))
    d = ((fine[:, :, None] - coarse[:, None]) ** 2).sum(-1).sqrt()
    expect_idx = d.argsort(-1)[..., :3]
    assert (idx.sort(-1).values == expect_idx.sort(-1).values).all()
    recip = 1 / (torch.gather(d, 2, idx) + 1e-8)
    torch.testing.assert_close(w, recip / recip.sum(-1, keepdim=True))
    # interpolating a linear function of the coarse points' own features reproduces them at those points
    feats = torch.randn(2, 30, 4, generator=g)
    i2, w2 = ops.three_nn_weights(coarse, coarse)
    torch.testing.assert_close(ops.interpolate(feats, i2, w2), feats, atol=1e-5, rtol=0)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        ops.farthest_point_sample(torch.rand(10, 3), 4)
    with pytest.raises(ValueError, match="cannot sample"):
        ops.farthest_point_sample(torch.rand(1, 10, 3), 11)
    with pytest.raises(ValueError, match="k=20"):
        ops.knn(torch.rand(1, 5, 3), torch.rand(1, 10, 3), 20)
    with pytest.raises(ValueError, match="backend"):
        ops.farthest_point_sample(torch.rand(1, 10, 3), 4, backend="tpu")


def test_cuda_backend_refused_for_cpu_tensors():
    with pytest.raises(RuntimeError, match="pointnet2_ops"):
        ops.farthest_point_sample(torch.rand(1, 10, 3), 4, backend="cuda")


@pytest.mark.skipif(not ops.cuda_kernels_available(), reason="needs pointnet2_ops and CUDA")
def test_cuda_kernels_agree_with_torch():
    g = torch.Generator().manual_seed(6)
    # pointnet2_ops' FPS ignores points within ~0.03 of the origin: keep the cloud away from it
    xyz = (torch.rand(2, 512, 3, generator=g) + 1.0).cuda()
    assert ops.farthest_point_sample(xyz, 128, backend="cuda").tolist() == \
        ops.farthest_point_sample(xyz, 128, backend="torch").tolist()
    feats = torch.randn(2, 512, 16, generator=g).cuda()
    _, idx = ops.knn(xyz, xyz, 16)
    torch.testing.assert_close(ops.index_points(feats, idx, backend="cuda"),
                               ops.index_points(feats, idx, backend="torch"))
    coarse = xyz[:, :128].contiguous()
    i1, w1 = ops.three_nn_weights(xyz, coarse, backend="cuda")
    i2, w2 = ops.three_nn_weights(xyz, coarse, backend="torch")
    torch.testing.assert_close(ops.interpolate(feats[:, :128], i1, w1), ops.interpolate(feats[:, :128], i2, w2),
                               atol=1e-4, rtol=1e-4)
