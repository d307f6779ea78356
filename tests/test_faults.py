"""Fault injection: runs killed or broken at random moments resume and end exactly like uninterrupted runs.

In-process faults stop a run by raising from inside the optimizer step (or while the best adapter is saved, between
an epoch's evaluation and its checkpoint); the real SIGKILL tests run ``train.py`` in a subprocess through
``tests/fault_injection.py`` and kill it from outside, or let it kill itself half-way through writing a checkpoint.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import compose_cfg, write_tiny_glue
from safetensors.torch import load_file

from loralab.checkpoint import CHECKPOINT, PREVIOUS, load_checkpoint, save_checkpoint
from loralab.config import PROJECT_ROOT
from loralab.records import RESULTS_FILE
from loralab.run import run

FAST = ["trainer.progress=false", "logger.mode=disabled", "trainer.batch_size=4", "trainer.lr=3e-3",
        "trainer.checkpoint_every=1", "trainer.epochs=2", "model=tiny-bert", "task=glue/rte"]  # fmt: skip
SCHEDULE = ["method.t_init=2", "method.t_final=2", "method.delta_t=1"]  # AdaLoRA / RoLoRA within 12 steps
CASES = {
    "lora": ["method=lora"],
    "lora_mini": ["method=lora_mini", "method.a=16", "method.b=16"],
    "tied_lora": ["method=tied_lora", "method.variant=tl6"],
    "vera": ["method=vera"],
    "full_ft": ["method=full_ft"],
    "adalora": ["method=adalora", *SCHEDULE],
    "sora": ["method=sora"],
    "rm_lora": ["method=rm_lora"],
    "rolora_2_phases": ["method=rolora", "method.iterations=2", *SCHEDULE],
    "lora_iterated_restarts": ["method=lora", "trainer.iterations=2"],
    "grad_accum_dropout": ["method=lora", "trainer.grad_accum=2", "method.dropout=0.3"],
    "group_by_length": ["method=lora", "trainer.group_by_length=true"],
}


class Interrupted(Exception):
    """Stands for the process dying."""


def config(tiny_glue: Path, *overrides: str):
    return compose_cfg(f"task.data_dir={tiny_glue}", "task.source=local", *FAST, *overrides)


def comparable(result: dict) -> dict:
    """What must not depend on interruptions: per-epoch metrics and losses, the best epoch, method measurements."""
    epochs = [{k: v for k, v in e.items() if k != "train_time_s"} for e in result["metrics"]["epochs"]]
    best = {k: v for k, v in result["metrics"]["best"].items() if k != "train_time_s"}
    return {"epochs": epochs, "best": best, "steps": result["metrics"]["steps"], "method": result["method_metrics"],
            "params": result["params"]}  # fmt: skip


def assert_same_run(resumed_dir: Path, reference_dir: Path) -> None:
    resumed = json.loads((resumed_dir / RESULTS_FILE).read_text())
    reference = json.loads((reference_dir / RESULTS_FILE).read_text())
    assert comparable(resumed) == comparable(reference)
    if (reference_dir / "adapter.safetensors").exists():
        a, b = load_file(resumed_dir / "adapter.safetensors"), load_file(reference_dir / "adapter.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def interrupt_optimizer_step_at(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """The ``call``-th optimizer step (1-based, counted over the whole run) raises instead of stepping."""
    real, calls = torch.optim.AdamW.step, [0]

    def step(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            raise Interrupted(f"killed at optimizer step call {call}")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[str, Path]:
    """Uninterrupted runs, one per case (module-scoped: several tests compare against them)."""
    root = tmp_path_factory.mktemp("reference")
    glue = write_tiny_glue(root / "glue_data")
    out = {}
    for name, overrides in CASES.items():
        result = run(config(glue, *overrides), root / name)
        assert result["resumed"] == 0
        out[name] = root / name
    out["glue"] = glue
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_killed_at_a_random_step_resumes_to_the_same_result(case, references, tmp_path, monkeypatch):
    reference = json.loads((references[case] / RESULTS_FILE).read_text())
    total_steps = reference["metrics"]["steps"]
    kill_at = random.Random(case).randint(2, total_steps)  # a different step per case, reproducible
    cfg = config(references["glue"], *CASES[case])
    with monkeypatch.context() as m:
        interrupt_optimizer_step_at(m, kill_at)
        with pytest.raises(Interrupted):
            run(cfg, tmp_path)
    assert not (tmp_path / RESULTS_FILE).exists()
    assert load_checkpoint(tmp_path)["progress"]["step"] >= 0
    result = run(cfg, tmp_path)  # the same command again
    assert result["resumed"] == 1
    assert_same_run(tmp_path, references[case])
    assert not (tmp_path / CHECKPOINT).exists()  # removed once the result is written


def test_killed_between_evaluation_and_the_epoch_checkpoint(references, tmp_path, monkeypatch):
    import loralab.records

    cfg = config(references["glue"], *CASES["lora_mini"])
    real = loralab.records.save_adapter

    def save_then_die(*args, **kwargs):
        real(*args, **kwargs)
        raise Interrupted("killed after saving the best adapter")

    with monkeypatch.context() as m:
        m.setattr(loralab.records, "save_adapter", save_then_die)
        with pytest.raises(Interrupted):
            run(cfg, tmp_path)
    run(cfg, tmp_path)
    assert_same_run(tmp_path, references["lora_mini"])


@pytest.mark.parametrize("damage", ["latest", "both", "sidecar"])
def test_damaged_checkpoints_are_never_read(damage, references, tmp_path, monkeypatch, caplog):
    cfg = config(references["glue"], *CASES["adalora"])
    with monkeypatch.context() as m:
        interrupt_optimizer_step_at(m, 9)
        with pytest.raises(Interrupted):
            run(cfg, tmp_path)
    latest, previous = tmp_path / CHECKPOINT, tmp_path / PREVIOUS
    assert load_checkpoint(tmp_path)["progress"]["step"] == 8
    if damage == "sidecar":  # killed after the checkpoint, before its sidecar: the file is not trusted
        (tmp_path / (CHECKPOINT + ".json")).unlink()
    for path in [latest] + ([previous] if damage == "both" else []):
        if damage != "sidecar":
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF  # one flipped byte
            path.write_bytes(bytes(data))
    fallback = load_checkpoint(tmp_path)
    assert (fallback is None) == (damage == "both")
    if fallback is not None:
        assert fallback["progress"]["step"] == 7  # the previous checkpoint
    result = run(cfg, tmp_path)
    assert result["resumed"] == (0 if damage == "both" else 1)  # nothing intact: started again from the beginning
    assert "ignoring" in caplog.text
    assert_same_run(tmp_path, references["adalora"])


class _RunsCode:
    """Pickles to a call of ``pathlib.Path.touch``: loading it with full unpickling creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_crafted_pickle_checkpoint_is_refused_without_running_code(tiny_glue, tmp_path):
    """A checkpoint with a matching sidecar whose pickle would run code: refused with an error, the code never runs."""
    cfg = config(tiny_glue, *CASES["lora"])
    marker = tmp_path / "code_ran"
    save_checkpoint(tmp_path, {"run_id": "x", "payload": _RunsCode(marker)}, {"phase": 0, "epoch": 1, "step": 1})
    with pytest.raises(ValueError, match=r"refusing to load .*checkpoint\.pt.*could run code"):
        run(cfg, tmp_path)
    assert not marker.exists(), "loading the checkpoint ran code from it"


