"""Structured-config schemas for the Hydra config groups, and their registration.

Every group file extends its schema (``defaults: [/schema/<group>/...@_here_, _self_]``), so a misspelt key or a
value of the wrong type fails at composition with Hydra's own message, before anything is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from loralab.checkpoint import run_id_resolver
from loralab.methods import METHODS
from loralab.models import ModelConfig

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class TaskConfig:
    """A task: ``kind`` selects the model head and the task code (``loralab.tasks``):
    ``sequence_classification`` (GLUE), ``seq2seq_lm`` / ``causal_lm`` (generation), ``question_answering``
    (extractive SQuAD), ``image_classification``; ``bare`` builds the backbone with its own pre-training head and
    is only for ``dry_run`` counting.

    Data: ``dataset`` (glue, wmt16, iwslt2017, squad, gsm8k, dialogsum, hellaswag, cifar100, food101) and
    ``subset`` (GLUE task, language pair, SQuAD version). ``source``: ``auto`` reads each split from ``data_dir``
    (the official file format) when it holds it, else from the pinned hub dataset (the local Hugging Face cache, or
    a download when the hub can be used; ``loralab.data.hub``), recording each split's source; ``local`` and ``hub``
    force one. ``train_split`` and ``eval_splits`` name the splits; the first eval split picks the best epoch by
    ``main_metric``. ``holdout`` moves that many (seeded) training examples into a split named ``holdout``.
    ``protocol: dev_by_article`` (SQuAD offline, where only the dev set exists) splits the dev set by article,
    ``eval_fraction`` of the articles for evaluation. ``limit_train`` / ``limit_eval`` take the first N records
    (smoke and CPU-scale runs; recorded in the result).

    Text: ``max_seq_length`` (input tokens; causal LMs: prompt + target), ``max_target_length`` (seq2seq
    targets). Generation: ``prompt`` and ``target`` are format strings over a record's fields,
    ``max_new_tokens``, ``num_beams`` (1 = greedy), ``stop`` strings cutting the output. ``chat_template``: wrap
    the user turn ``chat_prompt`` (a format string with the task's instruction; default ``prompt``) and the target
    as user and assistant turns with the tokenizer's chat template (instruct models; loss on the assistant turn
    only, decoding after the generation prompt, until the end-of-turn token). ``zero_shot``: evaluate the eval
    splits once before training with the adapters bypassed (the same prompts and decoding) and record it as
    ``zero_shot`` in the result (generation tasks only). Extractive QA:
    ``doc_stride``, ``max_answer_length``, ``null_threshold`` (v2). Vision: ``image_size``.
    """

    name: str = MISSING
    kind: str = "sequence_classification"
    dataset: str = "glue"
    subset: str | None = None
    data_dir: str | None = None
    source: str = "auto"
    train_split: str = "train"
    eval_splits: list[str] = field(default_factory=lambda: ["validation"])
    holdout: int | None = None
    protocol: str | None = None
    eval_fraction: float = 0.2
    max_seq_length: int = 128
    main_metric: str = "accuracy"
    limit_train: int | None = None
    limit_eval: int | None = None
    max_target_length: int = 128
    prompt: str | None = None
    target: str | None = None
    max_new_tokens: int = 128
    num_beams: int = 1
    stop: list[str] = field(default_factory=list)
    chat_template: bool = False
    chat_prompt: str | None = None
    zero_shot: bool = True
    doc_stride: int = 128
    max_answer_length: int = 30
    null_threshold: float = 0.0
    image_size: int = 224


@dataclass
class TrainerConfig:
    """The training loop: AdamW, warm-up (``warmup_steps``, else ``warmup_ratio`` of all steps), then ``schedule``
    ``linear`` or ``cosine`` decay to zero.

    ``precision``: ``auto`` = bf16 autocast on a GPU that supports it, else fp32. ``max_steps`` stops early
    (smoke runs). ``eval_every``: optimizer steps between evaluations (and at the end of training; null: once per
    epoch; Tied-LoRA's "validation check interval of 30 steps"). ``early_stopping_patience``: evaluations without
    improvement of the main metric before stopping.
    ``iterations``: train this many times, each starting from the best checkpoint so far (the RoLoRA paper's
    iterated baselines LoRA* and AdaLoRA*); methods with phases of their own (RoLoRA) set them themselves.
    ``checkpoint_every``: optimizer steps between checkpoints (also one after every epoch; null: epochs only);
    ``resume``: continue from the run directory's checkpoint (false: start over); ``keep_checkpoint``: keep the
    last checkpoint after the run finished (default: removed, the result and adapter stay).
    ``group_by_length``: batches of examples of similar length (less padding, faster on a CPU), shuffled in
    mega-batches of 50 batches (:class:`loralab.data.batching.LengthGroupedBatches`); off by default: it changes
    which examples share a batch, so it is another run, not the same run made faster.
    """

    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 16
    eval_batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    warmup_steps: int | None = None
    schedule: str = "linear"
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    precision: str = "auto"
    seed: int = 42
    early_stopping_patience: int | None = None
    eval_every: int | None = None
    iterations: int = 1
    progress: bool = True
    save_adapter: bool = True
    checkpoint_every: int | None = 200
    resume: bool = True
    keep_checkpoint: bool = False
    group_by_length: bool = False


@dataclass
class LoggerConfig:
    """Weights & Biases. ``mode``: ``offline`` (default; ``wandb sync`` later), ``online`` or ``disabled``.
    ``name`` defaults to ``<model>-<task>-<method>``; paper tables set ``group`` and ``name`` to find runs again."""

    project: str = "loralab"
    group: str | None = None
    job_type: str | None = None
    name: str | None = None
    mode: str = "offline"


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore (idempotent) and the ``loralab_root`` resolver in OmegaConf."""
    cs = ConfigStore.instance()
    cs.store(group="schema/model", name="model", node=ModelConfig)
    cs.store(group="schema/task", name="task", node=TaskConfig)
    cs.store(group="schema/trainer", name="trainer", node=TrainerConfig)
    cs.store(group="schema/logger", name="logger", node=LoggerConfig)
    for name, cls in METHODS.items():
        cs.store(group="schema/method", name=name, node=cls.config_class)
    if not OmegaConf.has_resolver("loralab_root"):
        OmegaConf.register_new_resolver("loralab_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("loralab_run_id"):
        OmegaConf.register_new_resolver("loralab_run_id", run_id_resolver)
