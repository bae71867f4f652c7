import time

import numpy as np

from aiqvit_pointcloud.data import synthetic as S


def test_at_least_ten_categories_with_parts():
    assert len(S.CATEGORIES) >= 10
    assert S.DEFAULT_SIZES["train"] >= 2000 and S.DEFAULT_SIZES["test"] >= 500
    seg = S.seg_classes()
    ids = [p for parts in seg.values() for p in parts]
    assert ids == list(range(len(ids)))  # global, contiguous part ids
    assert all(len(parts) >= 2 for parts in seg.values())


def test_every_category_generates_all_its_parts(monkeypatch):
    monkeypatch.setattr(S, "OCCLUSION_PROB", 0.0)  # a cut may hide a part; whole objects show them all
    for i, cat in enumerate(S.CATEGORIES):
        pts, parts = S.generate_object(cat, 1024, np.random.default_rng([9, i]))
        assert pts.shape == (1024, 3) and pts.dtype == np.float32
        assert set(np.unique(parts)) == set(S.seg_classes()[cat]), cat
        radius = np.sqrt((pts**2).sum(1))
        assert radius.max() < 1.05 and radius.max() > 0.9  # unit sphere (plus jitter)


def test_occlusion_cuts_away_one_side():
    pts = np.random.default_rng(0).standard_normal((2000, 3))
    for i in range(20):
        keep = S.occlusion_mask(pts, np.random.default_rng([5, i]))
        assert S.OCCLUSION_KEEP[0] - 0.01 <= keep.mean() <= S.OCCLUSION_KEEP[1] + 0.01
        # a plane separates kept from removed points: the linear classifier of the cut is exact
        direction = np.random.default_rng([5, i]).standard_normal(3)
        proj = (pts - pts.mean(0)) @ direction
        assert proj[keep].max() <= proj[~keep].min()
    # occluded objects still have the requested number of distinct points
    for i in range(10):
        obj, _ = S.generate_object("table", 512, np.random.default_rng([6, i]))
        assert obj.shape == (512, 3) and len(np.unique(obj, axis=0)) == 512


def test_generation_is_seeded_and_order_independent():
    a_pts, a_lab, a_parts = S.generate_split("train", 30, 256, seed=3)
    b_pts, _, _ = S.generate_split("train", 30, 256, seed=3)
    np.testing.assert_array_equal(a_pts, b_pts)
    c_pts, _, _ = S.generate_split("train", 12, 256, seed=3)  # a prefix is the same objects
    np.testing.assert_array_equal(c_pts, a_pts[:12])
    d_pts, _, _ = S.generate_split("test", 30, 256, seed=3)
    assert not np.allclose(d_pts, a_pts)
    assert a_lab.tolist() == [i % len(S.CATEGORIES) for i in range(30)]


def test_generation_is_fast_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("AIQVIT_CACHE", str(tmp_path))
    start = time.time()
    ds = S.load_synthetic("test", 128, size=120)
    assert time.time() - start < 10
    files = list((tmp_path / "pointcloud").glob("synthetic-parts-*.npz"))
    assert len(files) == 1
    again = S.load_synthetic("test", 128, size=120)
    np.testing.assert_array_equal(ds.clouds, again.clouds)
    assert "synthetic" in ds.name and not ds.train and ds.num_parts == sum(map(len, S.CATEGORY_PARTS.values()))
    pts, label, parts = ds[5]
    assert pts.shape == (128, 3) and label == 5 and set(parts.tolist()) <= set(S.seg_classes()[S.CATEGORIES[5]])
    # a damaged cache file is regenerated, not trusted
    files[0].write_bytes(b"broken")
    np.testing.assert_array_equal(S.load_synthetic("test", 128, size=120).clouds, ds.clouds)