def test_disk_full_while_writing_the_result(references, tmp_path, monkeypatch):
    cfg = config(references["glue"], *CASES["lora"])
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name == RESULTS_FILE + ".tmp":
            real(self, '{"status": "finis')  # a partial write, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(Path, "write_text", full)
        with pytest.raises(OSError, match="No space"):
            run(cfg, tmp_path)
    assert not (tmp_path / RESULTS_FILE).exists() and not (tmp_path / (RESULTS_FILE + ".tmp")).exists()
    assert load_checkpoint(tmp_path)["progress"]["phase_done"]  # training is not lost
    result = run(cfg, tmp_path)
    assert result["resumed"] == 1
    assert_same_run(tmp_path, references["lora"])


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(references, tmp_path, monkeypatch):
    from loralab.methods.lora.method import Lora

    def poisoned(self, model, step):
        return torch.tensor(float("nan")) if step == 5 else None

    monkeypatch.setattr(Lora, "extra_loss", poisoned)
    with pytest.raises(FloatingPointError, match=r"loss became nan at step 5 .*last good checkpoint"):
        run(config(references["glue"], *CASES["lora"]), tmp_path)
    assert not (tmp_path / RESULTS_FILE).exists()
    assert load_checkpoint(tmp_path)["progress"]["step"] == 5  # the state after 5 good steps


