"""Tasks: one class per kind of problem, chosen by ``task.dataset`` (see ``build_task``)."""

from loralab.config import TaskConfig
from loralab.tasks.base import Evaluation, Task, TaskData
from loralab.tasks.classification import GlueClassification
from loralab.tasks.generation import GENERATION_DATASETS, Generation
from loralab.tasks.qa import ExtractiveQA
from loralab.tasks.vision import DATASETS as VISION_DATASETS
from loralab.tasks.vision import ImageClassification

KINDS = ("sequence_classification", "seq2seq_lm", "causal_lm", "question_answering", "image_classification", "bare")


def build_task(cfg: TaskConfig) -> Task | None:
    """The task object for a config (None for ``kind: bare``), with its settings checked; loads nothing."""
    if cfg.kind not in KINDS:
        raise ValueError(f"task {cfg.name}: unknown kind {cfg.kind!r}; known: {', '.join(KINDS)}")
    if cfg.kind == "bare":
        return None
    if cfg.dataset == "glue":
        task: Task = GlueClassification(cfg)
    elif cfg.dataset == "squad" and cfg.kind == "question_answering":
        task = ExtractiveQA(cfg)
    elif cfg.dataset in GENERATION_DATASETS:
        task = Generation(cfg)
    elif cfg.dataset in VISION_DATASETS:
        task = ImageClassification(cfg)
    else:
        known = sorted({"glue", *GENERATION_DATASETS, *VISION_DATASETS})
        raise ValueError(f"task {cfg.name}: unknown dataset {cfg.dataset!r}; known: {', '.join(known)}")
    if task.model_kind != cfg.kind:
        raise ValueError(
            f"task {cfg.name}: dataset {cfg.dataset} is a {task.model_kind} task here, but task.kind is {cfg.kind!r}"
        )
    return task


__all__ = ["KINDS", "Evaluation", "Task", "TaskData", "build_task"]
