"""Checkpoints that survive being killed at any moment, and the identity of a run.

A run directory holds at most two checkpoints, ``checkpoint.pt`` (the latest) and ``checkpoint.prev.pt``, each
with a ``.json`` sidecar naming its SHA-256. A checkpoint is written to a temporary name, flushed to disk and
renamed, and its sidecar is written (the same way) only after that: a file without a matching sidecar is never
read. Loading checks the hash; a damaged latest checkpoint falls back to the previous one, and with neither the
run starts from the beginning (said in the log).

The identity of a run is its composed config without the keys that do not change what is computed (logging,
progress bars, checkpoint cadence, where the assets live, Hydra's own settings); its hash names the default run
directory, so the same command finds its own checkpoint again, and a directory holding another run's results is
refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
# config keys that do not change what a run computes (top-level keys, or "group.key")
OPERATIONAL_KEYS = (
    "hydra",
    "logger",
    "paths",
    "dry_run",
    "trainer.progress",
    "trainer.checkpoint_every",
    "trainer.resume",
    "trainer.keep_checkpoint",
)


def run_identity(cfg: DictConfig | dict) -> dict[str, Any]:
    """The resolved config without :data:`OPERATIONAL_KEYS`: two runs with the same identity compute the same."""
    if isinstance(cfg, DictConfig):
        cfg = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
               for k in cfg if k != "hydra"}  # fmt: skip
    ident = json.loads(json.dumps(cfg, default=str))
    for key in OPERATIONAL_KEYS:
        group, _, name = key.partition(".")
        if not name:
            ident.pop(group, None)
        elif isinstance(ident.get(group), dict):
            ident[group].pop(name, None)
    return ident


def run_id(cfg: DictConfig | dict) -> str:
    """A short hash of :func:`run_identity` (the default run directory's last component)."""
    text = json.dumps(run_identity(cfg), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_id_resolver(*, _root_: DictConfig) -> str:
    """``${loralab_run_id:}`` in ``hydra.run.dir`` / ``hydra.sweep.subdir``: the run's :func:`run_id`."""
    return run_id(_root_)


# ---- random number generators --------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- files ------------------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_write(path: Path, write) -> None:
    """``write(file)`` into ``path.tmp``, flush it to disk, rename it to ``path``; the temporary goes on failure."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def save_checkpoint(directory: Path, state: dict[str, Any], summary: dict[str, Any]) -> Path:
    """Write ``state`` as the latest checkpoint of ``directory``; the one before becomes the previous.
    ``summary`` (e.g. phase and step) goes into the sidecar, readable without loading the checkpoint."""
    latest, previous = directory / CHECKPOINT, directory / PREVIOUS
    if latest.exists() and _sidecar(latest).exists():
        os.replace(latest, previous)
        os.replace(_sidecar(latest), _sidecar(previous))
    _fsync_write(latest, lambda f: torch.save(state, f))
    info = {"file": CHECKPOINT, "sha256": _sha256(latest), **summary}
    _fsync_write(_sidecar(latest), lambda f: f.write(json.dumps(info).encode()))
    return latest


def load_checkpoint(directory: Path) -> dict[str, Any] | None:
    """The newest intact checkpoint of ``directory`` (hash checked), or None when there is none."""
    for path in (directory / CHECKPOINT, directory / PREVIOUS):
        if not path.exists():
            continue
        try:
            expected = json.loads(_sidecar(path).read_text())["sha256"]
        except (OSError, ValueError, KeyError):
            log.warning("ignoring %s: its sidecar %s is missing or unreadable", path, _sidecar(path).name)
            continue
        if _sha256(path) != expected:
            log.warning("ignoring %s: its SHA-256 does not match %s (damaged or half-written)", path, _sidecar(path))
            continue
        return torch.load(path, map_location="cpu", weights_only=False)
    return None


def remove_checkpoints(directory: Path) -> None:
    for name in (CHECKPOINT, PREVIOUS):
        (directory / name).unlink(missing_ok=True)
        _sidecar(directory / name).unlink(missing_ok=True)
