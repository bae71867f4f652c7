import os

import pytest

from aiqvit_detection.synthetic import SyntheticSpec, generate_dataset


def _mmdet_available() -> bool:
    try:
        import mmcv._ext  # noqa: F401  (compiled ops: RoIAlign, NMS)
        import mmdet  # noqa: F401
    except ImportError:
        return False
    return True


HAVE_MMDET = _mmdet_available()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``mmdet`` need mmdet + compiled mmcv. Without them they are skipped, unless
    ``AIQVIT_REQUIRE_MMDET=1`` (CI's detection venv), where a missing mmcv is a failure."""
    if HAVE_MMDET:
        return
    if os.environ.get("AIQVIT_REQUIRE_MMDET") == "1":
        raise pytest.UsageError("AIQVIT_REQUIRE_MMDET=1 but mmdet / mmcv with compiled ops cannot be imported")
    skip = pytest.mark.skip(reason="needs mmdet and mmcv with compiled ops (the detection venv)")
    for item in items:
        if "mmdet" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config):
    config.addinivalue_line("markers", "mmdet: needs mmdet and mmcv with compiled ops")


def skip_without_labelme(exc: Exception) -> None:
    """The labelme sdist could not be found or fetched: skip, except with ``AIQVIT_REQUIRE_LABELME=1``
    (CI, where the registry is reachable), where that is a failure."""
    if os.environ.get("AIQVIT_REQUIRE_LABELME") == "1":
        pytest.fail(f"AIQVIT_REQUIRE_LABELME=1 but the labelme sdist is unavailable: {exc}")
    pytest.skip(f"labelme sdist unavailable: {exc}")


TINY_SPEC = SyntheticSpec(train_images=8, val_images=6, seed=3)


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory):
    """A tiny synthetic COCO root (8 train, 6 val images)."""
    return generate_dataset(tmp_path_factory.mktemp("tiny") / "coco", TINY_SPEC, progress=False)
