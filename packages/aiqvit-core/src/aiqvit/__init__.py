"""AIQViT core: post-training quantization engine for vision transformers (torch only)."""

from ._version import __version__  # noqa: F401
from .adapters import ModelAdapter, find_adapter, register_adapter, registered_adapters
from .balancing import AttentionProjections, balance_attention
from .calibration import calibration_mode, quantization_disabled, quantizers, set_quantization
from .config import AIQVIT_PAPER_SETTINGS, METHODS, QuantConfig, ReconstructionConfig, SearchConfig
from .errors import AdapterError, AIQViTError, BitWidthError, CalibrationDataError, CheckpointError
from .lowrank import LowRankBranch, RankSearchBranch
from .modules import AttentionQuantizers, QuantConv2d, QuantLinear
from .prepare import PreparedInfo, get_info, prepare
from .quantizers import DynamicFocusingQuantizer, LogQuantizer, Quantizer, UniformQuantizer

__all__ = [
    "AIQVIT_PAPER_SETTINGS", "AIQViTError", "AdapterError", "AttentionProjections",
    "AttentionQuantizers", "BitWidthError", "CalibrationDataError", "CheckpointError",
    "DynamicFocusingQuantizer", "LogQuantizer", "LowRankBranch", "METHODS", "ModelAdapter",
    "PreparedInfo", "QuantConfig", "QuantConv2d", "QuantLinear", "Quantizer", "RankSearchBranch",
    "ReconstructionConfig", "SearchConfig", "UniformQuantizer", "balance_attention",
    "calibration_mode", "find_adapter", "get_info", "prepare", "quantization_disabled",
    "quantizers", "register_adapter", "registered_adapters", "set_quantization",
]

from . import toy as _toy  # noqa: E402,F401  (registers the reference adapter)
from .api import QuantizationReport, finalize, quantize  # noqa: E402
from .serialization import load_quantized, read_quantization_map, save_quantized  # noqa: E402

__all__ += ["QuantizationReport", "finalize", "load_quantized", "quantize", "read_quantization_map", "save_quantized"]
