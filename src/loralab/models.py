"""Backbones: built from a model config (architecture + hub id), with weights from wherever they can be had.

Pretrained weights come from ``local_path``, a Python ``package`` that ships them (all-MiniLM-L6-v2), or the hub
id (the local Hugging Face cache, else a download when the hub can be used); none of them is an error, found
before any data or weights are read (:func:`resolve_weights`). Random weights only when asked for
(``weights: random``); the meta device builds the architecture without weights (counting, planning). Which source
was used is recorded in every result.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
import shutil
import socket
import tempfile
import urllib.parse
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

    ``weights``: ``auto`` or ``pretrained`` (the same: ``local_path``, then ``package``, then ``hub_id`` from the
    local Hugging Face cache or, when the hub can be used, downloaded; none of them is an error before any data is
    read) or ``random`` (the architecture from ``arch`` with random weights: only when asked for, e.g. the tiny
    test models). ``tokenizer``: a local folder tried before
    the hub id, or ``tiny`` for the built-in character tokenizer of the test models. ``gguf_file``: the GGUF file
    inside ``package`` (read and de-quantised by transformers with the ``gguf`` package).

    ``bos_token``: the start token causal-LM tasks put before a plain prompt: ``auto`` (the tokenizer's BOS, if
    any: GPT-2 ``<|endoftext|>``, Llama ``<s>``), ``none``, or a token of the vocabulary. A chat-turn marker
    (``<|im_start|>``: SmolLM2-Instruct's tokenizer names it as BOS) is refused: it opens a turn the model then
    often closes at once (see :func:`set_start_token`).
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
    bos_token: str = "auto"


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids the hub (then only the local Hugging Face cache is read)."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")


@functools.cache
def hub_reachable() -> bool:
    """Whether the hub's host answers a TCP connection within 3 s (checked once per process)."""
    from huggingface_hub import constants

    host = urllib.parse.urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


def hub_available() -> bool:
    """Whether files may be downloaded from the hub: not forbidden (``HF_HUB_OFFLINE``) and reachable. Without
    it, hub ids are still read from the local Hugging Face cache (``HF_HUB_CACHE``)."""
    return not hub_offline() and hub_reachable()


def hub_state() -> str:
    """Why the hub cannot be used, for error messages."""
    from huggingface_hub import constants

    why = "HF_HUB_OFFLINE is set" if hub_offline() else f"{constants.ENDPOINT} is unreachable"
    return f"the hub cannot be used ({why}) and the Hugging Face cache ({constants.HF_HUB_CACHE}) does not hold it"


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


WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "spiece.model")


@dataclass(frozen=True)
class Source:
    """Where weights or a tokenizer come from, found without loading them: ``kind`` is ``local`` (a folder),
    ``package`` (a Python package's files), ``hub`` (a hub id: from the local cache when ``cached``, else
    downloaded), ``builtin`` (the tiny test tokenizer) or ``random`` (weights asked to be random)."""

    kind: str
    location: str
    cached: bool = True
    gguf_file: str | None = None

    @property
    def label(self) -> str:
        """What ``results.json`` records: the folder, ``hub:<id>``, ``random`` or ``tiny``."""
        return f"hub:{self.location}" if self.kind == "hub" else self.location

    def describe(self) -> str:
        if self.kind == "hub":
            return f"hub {self.location} ({'local HF cache' if self.cached else 'download'})"
        return {"local": f"local {self.location}", "package": f"package {self.location}"}.get(self.kind, self.kind)


def _hub_cached(hub_id: str, files: tuple[str, ...]) -> bool:
    """Whether the local Hugging Face cache holds any of ``files`` of ``hub_id``."""
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(hub_id, f), str) for f in files)


def _find(cfg: ModelConfig, what: str, files: tuple[str, ...], hint: str) -> Source:
    """The first of local_path, package, hub (cache, then download) holding ``files``; else an error naming every
    place looked at and how to provide them."""
    looked = []
    if cfg.local_path:
        folder = Path(cfg.local_path).expanduser()
        if any((folder / f).is_file() for f in files):
            return Source("local", str(folder))
        looked.append(
            f"model.local_path {folder} {'holds none of ' + str(list(files)) if folder.is_dir() else 'does not exist'}"
        )
    if cfg.package:
        try:
            folder = package_weights_dir(cfg.package)
            if cfg.gguf_file is None or (folder / cfg.gguf_file).is_file():
                return Source("package", str(folder), gguf_file=cfg.gguf_file)
            looked.append(f"package {cfg.package} lacks {cfg.gguf_file}")
        except ImportError:
            looked.append(f"package {cfg.package} is not installed")
    if cfg.hub_id:
        if _hub_cached(cfg.hub_id, files):
            return Source("hub", cfg.hub_id)
        if hub_available():
            return Source("hub", cfg.hub_id, cached=False)
        looked.append(f"hub {cfg.hub_id}: {hub_state()}")
    hub = (
        f"hub access (network, HF_HUB_OFFLINE unset; hub id {cfg.hub_id}), a copy in the Hugging Face cache "
        "(HF_HUB_CACHE), or "
        if cfg.hub_id
        else f"(no hub id to download: see conf/model/{cfg.name}.yaml) "
    )
    raise FileNotFoundError(
        f"model {cfg.name}: no {what} to be had ({'; '.join(looked) or 'no hub_id, local_path or package set'}). "
        f"Provide them: {hub}model.local_path=/path/to/a/folder with {hint}"
    )


