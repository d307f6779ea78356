"""Data-parallel training through accelerate: two CPU processes (gloo) equal one process with the combined batch."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch
from conftest import compose_cfg, write_tiny_glue
from safetensors.torch import load_file

from loralab.config import PROJECT_ROOT
from loralab.records import RESULTS_FILE
from loralab.run import run

TORCHRUN = shutil.which("torchrun") or str(PROJECT_ROOT / ".venv" / "bin" / "torchrun")
COMMON = ["model=tiny-bert", "task=glue/rte", "method=lora", "task.source=local", "trainer.progress=false",
          "logger.mode=disabled", "trainer.epochs=2", "trainer.lr=3e-3", "trainer.warmup_ratio=0.25",
          "+model.arch.hidden_dropout_prob=0", "+model.arch.attention_probs_dropout_prob=0"]  # fmt: skip


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch built without the gloo backend")
def test_two_gloo_processes_equal_one_process_with_the_combined_batch(tmp_path):
    glue = write_tiny_glue(tmp_path / "glue_data", n_train=32)  # 32 = 4 combined batches of 8: no ragged end
    two = tmp_path / "two"
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node=2", "train.py", *COMMON, f"task.data_dir={glue}",
           "trainer.batch_size=4", f"hydra.run.dir={two}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = run(compose_cfg(*COMMON, f"task.data_dir={glue}", "trainer.batch_size=8"), tmp_path / "one")

    parallel = json.loads((two / RESULTS_FILE).read_text())
    for a, b in zip(parallel["metrics"]["epochs"], single["metrics"]["epochs"], strict=True):
        assert a["step"] == b["step"] == 4 * a["epoch"]  # 4 optimizer steps per epoch in both
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)  # averaged over the two processes
        assert a["accuracy"] == b["accuracy"]
    x, y = load_file(two / "adapter.safetensors"), load_file(tmp_path / "one" / "adapter.safetensors")
    assert x.keys() == y.keys()
    for k in x:
        torch.testing.assert_close(x[k], y[k], atol=1e-6, rtol=1e-5, msg=k)
    assert max(y[k].abs().max() for k in y if k.endswith("factors.B")) > 0  # the adapters did move
