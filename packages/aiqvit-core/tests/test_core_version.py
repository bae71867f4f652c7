from importlib.metadata import version

import aiqvit


def test_version_matches_the_installed_metadata():
    assert aiqvit.__version__ == version("aiqvit")