def resolve_weights(cfg: ModelConfig) -> Source:
    """Where ``build_model`` will take the weights from, without loading them (a run calls it before reading any
    data). ``model.weights=random`` is the only way to random weights; anything else with no weights is an error."""
    if cfg.weights not in ("auto", "pretrained", "random"):
        raise ValueError(f"model.weights must be auto, pretrained or random, got {cfg.weights!r}")
    if cfg.weights == "random":
        return Source("random", "random")
    return _find(
        cfg, "pretrained weights", WEIGHT_FILES if cfg.gguf_file is None else (cfg.gguf_file,),
        "config.json and model.safetensors (e.g. `huggingface-cli download <hub id> --local-dir /path`); or train "
        "from scratch on purpose with model.weights=random",
    )  # fmt: skip


def resolve_tokenizer(cfg: ModelConfig) -> Source:
    """Where ``load_tokenizer`` will take the tokenizer from: ``tiny`` (built in), the ``tokenizer`` folder, then
    as the weights (local_path, package, hub)."""
    if cfg.tokenizer == "tiny":
        return Source("builtin", "tiny")
    if cfg.tokenizer and Path(cfg.tokenizer).is_dir():
        return Source("local", cfg.tokenizer)
    return _find(cfg, "tokenizer", TOKENIZER_FILES, "the tokenizer files (or model.tokenizer=/path/to/tokenizer)")


def build_model(
    cfg: ModelConfig, kind: str, num_labels: int | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, str]:
    """Build the backbone for a task kind; returns the model and where its weights came from (``Source.label``).

    ``device="meta"`` builds the architecture without allocating weights (parameter counting, planning).
    """
    family(cfg)
    cls = MODEL_CLASSES[kind]
    labelled = kind in ("sequence_classification", "image_classification")
    hf = _hf_config(cfg, num_labels if labelled else None)
    if str(device) == "meta":
        with torch.device("meta"):
            return cls.from_config(hf), "meta"
    source = resolve_weights(cfg)
    if source.kind == "random":
        return cls.from_config(hf), "random"
    extra: dict[str, Any] = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    if labelled:
        extra |= {"num_labels": num_labels, "ignore_mismatched_sizes": True}
    try:
        return cls.from_pretrained(source.location, local_files_only=not hub_available(), **extra), source.label
    except OSError as e:  # a damaged or partial copy
        raise FileNotFoundError(f"model {cfg.name}: loading weights from {source.describe()} failed: {e}") from e


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
    """The tokenizer from wherever :func:`resolve_tokenizer` finds it."""
    source = resolve_tokenizer(cfg)
    if source.kind == "builtin":
        tok = tiny_tokenizer()
    else:
        loader = getattr(transformers, cfg.tokenizer_class) if cfg.tokenizer_class else AutoTokenizer
        extra = {"gguf_file": source.gguf_file} if source.gguf_file else {}
        tok = loader.from_pretrained(source.location, local_files_only=not hub_available(), **extra)
    if tok.pad_token is None:  # GPT-2 / Llama: pad with EOS, as is usual for classification
        tok.pad_token = tok.eos_token
    set_start_token(cfg, tok)
    return tok


# special tokens that open or close a chat turn (ChatML, Llama-3, Gemma, Phi-3, Llama-2-chat)
CHAT_TURN_TOKEN = re.compile(
    r"<\|im_start\|>|<\|im_end\|>|<\|start_header_id\|>|<\|end_header_id\|>|<\|eot_id\|>|<start_of_turn>|"
    r"<end_of_turn>|<\|(user|assistant|system|end)\|>|\[/?INST\]"
)


def is_chat_turn_token(token: str, tok: PreTrainedTokenizerBase) -> bool:
    """Whether ``token`` marks a chat turn: a known turn marker, or written literally in the tokenizer's chat
    template (a template that needs a true start token refers to it as ``bos_token`` instead)."""
    template = tok.chat_template if isinstance(tok.chat_template, str) else ""
    return bool(CHAT_TURN_TOKEN.fullmatch(token)) or token in template


def set_start_token(cfg: ModelConfig, tok: PreTrainedTokenizerBase) -> None:
    """Make ``tok.bos_token`` the start token ``model.bos_token`` names (``auto``: keep the tokenizer's; ``none``:
    none); a chat-turn marker or a token outside the vocabulary is an error naming the setting to change."""
    if cfg.bos_token == "none":
        tok.bos_token = None
        return
    if cfg.bos_token != "auto":
        if tok.convert_tokens_to_ids(cfg.bos_token) in (None, tok.unk_token_id) and cfg.bos_token != tok.unk_token:
            raise ValueError(
                f"model {cfg.name}: model.bos_token={cfg.bos_token!r} is not a token of its tokenizer; set it to a "
                "token of the vocabulary, auto (the tokenizer's) or none"
            )
        tok.bos_token = cfg.bos_token
    if tok.bos_token is not None and is_chat_turn_token(tok.bos_token, tok):
        where = "its tokenizer's BOS token" if cfg.bos_token == "auto" else "model.bos_token"
        raise ValueError(
            f"model {cfg.name}: {where} {tok.bos_token!r} is a chat-turn marker, not a start-of-text token: put "
            "before a prompt it opens a turn the model then often closes at once; set model.bos_token=none (or a "
            "document start token) and task.chat_template=true to prompt an instruct model in its own format"
        )
