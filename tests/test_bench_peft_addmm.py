"""bench/peft_compare.py's ``peft-addmm`` configuration: peft's LoRA with loralab's add (one addmm into the base
output) must be exact, i.e. give peft's outputs and gradients, so that timing it against peft is a fair comparison."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft", reason="peft is not installed (pip install -e '.[bench]')")

ROOT = Path(__file__).resolve().parents[1]


def _load_bench() -> object:
    """bench/peft_compare.py as a module (registered: its dataclass needs its module in sys.modules)."""
    spec = importlib.util.spec_from_file_location("peft_compare", ROOT / "bench" / "peft_compare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


def _models(dropout: float) -> tuple[nn.Module, nn.Module, int]:
    """The same tiny peft LoRA model twice (A and B both random: a nonzero update), the second patched."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(12, 16), nn.GELU(), nn.Linear(16, 10))
    config = peft.LoraConfig(
        r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["0", "2"], init_lora_weights=False
    )
    plain = peft.get_peft_model(backbone, config).train()
    patched = copy.deepcopy(plain)
    return plain, patched, bench.use_addmm(patched)


def _step(model: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> list[torch.Tensor]:
    """Output, input gradient and the trainable parameters' gradients of one forward and backward."""
    x = x.clone().requires_grad_(True)
    torch.manual_seed(1)  # the same dropout masks in both models
    out = model(x)
    out.backward(grad)
    return [out.detach(), x.grad, *(p.grad for p in model.parameters() if p.requires_grad)]


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_peft_with_loralabs_addmm_gives_peft_outputs_and_gradients(dropout):
    plain, patched, n = _models(dropout)
    assert n == 2
    assert all("_peft_addmm_forward" in repr(m.forward) for m in patched.modules() if hasattr(m, "lora_A"))
    assert not any("_peft_addmm_forward" in repr(m.forward) for m in plain.modules() if hasattr(m, "lora_A"))
    x, grad = torch.randn(2, 7, 12), torch.randn(2, 7, 10)
    expected, got = _step(plain, x, grad), _step(patched, x, grad)
    with torch.no_grad(), plain.disable_adapter():
        assert not torch.allclose(expected[0], plain(x), atol=1e-3), "the update is zero: vacuous test"
    assert len(expected) == len(got) == 2 + 4  # output, input grad, A and B of two layers
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_peft_addmm_runs_peft_forward_with_adapters_disabled_or_merged():
    plain, patched, _ = _models(0.0)
    x = torch.randn(3, 12)
    with torch.no_grad():
        with plain.disable_adapter(), patched.disable_adapter():
            torch.testing.assert_close(patched(x), plain(x), atol=1e-6, rtol=1e-6)
        unmerged = patched(x)
        patched.merge_adapter()
        torch.testing.assert_close(patched(x), unmerged, atol=1e-5, rtol=1e-5)
