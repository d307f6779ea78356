from loralab.methods.full_ft.config import FullFTConfig
from loralab.methods.full_ft.method import FullFT

__all__ = ["FullFT", "FullFTConfig"]
