from loralab.methods.adalora.config import AdaLoraConfig
from loralab.methods.adalora.method import AdaLora

__all__ = ["AdaLora", "AdaLoraConfig"]
