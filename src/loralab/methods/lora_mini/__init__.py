from loralab.methods.lora_mini.config import LoraMiniConfig
from loralab.methods.lora_mini.method import LoraMini

__all__ = ["LoraMini", "LoraMiniConfig"]
