from importlib.metadata import version

import aiqvit_pointcloud


def test_version_matches_the_installed_metadata():
    assert aiqvit_pointcloud.__version__ == version("aiqvit-pointcloud")
