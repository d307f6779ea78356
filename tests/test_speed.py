"""Speed-ups that must not change results: the adapter's fused multiply-add, the fused AdamW, evaluation in length
order, length-grouped training batches (a setting), parallel table lanes."""

from __future__ import annotations

import random
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import compose_cfg
from omegaconf import OmegaConf
from torch import nn
from transformers.pytorch_utils import Conv1D

from loralab import tables
from loralab.adapters.layer import AdapterLinear, Factor
from loralab.data.batching import LengthGroupedBatches
from loralab.loop import adamw
from loralab.metrics import glue_metrics
from loralab.models import load_tokenizer
from loralab.tasks import build_task

CHAINS = {
    "lora": ([Factor("A", "matrix", 12, 3), Factor("B", "matrix", 3, 10, init="normal")], 2.0),
    "lora_mini": (
        [
            Factor("A_aux", "matrix", 12, 6, trainable=False),
            Factor("A", "matrix", 6, 2),
            Factor("B", "matrix", 2, 5, init="normal"),
            Factor("B_aux", "matrix", 5, 10, trainable=False),
        ],
        1.0,
    ),
    "adalora": (
        [Factor("Q", "matrix", 12, 4), Factor("E", "diag", 4, 4, init="normal"), Factor("P", "matrix", 4, 10)],
        0.5,
    ),
    "vera": (
        [Factor("A", "matrix", 12, 4), Factor("B", "matrix", 4, 10), Factor("b", "diag", 10, 10, init="normal")], 1.0
    ),
}  # fmt: skip


@pytest.mark.parametrize("conv1d", [False, True], ids=["linear", "conv1d"])
@pytest.mark.parametrize("chain", list(CHAINS))
def test_forward_is_base_plus_the_exact_update_with_the_same_gradients(chain, conv1d):
    """The forward pass (the last product and the scaling added into the base output by one addmm) equals
    ``base(x) + x delta_W^T`` built from the factors' product, in output and in every gradient."""
    torch.manual_seed(0)
    factors, scaling = CHAINS[chain]
    base = Conv1D(10, 12) if conv1d else nn.Linear(12, 10)
    nn.init.normal_(base.weight)
    base.requires_grad_(False)
    layer = AdapterLinear(base, factors, scaling)
    x = torch.randn(2, 7, 12, requires_grad=True)
    grad = torch.randn(2, 7, 10)
    out = layer(x)
    out.backward(grad)
    fast = [x.grad.clone(), *(p.grad.clone() for p in layer.factors.values() if p.requires_grad)]
    x.grad = None
    layer.zero_grad()
    expected = base(x) + x @ layer.delta_weight().T
    assert not torch.allclose(expected, base(x), atol=1e-3), "the update is zero: vacuous test"
    expected.backward(grad)
    slow = [x.grad, *(p.grad for p in layer.factors.values() if p.requires_grad)]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


def test_fused_adamw_takes_the_per_tensor_loops_steps():
    # loralab.loop.adamw (torch's fused kernel, every loop's optimizer) against torch's per-tensor loop: 20 steps with
    # weight decay and LoRA-like shapes, the same parameters up to float rounding
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(shape, generator=gen) for shape in ((8, 96), (96, 8), (3, 5), (7,))]
    runs = []
    for make in (lambda p: adamw(p, 1e-2, 0.1), lambda p: torch.optim.AdamW(p, 1e-2, weight_decay=0.1, foreach=False)):
        params = [nn.Parameter(t.clone()) for t in start]
        optimizer, grads = make(params), torch.Generator().manual_seed(1)
        for _ in range(20):
            for p in params:
                p.grad = torch.randn(p.shape, generator=grads)
            optimizer.step()
        runs.append(params)
    assert runs[0][0].sub(start[0]).abs().min() > 0  # the steps moved every entry
    for fused, loop in zip(*runs, strict=True):
        torch.testing.assert_close(fused, loop, rtol=1e-6, atol=1e-6)


def test_length_grouped_batches_cover_every_example_once_with_little_padding():
    lengths = [random.Random(i).randint(1, 100) for i in range(203)]
    batches = LengthGroupedBatches(lengths, batch_size=8, generator=torch.Generator().manual_seed(0), group=5)
    epoch1, epoch2 = list(batches), list(batches)
    assert len(epoch1) == len(batches) == 26
    for epoch in (epoch1, epoch2):
        assert sorted(i for b in epoch for i in b) == list(range(203))
    assert epoch1 != epoch2  # a new order every epoch, from the generator
    again = LengthGroupedBatches(lengths, 8, torch.Generator().manual_seed(0), group=5)
    assert list(again) == epoch1  # the same generator state, the same batches (resumption relies on it)

    def padded(epoch):
        return sum(max(lengths[i] for i in b) * len(b) for b in epoch)

    shuffled = torch.randperm(203, generator=torch.Generator().manual_seed(0)).tolist()
    random_batches = [shuffled[i : i + 8] for i in range(0, 203, 8)]
    assert padded(epoch1) < 0.75 * padded(random_batches)


def test_evaluation_in_length_order_gives_the_metrics_of_the_original_order(tiny_glue):
    """Predictions are made shortest first; each stays paired with its own label."""
    cfg = compose_cfg("task=glue/stsb", "model=tiny-bert", f"task.data_dir={tiny_glue}", "task.source=local")
    task = build_task(OmegaConf.to_object(cfg.task))
    tokenizer = load_tokenizer(OmegaConf.to_object(cfg.model))
    data = task.load()
    for i, e in enumerate(data.evals["dev"]):  # lengths not in the order of the examples
        data.evals["dev"][i] = type(e)(e.text_a + " x" * ((5 * i) % 7), e.text_b, e.label + 0.1 * i)
    sets = task.eval_sets(data, tokenizer)

    class Model(nn.Module):  # a prediction that depends on the example: the sum of its token ids
        def forward(self, input_ids, attention_mask, labels, **_):
            return SimpleNamespace(logits=(input_ids * attention_mask).sum(-1, keepdim=True).float())

    accelerator = SimpleNamespace(device=torch.device("cpu"))
    metrics = task.evaluate(Model(), sets, tokenizer, accelerator, batch_size=3).metrics
    features = sets["dev"]
    preds = [float(sum(f["input_ids"])) for f in features]
    labels = [f["labels"] for f in features]
    expected = glue_metrics("stsb", torch.tensor(preds).numpy(), torch.tensor(labels).numpy())
    assert metrics == pytest.approx(expected, abs=1e-6)


def test_table_lanes_run_in_parallel_on_one_thread_each(tmp_path):
    """Two commands that each wait for the other's file only finish when they run at the same time."""
    script = (
        "import os, sys, time, pathlib; d = pathlib.Path(sys.argv[1]); (d / sys.argv[2]).write_text("
        "os.environ['OMP_NUM_THREADS']); t = time.time()\n"
        "while not (d / sys.argv[3]).exists():\n    assert time.time() - t < 60, 'not parallel'; time.sleep(0.05)"
    )
    commands = [[sys.executable, "-c", script, str(tmp_path), a, b] for a, b in (("a", "b"), ("b", "a"))]
    tables.run_lanes(commands, jobs=2)
    assert (tmp_path / "a").read_text() == (tmp_path / "b").read_text() == "1"
    with pytest.raises(Exception, match="returned non-zero"):
        tables.run_lanes([[sys.executable, "-c", "raise SystemExit(3)"], [sys.executable, "-c", "pass"]], jobs=2)
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        tables.run_lanes([], jobs=0)
