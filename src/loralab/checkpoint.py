"""Checkpoints that survive being killed at any moment, and the identity of a run.

A run directory holds at most two checkpoints, ``checkpoint.pt`` (the latest) and ``checkpoint.prev.pt``, each
with a ``.json`` sidecar naming its SHA-256. A checkpoint is written to a temporary name, flushed to disk and
renamed, and its sidecar is written (the same way) only after that: a file without a matching sidecar is never
read. Loading checks the hash; a damaged latest checkpoint falls back to the previous one, and with neither the
run starts from the beginning (said in the log). A checkpoint holds only tensors and plain Python values and is
read with ``torch.load(weights_only=True)``: a file holding anything else (a crafted pickle, even with a matching
sidecar) is refused with an error and never executes code. :class:`Checkpoints` saves and restores a run's state
in these files.

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
import pickle
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from loralab.adapters import adapter_state_dict, load_adapter_state

if TYPE_CHECKING:
    from accelerate import Accelerator

    from loralab.loop import Progress
    from loralab.methods import Method

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
# config keys that do not change what a run computes (top-level keys, or "group.key")
OPERATIONAL_KEYS = (
    "hydra",
    "logger",
    "paths",
    "dry_run",
    "preflight",
    "trainer.progress",
    "trainer.checkpoint_every",
    "trainer.resume",
    "trainer.keep_checkpoint",
)

# keys added after runs were recorded: left out at these (their default) values, so earlier runs keep their ids
LATER_KEYS = {"eval_only": False, "adapter": None, "method.init_from": None, "trainer.group_by_length": False,
              "trainer.eval_every": None}  # fmt: skip


def run_identity(cfg: DictConfig | dict) -> dict[str, Any]:
    """The resolved config without :data:`OPERATIONAL_KEYS` (and :data:`LATER_KEYS` at their defaults): two runs with
    the same identity compute the same."""
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
    for key, default in LATER_KEYS.items():
        group, _, name = key.partition(".")
        node = ident.get(group) if name else ident
        if isinstance(node, dict) and node.get(name or group, default) == default:
            node.pop(name or group, None)
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
    """The random states, as tensors and plain Python values (a checkpoint holds nothing else: see
    :func:`load_checkpoint`)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- files ------------------------------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
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


def _paths(directory: Path, stem: str) -> tuple[Path, Path]:
    """The latest and the previous checkpoint named ``stem`` (``checkpoint``: a run's; ``fused_checkpoint``: a fused
    group's, in its first run's directory)."""
    return directory / f"{stem}.pt", directory / f"{stem}.prev.pt"


def save_checkpoint(directory: Path, state: dict[str, Any], summary: dict[str, Any], stem: str = "checkpoint") -> Path:
    """Write ``state`` as the latest checkpoint of ``directory``; the one before becomes the previous.
    ``summary`` (e.g. phase and step) goes into the sidecar, readable without loading the checkpoint."""
    latest, previous = _paths(directory, stem)
    if latest.exists() and _sidecar(latest).exists():
        os.replace(latest, previous)
        os.replace(_sidecar(latest), _sidecar(previous))
    _fsync_write(latest, lambda f: torch.save(state, f))
    info = {"file": latest.name, "sha256": sha256_file(latest), **summary}
    _fsync_write(_sidecar(latest), lambda f: f.write(json.dumps(info).encode()))
    return latest


def load_checkpoint(directory: Path, stem: str = "checkpoint") -> dict[str, Any] | None:
    """The newest intact checkpoint of ``directory`` (hash checked), or None when there is none."""
    for path in _paths(directory, stem):
        if not path.exists():
            continue
        try:
            expected = json.loads(_sidecar(path).read_text())["sha256"]
        except (OSError, ValueError, KeyError):
            log.warning("ignoring %s: its sidecar %s is missing or unreadable", path, _sidecar(path).name)
            continue
        if sha256_file(path) != expected:
            log.warning("ignoring %s: its SHA-256 does not match %s (damaged or half-written)", path, _sidecar(path))
            continue
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ValueError(
                f"refusing to load {path}: it holds objects other than tensors and plain Python values, which "
                "loralab never writes, and loading them could run code from the file. Remove it and its sidecar "
                f"{_sidecar(path).name} (the run then resumes from the previous checkpoint or starts over). Detail: "
                f"{str(e).splitlines()[-1] if str(e) else type(e).__name__}"
            ) from e
    return None


def remove_checkpoints(directory: Path, stem: str = "checkpoint") -> None:
    for path in _paths(directory, stem):
        path.unlink(missing_ok=True)
        _sidecar(path).unlink(missing_ok=True)


# ---- a run's checkpoints ------------------------------------------------------------------------------------------
class Checkpoints:
    """Saves and restores a run's state in its output directory (the files above)."""

    def __init__(self, directory: Path, run_id: str, every: int | None, method: Method, accelerator: Accelerator):
        self.directory, self.run_id, self.every, self.method = directory, run_id, every, method
        self.accelerator = accelerator
        self.loaded: dict[str, Any] | None = None  # the checkpoint this process resumed from
        self.best_adapter: dict[str, torch.Tensor] | None = None  # iterated runs restart from it
        self.wandb_id: str | None = None

    def resume(self, model: nn.Module, progress: Progress) -> bool:
        """Load the newest intact checkpoint into ``model``, the method and ``progress``; False when there is none."""
        state = load_checkpoint(self.directory)
        if state is None:
            return False
        if state["run_id"] != self.run_id:
            raise ValueError(
                f"{self.directory / CHECKPOINT} belongs to run {state['run_id']}, not to this config ({self.run_id}); "
                "choose another output directory (hydra.run.dir=...)"
            )
        self.method.load_state_dict(state["method"])
        self.method.on_resume(model)
        load_adapter_state(model, state["model"], f"checkpoint {self.directory / CHECKPOINT}")
        for key, value in state["progress"].items():
            setattr(progress, key, value)
        progress.resumes += 1
        self.loaded, self.best_adapter, self.wandb_id = state, state["best_adapter"], state["wandb_id"]
        log.info("resuming %s: phase %d, epoch %d, step %d", self.directory, progress.phase, progress.epoch,
                 progress.step)  # fmt: skip
        return True

    def restore_loop(self, optimizer, scheduler, generator: torch.Generator) -> None:
        """Inside a phase: the optimizer, schedule, method and data order of the checkpoint resumed from."""
        state = self.loaded
        if state is None or state["progress"]["phase_done"]:
            return
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        self.method.load_state_dict(state["method"])  # after on_train_start, which starts a phase's state afresh
        generator.set_state(state["epoch_generator"])

    def restore_rng(self) -> None:
        """The random state at the moment of the checkpoint (dropout masks, RoLoRA's new components); once."""
        if self.loaded is not None:
            set_rng_state(self.loaded["rng"])
            self.loaded = None

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def save(self, model: nn.Module, progress: Progress, optimizer, scheduler, epoch_generator: torch.Tensor) -> None:
        if not self.accelerator.is_main_process:
            return
        state = {
            "run_id": self.run_id,
            "progress": vars(progress),
            "model": adapter_state_dict(self.accelerator.unwrap_model(model)),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "method": self.method.state_dict(),
            "epoch_generator": epoch_generator,  # the data order's generator at the start of the epoch
            "rng": rng_state(),
            "best_adapter": self.best_adapter,
            "wandb_id": self.wandb_id,
        }
        save_checkpoint(
            self.directory, state, {"phase": progress.phase, "epoch": progress.epoch, "step": progress.step}
        )
