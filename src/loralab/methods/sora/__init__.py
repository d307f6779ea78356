from loralab.methods.sora.config import SoraConfig
from loralab.methods.sora.method import Sora, soft_threshold_

__all__ = ["Sora", "SoraConfig", "soft_threshold_"]
