from loralab.methods.tied_lora.config import TiedLoraConfig
from loralab.methods.tied_lora.method import VARIANTS, TiedLora

__all__ = ["VARIANTS", "TiedLora", "TiedLoraConfig"]
