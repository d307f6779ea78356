from loralab.methods.lora.config import LoraConfig
from loralab.methods.lora.method import Lora

__all__ = ["Lora", "LoraConfig"]
