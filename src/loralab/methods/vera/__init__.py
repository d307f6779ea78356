from loralab.methods.vera.config import VeraConfig
from loralab.methods.vera.method import Vera

__all__ = ["Vera", "VeraConfig"]
