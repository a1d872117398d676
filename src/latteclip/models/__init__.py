"""Models: the OpenCLIP loader, text-tower helpers and the prototype bank."""

from latteclip.models.loader import LoadedModel, load_clip, register_project_configs
from latteclip.models.prototypes import PrototypeBank
from latteclip.models.text import TokenCache, class_text_features, encode_texts

__all__ = [
    "LoadedModel",
    "PrototypeBank",
    "TokenCache",
    "class_text_features",
    "encode_texts",
    "load_clip",
    "register_project_configs",
]
