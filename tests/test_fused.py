"""Fused sweeps (loralab.fused, hydra/launcher=fused): K configurations trained at once get their separate runs'
updates, results and files; unsupported methods fail before any weights are loaded."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import compose_cfg
from safetensors.torch import load_file

import loralab.run
from loralab.adapters import adapter_state_dict
from loralab.config import PROJECT_ROOT
from loralab.fused import group_configs, run_fused
from loralab.methods import Method
from loralab.run import run

FAST = ["trainer.progress=false", "logger.mode=disabled", "trainer.batch_size=8", "model=tiny-roberta"]
# exact equality needs no dropout: the fused backbone draws masks for K*B rows
NO_DROPOUT = ["+model.arch.hidden_dropout_prob=0.0", "+model.arch.attention_probs_dropout_prob=0.0"]
CONFIGS = {
    "lora_mini_D": ["method=lora_mini", "rab=r8_a16_b16", "method.targets=D"],
    "lora_mini_DA": ["method=lora_mini", "rab=r8_a16_b32", "method.targets=D+A"],
    "lora": ["method=lora", "method.r=4"],
    "tied_lora": ["method=tied_lora", "method.variant=tl6"],  # tied factors: each config keeps its own bank
    "vera": ["method=vera", "method.r=16"],
}


def _configs(tiny_glue, names, *overrides):
    common = [f"task.data_dir={tiny_glue}", "task.source=local", *FAST, *NO_DROPOUT, *overrides]
    return [compose_cfg(*common, *CONFIGS[n]) for n in names]


@pytest.mark.parametrize(
    ("names", "overrides"),
    [
        # classification (cross-entropy per replica), 2 epochs, a LoRA-Mini D / D+A pair and LoRA in one group
        (["lora_mini_D", "lora_mini_DA", "lora"], ["task=glue/rte", "trainer.epochs=2", "trainer.lr=3e-3"]),
        # regression (MSE per replica); early stopping: four configs stop after epoch 2, VeRA trains on alone
        (
            ["lora_mini_D", "tied_lora", "vera", "lora"],
            ["task=glue/stsb", "trainer.epochs=3", "trainer.lr=1e-2", "trainer.early_stopping_patience=1"],
        ),
    ],
)
def test_fused_group_equals_separate_runs(tmp_path, tiny_glue, monkeypatch, names, overrides):
    cfgs = _configs(tiny_glue, names, *overrides)
    finals: list[dict[str, torch.Tensor]] = []  # each model's adapter and head after training, in order
    keep = lambda self, model: finals.append({k: t.clone() for k, t in adapter_state_dict(model).items()}) or {}  # noqa: E731
    monkeypatch.setattr(Method, "final_metrics", keep)
    separate = [run(cfg, tmp_path / "separate" / name) for name, cfg in zip(names, cfgs, strict=True)]
    fused = run_fused(cfgs, [tmp_path / "fused" / n for n in names])
    assert len(finals) == 2 * len(names)

    stopped = []
    for k, (name, alone, together) in enumerate(zip(names, separate, fused, strict=True)):
        on_disk = json.loads((tmp_path / "fused" / name / "results.json").read_text())
        assert on_disk == json.loads(json.dumps(together, default=str))
        assert set(together) - set(alone) == {"fused"} and together["fused"]["group_size"] == len(names)
        assert together["run_id"] == alone["run_id"] and together["config"] == alone["config"]
        assert together["params"] == alone["params"] and together["adapted_modules"] == alone["adapted_modules"]
        epochs_alone, epochs_fused = alone["metrics"]["epochs"], together["metrics"]["epochs"]
        assert len(epochs_alone) == len(epochs_fused)
        for a, b in zip(epochs_alone, epochs_fused, strict=True):
            assert a["step"] == b["step"]
            assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)
            for key in set(a) - {"train_time_s", "train_loss", "step", "epoch", "phase"}:  # the metrics
                assert b[key] == pytest.approx(a[key], abs=1e-3), (name, key)
        assert together["metrics"]["best"]["epoch"] == alone["metrics"]["best"]["epoch"]
        assert together["metrics"]["steps"] == alone["metrics"]["steps"]
        stopped.append(len(epochs_fused))
        params, expected = finals[len(names) + k], finals[k]
        assert params.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(params[key], expected[key], atol=1e-5, rtol=0, msg=f"{name}: {key}")
        saved_alone = load_file(str(tmp_path / "separate" / name / "adapter.safetensors"))
        saved_fused = load_file(str(tmp_path / "fused" / name / "adapter.safetensors"))
        assert saved_alone.keys() == saved_fused.keys()
        for key in saved_alone:
            torch.testing.assert_close(saved_fused[key], saved_alone[key], atol=1e-5, rtol=0)
    if "trainer.early_stopping_patience=1" in overrides:
        assert len(set(stopped)) > 1, f"every config stopped after the same epoch ({stopped}): vacuous test"


class Killed(Exception):
    """Stands for the process dying."""


def test_killed_fused_group_resumes_to_the_same_results(tmp_path, tiny_glue, monkeypatch):
    """A fused group stopped in its second epoch (after a mid-epoch checkpoint) and run again continues from its
    checkpoint and ends with the results and adapters of an uninterrupted group."""
    names = ["lora_mini_D", "lora", "vera"]
    cfgs = _configs(
        tiny_glue,
        names,
        "task=glue/stsb",
        "trainer.epochs=2",
        "trainer.lr=1e-2",
        "trainer.checkpoint_every=2",
        "trainer.batch_size=4",
    )  # 6 steps per epoch
    reference = run_fused(cfgs, [tmp_path / "reference" / n for n in names])
    dirs = [tmp_path / "killed" / n for n in names]
    real, calls = torch.optim.AdamW.step, [0]

    def step(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 10:  # the 4th step of epoch 2: after its checkpoint at step 8
            raise Killed()
        return real(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(torch.optim.AdamW, "step", step)
        with pytest.raises(Killed):
            run_fused(cfgs, dirs)
    assert (dirs[0] / "fused_checkpoint.pt").exists() and not (dirs[0] / "results.json").exists()
    resumed = run_fused(cfgs, dirs)
    assert not (dirs[0] / "fused_checkpoint.pt").exists()  # removed once the results are written
    for name, again, alone in zip(names, resumed, reference, strict=True):
        assert again["resumed"] == 1 and alone["resumed"] == 0
        strip = lambda r: [{k: v for k, v in e.items() if k != "train_time_s"} for e in r["metrics"]["epochs"]]  # noqa: E731
        assert strip(again) == strip(alone), name
        assert again["metrics"]["best"]["epoch"] == alone["metrics"]["best"]["epoch"]
        a = load_file(str(tmp_path / "killed" / name / "adapter.safetensors"))
        b = load_file(str(tmp_path / "reference" / name / "adapter.safetensors"))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=0, rtol=0, msg=f"{name}: {key}")


def test_unsupported_methods_fail_before_weights_are_loaded(tmp_path, tiny_glue, monkeypatch):
    real_build_model = loralab.run.build_model

    def meta_only(*args, device="cpu", **kwargs):
        assert str(device) == "meta", "weights were loaded before the method was checked"
        return real_build_model(*args, device=device, **kwargs)

    monkeypatch.setattr(loralab.run, "build_model", meta_only)
    common = [f"task.data_dir={tiny_glue}", *FAST, "task=glue/rte"]
    lora_mini = compose_cfg(*common, "method=lora_mini", "rab=r8_a16_b16")
    adalora, full_ft = (compose_cfg(*common, f"method={m}") for m in ("adalora", "full_ft"))
    with pytest.raises(ValueError, match=r"adalora cannot be trained fused.*without hydra/launcher=fused"):
        run_fused([lora_mini, adalora], [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(ValueError, match=r"full_ft adapts no module"):
        group_configs([lora_mini, full_ft])
    assert not (tmp_path / "a").exists()


def test_grouping_by_everything_but_the_method(tiny_glue):
    common = [f"task.data_dir={tiny_glue}", *FAST, "task=glue/rte"]
    cfgs = [
        compose_cfg(*common, "method=lora_mini", "rab=r8_a16_b16"),
        compose_cfg(*common, "method=lora_mini", "rab=r8_a16_b32", "method.targets=D+A"),
        compose_cfg(*common, "method=lora_mini", "rab=r8_a16_b16", "trainer.lr=1e-3"),  # another schedule
        compose_cfg(*common, "method=lora"),
    ]
    assert group_configs(cfgs) == [[0, 1, 3], [2]]
    assert group_configs(cfgs, max_group=2) == [[0, 1], [3], [2]]


def test_launcher_trains_a_sweep_fused_and_skips_finished_jobs(tmp_path, tiny_glue):
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable, "train.py", "-m", "hydra/launcher=fused", "hydra.launcher.max_group=3", "task=glue/rte",
        "method=lora_mini", "rab=r8_a16_b16,r8_a16_b32", "method.targets=D,D+A", f"task.data_dir={tiny_glue}",
        "trainer.max_steps=2", *FAST, f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    subprocess.run(cmd, cwd=PROJECT_ROOT, check=True, capture_output=True, timeout=300)
    paths = sorted(sweep.rglob("results.json"))
    assert len(paths) == 4
    results = [json.loads(p.read_text()) for p in paths]
    assert all(r["status"] == "finished" and r["metrics"]["steps"] == 2 for r in results)
    assert sorted(r["fused"]["group_size"] for r in results) == [1, 3, 3, 3]  # max_group=3
    points = {(r["config"]["method"]["b"], r["config"]["method"]["targets"]) for r in results}
    assert points == {(16, "D"), (16, "D+A"), (32, "D"), (32, "D+A")}
    for p in paths:
        assert (p.parent / "adapter.safetensors").exists() and (p.parent / ".hydra" / "overrides.yaml").exists()
        assert json.loads((p.parent / "run.json").read_text())["run_id"] == p.parent.name
    written = {p: p.stat().st_mtime_ns for p in paths}

    again = subprocess.run(cmd, cwd=PROJECT_ROOT, check=True, capture_output=True, text=True, timeout=300)
    assert again.stdout.count("already finished, skipped") + again.stderr.count("already finished, skipped") == 4
    assert {p: p.stat().st_mtime_ns for p in paths} == written
