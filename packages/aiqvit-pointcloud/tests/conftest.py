import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test writes its cache (synthetic data, weights) into its own tmp dir."""
    monkeypatch.setenv("AIQVIT_CACHE", str(tmp_path / "cache"))
