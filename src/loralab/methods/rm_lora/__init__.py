from loralab.methods.rm_lora.config import RmLoraConfig
from loralab.methods.rm_lora.method import RmLora, orthogonality_penalty

__all__ = ["RmLora", "RmLoraConfig", "orthogonality_penalty"]
