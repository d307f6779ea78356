"""Backbones: built from a model config (architecture + hub id), with weights from wherever they can be had.

Online, pretrained weights come from the hub id; offline, from ``local_path`` or a Python ``package`` that ships
them (all-MiniLM-L6-v2); with neither, the architecture is built from ``arch`` with random weights (or on the
meta device, for counting parameters without weights). Which source was used is recorded in every result.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from omegaconf import MISSING
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    """Module-name patterns of one architecture family (full-name regexes, matched with ``re.fullmatch``).

    ``targets`` are the presets methods name (LoRA-Mini: ``D`` = every linear whose name ends in ``dense``, ``A`` =
    the attention's query/key/value); ``heads`` the modules trained as the task head, per task kind;
    ``bare`` the model class of the backbone with its own pre-training head (for counting, ``task=bare``).
    """

    targets: dict[str, tuple[str, ...]]
    heads: dict[str, tuple[str, ...]]
    bare: str


_ENCODER_D = (r".*\.dense",)
FAMILIES: dict[str, Family] = {
    # BERT: attention.output.dense, intermediate.dense, output.dense and pooler.dense; head: classifier.
    "bert": Family(
        {"D": _ENCODER_D, "A": (r".*\.(query|key|value)",)},
        {"sequence_classification": ("classifier",), "question_answering": ("qa_outputs",)},
        "base",
    ),
    # RoBERTa: the three per-layer denses plus classifier.dense (no pooler); head: classifier.out_proj.
    "roberta": Family(
        {"D": _ENCODER_D, "A": (r".*\.(query|key|value)",)},
        {"sequence_classification": (r"classifier\.out_proj",), "question_answering": ("qa_outputs",)},
        "base",
    ),
    "deberta": Family(
        {"D": _ENCODER_D, "A": (r".*\.(query_proj|key_proj|value_proj)",)},
        {"sequence_classification": ("classifier",), "question_answering": ("qa_outputs",)},
        "base",
    ),
    # T5: LoRA-Mini Tables 3-4 and 13-14 count q, k, v, the feed-forward wi/wo and lm_head (t5-small r=8 a=b=16:
    # 79 modules x 256 = 20,224; LoRA r=1: 149,376 = "0.14M"); the attention output o is not adapted.
    "t5": Family({"D": (r".*\.(wi|wi_0|wi_1|wo)", "lm_head"), "A": (r".*\.(q|k|v)",)}, {}, "seq2seq_lm"),
    "gpt2": Family(
        {"D": (r".*\.(c_fc|c_proj)",), "A": (r".*\.c_attn",)},
        {"sequence_classification": ("score",), "question_answering": ("qa_outputs",)},
        "causal_lm",
    ),
    "llama": Family(
        {"D": (r".*\.(o_proj|gate_proj|up_proj|down_proj)",), "A": (r".*\.(q_proj|k_proj|v_proj)",)},
        {"sequence_classification": ("score",)},
        "causal_lm",
    ),
    # ViT (transformers 5 module names): D = attention output and MLP, A = q/k/v projections; C = the classifier,
    # the only module RM-LoRA adapts in its ViT experiments (section 5.2: "only the last classification layer").
    "vit": Family(
        {"D": (r".*\.(o_proj|fc1|fc2)",), "A": (r".*\.(q_proj|k_proj|v_proj)",), "C": ("classifier",)},
        {"image_classification": ("classifier",)},
        "base",
    ),
}

MODEL_CLASSES = {
    "sequence_classification": AutoModelForSequenceClassification,
    "seq2seq_lm": AutoModelForSeq2SeqLM,
    "causal_lm": AutoModelForCausalLM,
    "question_answering": AutoModelForQuestionAnswering,
    "image_classification": AutoModelForImageClassification,
    "base": AutoModel,
}


@dataclass
class ModelConfig:
    """A backbone: its hub id, family (module-name presets) and architecture (transformers config fields).

    ``weights``: ``auto`` (local path, then package, then hub unless ``HF_HUB_OFFLINE=1``, then random with a
    warning), ``pretrained`` (fail if none can be had) or ``random``. ``tokenizer``: a local folder tried before
    the hub id, or ``tiny`` for the built-in character tokenizer of the test models. ``gguf_file``: the GGUF file
    inside ``package`` (read and de-quantised by transformers with the ``gguf`` package).
    """

    name: str = MISSING
    family: str = MISSING
    hub_id: str | None = None
    arch: dict[str, Any] = field(default_factory=dict)
    weights: str = "auto"
    local_path: str | None = None
    package: str | None = None
    tokenizer: str | None = None
    tokenizer_class: str | None = None
    gguf_file: str | None = None


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids the hub (then hub ids are not tried at all)."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")


def family(cfg: ModelConfig) -> Family:
    if cfg.family not in FAMILIES:
        raise ValueError(f"model {cfg.name}: unknown family {cfg.family!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[cfg.family]


def resolve_targets(cfg: ModelConfig, targets: str, target_modules: list[str] | None) -> list[str]:
    """Regexes for a method's targets: explicit ``target_modules``, else ``+``-joined preset names."""
    if target_modules:
        return list(target_modules)
    presets = family(cfg).targets
    names = [t.strip() for t in targets.split("+") if t.strip()]
    unknown = [n for n in names if n not in presets]
    if unknown:
        raise ValueError(
            f"unknown target preset(s) {unknown} for {cfg.family} models; presets: {sorted(presets)} "
            "(join them with '+', e.g. method.targets=D+A, or give regexes in method.target_modules)"
        )
    return [p for n in names for p in presets[n]]


def head_modules(cfg: ModelConfig, kind: str) -> list[str]:
    return list(family(cfg).heads.get(kind, ()))


def model_kind(cfg: ModelConfig, task_kind: str) -> str:
    """The transformers model class to build: the task's, or the family's own head for ``bare``."""
    return family(cfg).bare if task_kind == "bare" else task_kind


def _hf_config(cfg: ModelConfig, num_labels: int | None) -> transformers.PretrainedConfig:
    if "model_type" not in cfg.arch:
        raise ValueError(f"model {cfg.name}: arch must name a transformers model_type")
    arch = dict(cfg.arch)
    hf = AutoConfig.for_model(arch.pop("model_type"), **arch)
    if num_labels is not None:
        hf.num_labels = num_labels
    return hf


def package_weights_dir(package: str) -> Path:
    """The folder holding the weights a Python package ships: the package itself (e.g. a GGUF file), or its
    ``model.zip`` unpacked once into the user's cache."""
    spec = importlib.util.find_spec(package)  # located, not imported: the package's own imports may be missing
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"package {package!r} is not installed")
    archive = Path(spec.submodule_search_locations[0]) / "model.zip"
    if not archive.exists():
        return archive.parent
    target = Path(os.environ.get("LORALAB_CACHE", Path.home() / ".cache" / "loralab")) / package
    if not (target / "config.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent))
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return target


def _pretrained_sources(cfg: ModelConfig, what: str) -> list[tuple[str, dict[str, Any]]]:
    """Where ``from_pretrained`` can look, in order, with the arguments each needs (a package's GGUF file)."""
    sources: list[tuple[str, dict[str, Any]]] = []
    if cfg.local_path and Path(cfg.local_path).exists():
        sources.append((cfg.local_path, {}))
    if cfg.package:
        try:
            sources.append(
                (str(package_weights_dir(cfg.package)), {"gguf_file": cfg.gguf_file} if cfg.gguf_file else {})
            )
        except ImportError:
            log.warning("model %s: package %s (for its %s) is not installed", cfg.name, cfg.package, what)
    if cfg.hub_id and not hub_offline():
        sources.append((cfg.hub_id, {}))
    return sources


def build_model(
    cfg: ModelConfig, kind: str, num_labels: int | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, str]:
    """Build the backbone for a task kind; returns the model and where its weights came from.

    ``device="meta"`` builds the architecture without allocating weights (parameter counting, planning).
    """
    family(cfg)
    cls = MODEL_CLASSES[kind]
    labelled = kind in ("sequence_classification", "image_classification")
    hf = _hf_config(cfg, num_labels if labelled else None)
    if str(device) == "meta":
        with torch.device("meta"):
            return cls.from_config(hf), "meta"
    if cfg.weights not in ("auto", "pretrained", "random"):
        raise ValueError(f"model.weights must be auto, pretrained or random, got {cfg.weights!r}")
    if cfg.weights != "random":
        errors = []
        for src, extra in _pretrained_sources(cfg, "weights"):
            try:
                if labelled:
                    extra = {**extra, "num_labels": num_labels, "ignore_mismatched_sizes": True}
                return cls.from_pretrained(src, **extra), src
            except OSError as e:  # unreachable hub, missing files
                errors.append(f"{src}: {str(e).splitlines()[0]}")
        if cfg.weights == "pretrained":
            raise FileNotFoundError(
                f"model {cfg.name}: no pretrained weights could be loaded ({errors or 'no source configured'}); "
                "set model.local_path to a local copy, or model.weights=random to train from scratch"
            )
        log.warning("model %s: no pretrained weights available (%s); using RANDOM weights", cfg.name, errors)
    return cls.from_config(hf), "random"


def tiny_tokenizer() -> PreTrainedTokenizerBase:
    """A character-level WordPiece tokenizer needing no files (for the tiny test models; vocab < 256)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {t: i for i, t in enumerate(specials + chars + ["##" + c for c in chars])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        eos_token="[SEP]",
    )


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The tokenizer: built-in ``tiny``, the ``tokenizer`` folder, ``local_path``, the package, or the hub id."""
    if cfg.tokenizer == "tiny":
        tok = tiny_tokenizer()
    else:
        own = [(cfg.tokenizer, {})] if cfg.tokenizer and Path(cfg.tokenizer).exists() else []
        sources = own + _pretrained_sources(cfg, "tokenizer")
        if not sources:
            raise FileNotFoundError(
                f"model {cfg.name}: no tokenizer found (folder {cfg.tokenizer!r} does not exist, no local_path or "
                "package, and the hub is off); point model.tokenizer at a local tokenizer folder"
            )
        loader = getattr(transformers, cfg.tokenizer_class) if cfg.tokenizer_class else AutoTokenizer
        tok = loader.from_pretrained(sources[0][0], **sources[0][1])
    if tok.pad_token is None:  # GPT-2 / Llama: pad with EOS, as is usual for classification
        tok.pad_token = tok.eos_token
    return tok
