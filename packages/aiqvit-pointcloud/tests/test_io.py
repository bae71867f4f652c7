import subprocess
import sys

import numpy as np
import pytest

from aiqvit_pointcloud.data import io
from aiqvit_pointcloud.data.common import DatasetFormatError


@pytest.mark.parametrize("suffix", [".ply", ".pcd"])
def test_point_cloud_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(0)
    pts, normals = rng.standard_normal((100, 3)), rng.standard_normal((100, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    path = tmp_path / f"cloud{suffix}"
    io.write_point_cloud(path, pts, normals)
    back = io.read_point_cloud(path, with_normals=True)
    assert back.shape == (100, 6) and back.dtype == np.float32
    np.testing.assert_allclose(back[:, :3], pts, atol=1e-5)
    np.testing.assert_allclose(back[:, 3:], normals, atol=1e-5)


def test_mesh_sampling_and_model_input(tmp_path):
    o3d = io.require_open3d()
    mesh = o3d.geometry.TriangleMesh.create_box(2.0, 1.0, 0.5)
    path = tmp_path / "box.ply"
    o3d.io.write_triangle_mesh(str(path), mesh)
    pts = io.sample_mesh(path, 500, seed=1)
    assert pts.shape == (500, 3)
    assert (pts.min(0) >= -1e-6).all()
    assert (pts.max(0) <= np.array([2, 1, 0.5]) + 1e-6).all()
    # every sample lies on the box surface: some coordinate sits on a face
    on_face = np.isclose(pts, 0, atol=1e-6) | np.isclose(pts, [2, 1, 0.5], atol=1e-6)
    assert on_face.any(1).all()
    np.testing.assert_array_equal(pts, io.sample_mesh(path, 500, seed=1))
    x = io.load_for_model(path, 256)
    assert x.shape == (256, 3) and abs(np.sqrt((x**2).sum(1)).max() - 1) < 1e-5


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        io.read_point_cloud(tmp_path / "none.ply")
    junk = tmp_path / "junk.ply"
    junk.write_text("this is not a ply file")
    with pytest.raises(DatasetFormatError, match="no points"):
        io.read_point_cloud(junk)
    with pytest.raises(DatasetFormatError, match="no triangles"):
        io.sample_mesh(junk, 10)
    cloud = tmp_path / "c.ply"
    io.write_point_cloud(cloud, np.zeros((3, 3)))
    with pytest.raises(DatasetFormatError, match="no normals"):
        io.read_point_cloud(cloud, with_normals=True)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        io.write_point_cloud(tmp_path / "x.ply", np.zeros((3, 2)))


def test_missing_open3d_gives_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "open3d", None)
    with pytest.raises(ImportError, match=r"aiqvit-pointcloud\[io\]"):
        io.read_point_cloud(tmp_path / "x.ply")


def test_package_works_without_open3d():
    code = (
        "import sys; sys.modules['open3d'] = None\n"
        "import torch, aiqvit, aiqvit_pointcloud as pc\n"
        "from aiqvit_pointcloud import cli, evaluation, training, weights\n"
        "m = pc.build_model(pc.PointTransformerConfig(num_points=32, widths=(16,), depths=(1,), k=4, num_classes=3))\n"
        "aiqvit.prepare(m.eval(), aiqvit.QuantConfig.for_method('minmax', 4, 4))\n"
        "x = torch.randn(2, 32, 3)\n"
        "with torch.no_grad(), aiqvit.calibration_mode(m): m(x)\n"
        "print(m(x).shape)\n"
        "assert 'open3d' not in {k for k, v in sys.modules.items() if v is not None}\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "torch.Size([2, 3])" in out.stdout
