"""Exceptions raised for bad input. All derive from :class:`AIQViTError` (a ``ValueError``)."""


class AIQViTError(ValueError):
    """Base class of every error AIQViT raises on bad input."""


class BitWidthError(AIQViTError):
    """A bit-width outside the supported range."""


class CalibrationDataError(AIQViTError):
    """Calibration data is empty, non-finite or of the wrong layout."""


class AdapterError(AIQViTError):
    """No adapter fits the model, or the adapter found nothing to quantize."""


class CheckpointError(AIQViTError):
    """A saved file is missing, corrupt or does not match the model."""


MIN_BITS = 2
MAX_BITS = 8


def check_bits(bits: int, what: str = "bits") -> int:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise BitWidthError(f"{what} must be an integer, got {bits!r}")
    if not MIN_BITS <= bits <= MAX_BITS:
        raise BitWidthError(f"{what}={bits} is out of range: supported bit-widths are {MIN_BITS}..{MAX_BITS}")
    return bits
