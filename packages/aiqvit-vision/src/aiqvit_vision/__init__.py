"""AIQViT for image classification: timm adapters (ViT, DeiT, DINOv2, Swin), data, tasks and CLI.

Importing the package registers :class:`ViTAdapter` and :class:`SwinAdapter` with ``aiqvit``.
"""

from .adapters import SwinAdapter, ViTAdapter
from .attention import QuantAttention, QuantWindowAttention
from .models import UnknownModelError, create_model, load_state_dict_strict, read_state_dict

__version__ = "0.4.1"

__all__ = ["QuantAttention", "QuantWindowAttention", "SwinAdapter", "UnknownModelError", "ViTAdapter",
           "create_model", "load_state_dict_strict", "read_state_dict"]