def test_a_finished_run_is_not_run_again_and_another_run_is_refused(references, tmp_path):
    cfg = config(references["glue"], *CASES["lora"])
    first = run(cfg, tmp_path)
    stamp = (tmp_path / RESULTS_FILE).stat().st_mtime_ns
    assert run(cfg, tmp_path) == first and (tmp_path / RESULTS_FILE).stat().st_mtime_ns == stamp
    other = config(references["glue"], *CASES["lora"], "trainer.lr=1e-3")
    with pytest.raises(ValueError, match="already holds another run"):
        run(other, tmp_path)
    assert (tmp_path / RESULTS_FILE).stat().st_mtime_ns == stamp


def test_resume_false_starts_over(references, tmp_path, monkeypatch):
    cfg = config(references["glue"], *CASES["lora"])
    with monkeypatch.context() as m:
        interrupt_optimizer_step_at(m, 6)
        with pytest.raises(Interrupted):
            run(cfg, tmp_path)
    result = run(config(references["glue"], *CASES["lora"], "trainer.resume=false"), tmp_path)
    assert result["resumed"] == 0
    assert_same_run(tmp_path, references["lora"])


# ---- real SIGKILL, in a subprocess -------------------------------------------------------------------------------
def _command(tiny_glue: Path, out: Path, fault: str) -> list[str]:
    overrides = [f"task.data_dir={tiny_glue}", "task.source=local", *FAST, *CASES["grad_accum_dropout"],
                 f"hydra.run.dir={out}"]  # fmt: skip
    return [sys.executable, str(PROJECT_ROOT / "tests" / "fault_injection.py"), fault, *overrides]


def _sidecar_step(out: Path) -> int:
    try:
        return json.loads((out / (CHECKPOINT + ".json")).read_text())["step"]
    except (OSError, ValueError):
        return -1


def test_sigkill_at_a_random_moment_then_the_same_command_resumes(references, tmp_path):
    out = tmp_path / "run"
    stop_after = random.Random().randint(1, 5)  # checkpoints seen before the kill: a different moment each time
    proc = subprocess.Popen(_command(references["glue"], out, "slow:0.3"), cwd=PROJECT_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 240
    while _sidecar_step(out) < stop_after and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(random.uniform(0, 0.3))  # anywhere in the step after that checkpoint, or in the next write
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run ended before it was killed"
    assert not (out / RESULTS_FILE).exists()
    subprocess.run(_command(references["glue"], out, "none"), cwd=PROJECT_ROOT, check=True, capture_output=True,
                   timeout=300)  # fmt: skip
    assert json.loads((out / RESULTS_FILE).read_text())["resumed"] == 1
    assert_same_run(out, references["grad_accum_dropout"])


def test_sigkill_while_writing_a_checkpoint(references, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(_command(references["glue"], out, "kill_in_save:4"), cwd=PROJECT_ROOT, capture_output=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL
    assert (out / (CHECKPOINT + ".tmp")).exists()  # the half-written file is there ...
    assert load_checkpoint(out)["progress"]["step"] == 3  # ... and never read: the last complete one is
    subprocess.run(_command(references["glue"], out, "none"), cwd=PROJECT_ROOT, check=True, capture_output=True,
                   timeout=300)  # fmt: skip
    assert_same_run(out, references["grad_accum_dropout"])
