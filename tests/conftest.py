from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch import nn

from loralab.adapters import adapter_layers, merge_adapters, unmerge_adapters
from loralab.config import PROJECT_ROOT, register_configs

CONF_DIR = str(PROJECT_ROOT / "conf")
SHARED_ASSETS = PROJECT_ROOT.parent / "shared" / "assets"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
register_configs()


def compose_cfg(*overrides: str) -> DictConfig:
    """The composed run config for these overrides, as ``python train.py <overrides>`` would see it."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=False)


def write_tiny_glue(root: Path, n_train: int = 24, n_dev: int = 8) -> Path:
    """A glue_data folder with RTE, STS-B and CoLA files in their real formats (deterministic, learnable)."""
    words = ["cat", "dog", "bird", "fish", "tree", "car", "sun", "moon"]
    rte, stsb, cola = root / "RTE", root / "STS-B", root / "CoLA"
    for d in (rte, stsb, cola):
        d.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = ["index\tsentence1\tsentence2\tlabel"]
        srows = ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"]
        crows = []
        for i in range(n):
            a, b = words[i % 8], words[(i * 3 + 1) % 8]
            same = i % 2 == 0
            rows.append(
                f"{i}\tthe {a} sat here.\tthe {a if same else b} sat.\t{'entailment' if same else 'not_entailment'}"
            )
            srows.append(
                f"{i}\tmain\tx\t2012\t{i:04d}\tnone\tnone\ta {a} runs.\ta {a if same else b} runs.\t{5.0 * same:.3f}"
            )
            crows.append(f"src\t{int(same)}\t{'' if same else '*'}\t{'the ' + a + ' runs.' if same else 'zq zq ' + a}")
        (rte / f"{split}.tsv").write_text("\n".join(rows) + "\n")
        (stsb / f"{split}.tsv").write_text("\n".join(srows) + "\n")
        (cola / f"{split}.tsv").write_text("\n".join(crows) + "\n")
    return root


@pytest.fixture
def tiny_glue(tmp_path: Path) -> Path:
    return write_tiny_glue(tmp_path / "glue_data")


def check_merge_roundtrip(model: nn.Module, outputs: Callable[[], torch.Tensor], base_out: torch.Tensor) -> None:
    """Merging gives the same outputs and W + delta; unmerging restores W. ``outputs()`` runs the model;
    ``base_out`` is the output without adapter update (so a vacuous test, with a zero update, fails)."""
    layers = adapter_layers(model)
    weights = {n: layer.base.weight.detach().clone() for n, layer in layers.items()}
    adapted = outputs()
    assert not torch.allclose(adapted, base_out, atol=1e-4), "adapters do not change the output: vacuous test"

    merge_adapters(model)
    assert all(layer.merged for layer in layers.values())
    for n, layer in layers.items():
        delta = layer.delta_weight()
        assert delta.abs().max() > 1e-3, n
        expected = weights[n] + (delta.T if layer.fan_in_fan_out else delta)
        torch.testing.assert_close(layer.base.weight, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(outputs(), adapted, atol=1e-5, rtol=0)

    unmerge_adapters(model)
    assert not any(layer.merged for layer in layers.values())
    for n, layer in layers.items():
        torch.testing.assert_close(layer.base.weight, weights[n], atol=1e-6, rtol=0)
    torch.testing.assert_close(outputs(), adapted, atol=1e-5, rtol=0)
