"""A local Hugging Face hub cache (``HF_HUB_CACHE`` layout) built in a test: repositories under the papers' hub
ids holding tiny models, tokenizers and data files, read by loralab exactly as a downloaded copy (no network)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def snapshot(cache: Path, repo: str, repo_type: str = "dataset", revision: str = "main") -> Path:
    """The snapshot folder of ``repo`` at ``revision`` in ``cache`` (created, with its ref), to write files into."""
    folder = cache / f"{repo_type}s--{repo.replace('/', '--')}"
    commit = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()
    ref = folder / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def glue_rows(n: int, pair: bool = True) -> list[dict]:
    """Learnable GLUE-like rows in the hub's layout (RTE / MRPC columns)."""
    words = ["cat", "dog", "bird", "fish", "tree", "car", "sun", "moon"]
    rows = []
    for i in range(n):
        a, b = words[i % 8], words[(i * 3 + 1) % 8]
        same = i % 2 == 0
        row = {"sentence1": f"the {a} sat here.", "label": 1 - same, "idx": i}
        if pair:
            row["sentence2"] = f"the {a if same else b} sat."
        rows.append(row)
    return rows


def tiny_roberta_hub(cache: Path, n_train: int = 24, n_dev: int = 8) -> dict[str, Path]:
    """The paper profile's LoRA-Mini RTE run in a hub cache: a tiny RoBERTa (random, saved as if pretrained) with
    the built-in character tokenizer under ``FacebookAI/roberta-base``, and GLUE RTE under ``nyu-mll/glue``."""
    from transformers import RobertaConfig, RobertaForMaskedLM

    from loralab.models import tiny_tokenizer

    model = snapshot(cache, "FacebookAI/roberta-base", "model")
    config = RobertaConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=130, type_vocab_size=1,
                           pad_token_id=0)  # fmt: skip
    RobertaForMaskedLM(config).save_pretrained(model)
    tiny_tokenizer().save_pretrained(model)
    glue = snapshot(cache, "nyu-mll/glue")
    write_parquet(glue / "rte" / "train-00000-of-00001.parquet", glue_rows(n_train))
    write_parquet(glue / "rte" / "validation-00000-of-00001.parquet", glue_rows(n_dev))
    return {"model": model, "glue": glue}


# the paper profile's RTE run on the cached tiny model: the tokenizer from the hub (not the local RoBERTa files),
# no local GLUE folder (every split from the hub), a CPU-sized schedule
PAPER_RTE = ["model=roberta-base", "task=glue/rte", "method=lora", "model.tokenizer=null", "model.tokenizer_class=null",
             "task.max_seq_length=32", "trainer.epochs=1", "trainer.batch_size=8", "logger.mode=disabled"]  # fmt: skip
