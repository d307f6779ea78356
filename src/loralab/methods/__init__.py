"""Methods, registered by name. Importing this package registers every built-in method."""

from loralab.methods import adalora, full_ft, lora, lora_mini, rm_lora, rolora, sora, tied_lora, vera  # noqa: F401  (registration)
from loralab.methods.base import METHODS, Method, MethodConfig, build_method, register

__all__ = ["METHODS", "Method", "MethodConfig", "build_method", "register"]
