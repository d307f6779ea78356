"""Image classification (RM-LoRA Figures 1-2: ViT-B/16 on CIFAR-100 and Food-101).

Images are resized to ``task.image_size`` (bilinear), scaled to [0, 1] and normalised with mean = std = 0.5 per
channel (the ViT-B/16 image processor's settings), with no augmentation. CIFAR-100 records hold the pixels; Food-101
records hold file paths, opened batch by batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from loralab.config import TaskConfig
from loralab.tasks.base import Evaluation, Task, TaskData, suffixed

DATASETS = {"cifar100": ("img", "fine_label", 100), "food101": ("image", "label", 101)}


class ImageClassification(Task):
    """A classifier head on a vision transformer; accuracy."""

    model_kind = "image_classification"
    metrics = ("accuracy",)

    def __init__(self, cfg: TaskConfig) -> None:
        self.image_key, self.label_key, self.num_labels = DATASETS[cfg.dataset]
        super().__init__(cfg)

    def pixels(self, image: Any) -> torch.Tensor:
        """One image (array, PIL image or file path) as a normalised [3, size, size] tensor."""
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        elif not isinstance(image, Image.Image):
            with Image.open(image) as f:
                image = f.convert("RGB")
        size = self.cfg.image_size
        array = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
        return torch.from_numpy((array - 0.5) / 0.5).permute(2, 0, 1)

    def load(self) -> TaskData:
        """The records, with every label checked against the dataset's classes."""
        data = super().load()
        for split, records in {self.cfg.train_split: data.train, **data.evals}.items():
            for i, record in enumerate(records):
                if not 0 <= record[self.label_key] < self.num_labels:
                    raise ValueError(
                        f"task {self.cfg.name}: split {split!r} of {data.source}, example {i}: {self.label_key} "
                        f"{record[self.label_key]} is not one of the {self.num_labels} classes 0..{self.num_labels - 1}"
                        f"; fix the data or check task.dataset"
                    )
        return data

    def _features(self, records: list[dict]) -> list[dict]:
        return [{"image": r[self.image_key], "labels": int(r[self.label_key])} for r in records]

    def train_features(self, data: TaskData, tokenizer: Any) -> list[dict]:
        return self._features(data.train)

    def collator(self, tokenizer: Any) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        def collate(features: list[dict]) -> dict[str, torch.Tensor]:
            return {
                "pixel_values": torch.stack([self.pixels(f["image"]) for f in features]),
                "labels": torch.tensor([f["labels"] for f in features]),
            }

        return collate

    def eval_sets(self, data: TaskData, tokenizer: Any) -> dict[str, list[dict]]:
        return {s: self._features(records) for s, records in data.evals.items()}

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, eval_sets: dict[str, list[dict]], tokenizer: Any, accelerator: Accelerator,
        batch_size: int,
    ) -> Evaluation:  # fmt: skip
        model.eval()
        metrics = {}
        for i, (split, features) in enumerate(eval_sets.items()):
            hits = 0
            for batch in DataLoader(features, batch_size, collate_fn=self.collator(tokenizer)):
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                hits += int((model(pixel_values=batch["pixel_values"]).logits.argmax(-1) == batch["labels"]).sum())
            metrics.update(suffixed(i, split, {"accuracy": hits / len(features)}))
        model.train()
        return Evaluation(metrics)
