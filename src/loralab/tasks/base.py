"""What every task provides to the loop: its data, training features, a collator and an evaluation.

A task is built from its config (``build_task``) before anything is loaded, so bad settings fail early. The run
then calls, in order: ``load()`` (records of every split, checked), ``check_lengths(data, tokenizer)`` (before any
weights are loaded), ``train_features(records, tokenizer)``, ``collator(tokenizer)``, ``eval_sets(evals,
tokenizer)`` once, and ``evaluate(model, eval_sets, ...)`` after each epoch. Records follow the hub dataset's layout
whichever source they came from (see ``loralab.data.readers``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from accelerate import Accelerator
from torch import nn

from loralab.config import TaskConfig
from loralab.data.readers import local_label, read_hub, read_local, split_by_article


@dataclass
class TaskData:
    """Records of the training split and of each evaluation split, and where they came from."""

    train: list[Any]
    evals: dict[str, list[Any]]
    source: str
    stats: dict[str, Any] = field(default_factory=dict)  # e.g. truncated examples, filled by the features step
    sources: dict[str, str] = field(default_factory=dict)  # per split: the local folder or "hub:<repo>[/folder][@rev]"


@dataclass
class Evaluation:
    """Metrics (the first split's keys bare, the others suffixed ``_<split>``) and per-example outputs."""

    metrics: dict[str, float]
    outputs: dict[str, list[dict]] = field(default_factory=dict)


class Task:
    """Base class. Subclasses set ``model_kind`` and ``metrics`` and implement the data and evaluation steps."""

    model_kind: ClassVar[str]
    metrics: tuple[str, ...] = ()
    num_labels: int | None = None

    def __init__(self, cfg: TaskConfig) -> None:
        self.cfg = cfg
        if cfg.source not in ("auto", "local", "hub"):
            raise ValueError(f"task {cfg.name}: task.source must be auto, local or hub, got {cfg.source!r}")
        if cfg.protocol not in (None, "dev_by_article"):
            raise ValueError(f"task {cfg.name}: unknown task.protocol {cfg.protocol!r}; known: dev_by_article")
        if cfg.main_metric not in self.metrics:
            raise ValueError(f"task {cfg.name}: main_metric {cfg.main_metric!r} is not one of {self.metrics}")
        for key in ("limit_train", "limit_eval", "holdout"):
            if (getattr(cfg, key) or 0) < 0:
                raise ValueError(f"task {cfg.name}: task.{key} must be >= 0 or null, got {getattr(cfg, key)}")

    # ---- data ----------------------------------------------------------------------------------------------
    def needed_splits(self) -> list[str]:
        """The splits read from a source (``holdout`` is made from the training split; ``dev_by_article`` makes
        train and validation from the dev set)."""
        cfg = self.cfg
        if cfg.protocol == "dev_by_article":
            return ["validation"]
        return [s for s in dict.fromkeys([cfg.train_split, *cfg.eval_splits]) if s != "holdout"]

    def local_folder(self) -> Path | None:
        """``task.data_dir`` when it is read (``task.source`` auto or local) and exists."""
        cfg = self.cfg
        if cfg.source == "hub" or cfg.data_dir is None or not Path(cfg.data_dir).is_dir():
            return None
        return Path(cfg.data_dir)

    def _missing_locally(self, missing: list[str]) -> str:
        """Why splits are not read locally, for errors: the folder, or task.source=local with the files wanted."""
        hint = "; only SQuAD's dev set offline? add task.protocol=dev_by_article" if self.cfg.dataset == "squad" else ""
        return (
            f"task {self.cfg.name}: split(s) {missing} are not in the local folder {self.cfg.data_dir!r} "
            f"(task.data_dir, task.source={self.cfg.source}){hint}"
        )

    def read_local_splits(self, folder: Path, wanted: list[str]) -> dict[str, list[Any]]:
        """The splits ``folder`` holds (none when it holds none of the dataset's files)."""
        try:
            return read_local(self.cfg.dataset, folder, self.cfg.subset)
        except FileNotFoundError:
            return {}

    def read_hub_splits(self, wanted: list[str]) -> tuple[dict[str, list[Any]], str]:
        return read_hub(self.cfg.dataset, self.cfg.subset, wanted)

    def read_splits(self) -> tuple[dict[str, list[Any]], dict[str, str]]:
        """The splits as records, and where each came from: the local folder first, then the hub (its local cache,
        or a download when the hub can be used) for the splits the folder lacks (``task.source``: auto; ``local``
        and ``hub`` force one). A split found nowhere is an error naming it and how to provide it."""
        cfg, wanted = self.cfg, self.needed_splits()
        folder = self.local_folder()
        splits = {} if folder is None else self.read_local_splits(folder, wanted)
        sources = {s: local_label(cfg.dataset, folder, s) for s in splits}
        missing = [s for s in wanted if s not in splits]
        if missing and cfg.source == "local":
            raise FileNotFoundError(
                f"{self._missing_locally(missing)}; set task.data_dir (or LORALAB_ASSETS; GLUE: LORALAB_GLUE_DIR) to "
                "a folder holding them"
            )
        if missing:
            try:
                hub, label = self.read_hub_splits(missing)
            except FileNotFoundError as e:
                raise FileNotFoundError(
                    f"{self._missing_locally(missing)}, and {e}. Provide them: hub access (network, HF_HUB_OFFLINE "
                    "unset), the dataset in the Hugging Face cache, or task.data_dir=/path/to/a/local/copy"
                ) from None
            splits |= hub
            sources |= dict.fromkeys(hub, label)
        return splits, sources

    def load(self) -> TaskData:
        """Read the splits, apply the offline protocol and holdout, check the split names, apply the limits; a split
        left empty (by its file, task.holdout or a zero task.limit_*) is an error naming it and the source."""
        cfg = self.cfg
        splits, sources = self.read_splits()
        source = describe_sources(sources)
        if cfg.protocol == "dev_by_article":
            if "train" in splits:
                raise ValueError(
                    f"task {cfg.name}: protocol dev_by_article is for when only the dev set exists, but "
                    f"{source} has a train split; remove task.protocol"
                )
            splits["train"], splits["validation"] = split_by_article(splits["validation"], cfg.eval_fraction, 0)
            protocol = f" (protocol dev_by_article: dev split by article, {cfg.eval_fraction:g} of articles for eval)"
            source += protocol
            sources = {"train": sources["validation"] + protocol, "validation": sources["validation"] + protocol}
        if cfg.holdout:
            rows = list(splits[cfg.train_split])
            if cfg.holdout >= len(rows):
                raise ValueError(
                    f"task {cfg.name}: task.holdout={cfg.holdout} leaves split {cfg.train_split!r} empty: {source} "
                    f"has {len(rows)} examples in it; lower task.holdout"
                )
            random.Random(0).shuffle(rows)
            splits[cfg.train_split], splits["holdout"] = rows[cfg.holdout :], rows[: cfg.holdout]
            source += f" (holdout: {cfg.holdout} training examples held out as split 'holdout')"
            sources["holdout"] = sources[cfg.train_split] + f" (holdout: {cfg.holdout} training examples)"
        wanted = [cfg.train_split, *cfg.eval_splits]
        missing = [s for s in wanted if s not in splits]
        if missing or not cfg.eval_splits:
            hint = "; only SQuAD's dev set offline? add task.protocol=dev_by_article" if cfg.dataset == "squad" else ""
            raise ValueError(
                f"task {cfg.name}: split(s) {missing or 'task.eval_splits (empty)'} not available; "
                f"{source} has {sorted(splits)} (set task.train_split / task.eval_splits{hint})"
            )
        train = splits[cfg.train_split][: cfg.limit_train]
        evals = {s: splits[s][: cfg.limit_eval] for s in cfg.eval_splits}
        limits = {cfg.train_split: "limit_train", **{s: "limit_eval" for s in cfg.eval_splits}}
        for split, records in {cfg.train_split: train, **evals}.items():
            if records:
                continue
            if splits[split]:
                key = f"task.{limits[split]}"
                cause = f"{key}=0 keeps none of its {len(splits[split])} examples; raise {key} or set it to null"
            else:
                cause = "it has no examples; check its file or choose another split (task.train_split / eval_splits)"
            raise ValueError(f"task {cfg.name}: split {split!r} of {source} is empty: {cause}")
        return TaskData(train, evals, source, sources={s: sources[s] for s in wanted})

    def check_lengths(self, data: TaskData, tokenizer: Any) -> None:
        """Raise ValueError when ``task.max_seq_length`` (or ``max_target_length``) truncates every training example
        to nothing; needs only the tokenizer, so a run calls it before loading weights. No check by default."""

    # ---- features and evaluation (per kind) -----------------------------------------------------------------
    def train_features(self, data: TaskData, tokenizer: Any) -> list[dict]:
        raise NotImplementedError

    def collator(self, tokenizer: Any) -> Callable[[list[dict]], dict]:
        raise NotImplementedError

    def eval_sets(self, data: TaskData, tokenizer: Any) -> dict[str, Any]:
        raise NotImplementedError

    def evaluate(
        self, model: nn.Module, eval_sets: dict[str, Any], tokenizer: Any, accelerator: Accelerator, batch_size: int
    ) -> Evaluation:
        raise NotImplementedError


def describe_sources(sources: dict[str, str]) -> str:
    """One source for all splits, or ``split: source`` pairs when they differ."""
    distinct = set(sources.values())
    return distinct.pop() if len(distinct) == 1 else "; ".join(f"{s}: {src}" for s, src in sources.items())


def suffixed(split_index: int, split: str, metrics: dict[str, float]) -> dict[str, float]:
    """The first eval split's metric names stay bare; the others get ``_<split>`` appended."""
    return {(k if split_index == 0 else f"{k}_{split}"): v for k, v in metrics.items()}
