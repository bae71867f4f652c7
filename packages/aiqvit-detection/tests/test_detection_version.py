from importlib.metadata import version

import aiqvit_detection


def test_version_matches_the_installed_metadata():
    assert aiqvit_detection.__version__ == version("aiqvit-detection")
