from loralab.methods.rolora.config import RoloraConfig
from loralab.methods.rolora.method import Rolora, move_ranks, resize_triplets

__all__ = ["Rolora", "RoloraConfig", "move_ranks", "resize_triplets"]
