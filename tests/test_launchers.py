"""Cluster launchers through Hydra's own plugins (``pip install -e '.[cluster]'``): each example config under
``conf/hydra/launcher/`` composes, and a two-run sweep runs end to end through the submitit (and, where installed,
Ray) launcher on this machine. Skipped where a plugin is not installed."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONF_DIR, write_tiny_glue
from hydra import compose, initialize_config_dir

from loralab.config import PROJECT_ROOT

PLUGINS = {"submitit": "hydra_plugins.hydra_submitit_launcher", "ray": "hydra_plugins.hydra_ray_launcher"}
CONFIGS = {  # our launcher config -> (plugin, launcher class, settings it makes)
    "slurm": ("submitit", "SlurmLauncher", {"gpus_per_node": 1, "cpus_per_task": 8, "array_parallelism": 16}),
    "slurm_local": ("submitit", "LocalLauncher", {"gpus_per_node": 0, "cpus_per_task": 1}),
    "ray_cluster": ("ray", "RayLauncher", {"ray": {"init": {"address": None}, "remote": {"num_gpus": 1, "num_cpus": 4,
                                                                                          "max_retries": 0}}}),
}  # fmt: skip
SWEEP = ["model=tiny-bert", "task=glue/rte", "method=lora", "method.r=2,4", "task.source=local",
         "trainer.max_steps=2", "logger.mode=disabled", "trainer.progress=false"]  # fmt: skip


def needs(plugin: str):
    """Skip unless the Hydra launcher plugin is installed."""
    installed = importlib.util.find_spec(PLUGINS[plugin]) is not None
    return pytest.mark.skipif(not installed, reason=f"{PLUGINS[plugin]} is not installed (pip install -e '.[cluster]')")


@pytest.mark.parametrize("name", [pytest.param(name, marks=needs(plugin)) for name, (plugin, _, _) in CONFIGS.items()])
def test_launcher_config_composes(name):
    _, launcher, settings = CONFIGS[name]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra/launcher={name}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(f".{launcher}")
    for key, value in settings.items():
        assert cfg.hydra.launcher[key] == value, key


def sweep(tmp_path: Path, *launcher: str) -> list[dict]:
    """Run the two-run sweep (method.r=2,4 on tiny-bert, tiny RTE) with the launcher overrides; its results."""
    cmd = [sys.executable, "train.py", "-m", *launcher, *SWEEP, f"task.data_dir={write_tiny_glue(tmp_path / 'glue')}",
           f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(p.read_text()) for p in (tmp_path / "sweep").rglob("results.json")]


@needs("submitit")
def test_submitit_local_runs_a_two_run_sweep(tmp_path):
    results = sweep(tmp_path, "hydra/launcher=slurm_local")
    assert sorted(r["config"]["method"]["r"] for r in results) == [2, 4]
    assert all(r["status"] == "finished" and r["metrics"]["steps"] == 2 for r in results)
    assert len(list((tmp_path / "sweep" / ".submitit").glob("*/*_result.pkl"))) == 2  # through submitit's jobs


@needs("ray")
def test_ray_local_runs_a_two_run_sweep(tmp_path):
    results = sweep(tmp_path, "hydra/launcher=ray_cluster", "hydra.launcher.ray.remote.num_gpus=0",
                    "hydra.launcher.ray.remote.num_cpus=1", "+hydra.launcher.ray.init.num_cpus=2")  # fmt: skip
    assert sorted(r["config"]["method"]["r"] for r in results) == [2, 4]
