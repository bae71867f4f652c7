from importlib.metadata import version

import aiqvit_vision


def test_version_matches_the_installed_metadata():
    assert aiqvit_vision.__version__ == version("aiqvit-vision")
