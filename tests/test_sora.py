"""SoRA: the gate's proximal (soft-threshold) step, its optional L1 term, and the recorded gate ranks."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_cfg

from loralab.methods.sora import soft_threshold_
from loralab.run import build, make_plan, run


def test_soft_threshold_values():
    t = torch.tensor([-2.0, -0.3, -0.1, 0.0, 0.05, 0.5, 3.0])
    soft_threshold_(t, 0.1)
    torch.testing.assert_close(t, torch.tensor([-1.9, -0.2, 0.0, 0.0, 0.0, 0.4, 2.9]))
    assert (t[2:5] == 0).all()  # exactly zero, not merely small


def tiny(*overrides: str):
    plan = make_plan(compose_cfg("model=tiny-bert", "task=glue/rte", "method=sora", "method.r=4", *overrides))
    torch.manual_seed(0)
    return plan.method, build(plan)[0]


@pytest.mark.parametrize(("multiply_lr", "threshold"), [(False, 0.5), (True, 0.5 * 0.1)])
def test_proximal_step_after_optimizer_step(multiply_lr, threshold):
    method, model = tiny("method.xi=0.5", f"method.multiply_lr={str(multiply_lr).lower()}")
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    method.on_train_start(model, opt, 10)
    gates = method.gates(model)
    with torch.no_grad():
        for g in gates.values():
            g.copy_(torch.tensor([-1.0, -threshold / 2, threshold / 4, 2.0]))
    before = {n: g.clone() for n, g in gates.items()}  # B = 0, so the gates get no gradient: SGD leaves them
    ids = torch.randint(5, 200, (2, 7))
    model(input_ids=ids, labels=torch.tensor([0, 1])).loss.backward()
    opt.step()
    method.after_optimizer_step(model, 0)
    for n, g in gates.items():
        expected = before[n].sign() * (before[n].abs() - threshold).clamp_min(0)
        torch.testing.assert_close(g.detach(), expected)
        assert g[1] == 0 and g[2] == 0  # the entries within the threshold are exactly zero
    assert method.final_metrics(model)["mean_gate_rank"] == 2


def test_l1_term():
    method, model = tiny("method.l1_weight=0.01")
    expected = 0.01 * sum(g.abs().sum() for g in method.gates(model).values())
    torch.testing.assert_close(method.extra_loss(model, 0), expected)
    assert tiny()[0].extra_loss(model, 0) is None


def test_run_records_gate_ranks(tmp_path, tiny_glue):
    cfg = compose_cfg(
        "model=tiny-bert", "task=glue/rte", "method=sora", "method.r=4", "method.xi=0.3", f"task.data_dir={tiny_glue}",
        "trainer.max_steps=3", "logger.mode=disabled", "trainer.progress=false",
    )  # fmt: skip
    metrics = run(cfg, tmp_path)["method_metrics"]
    assert all(0 <= v <= 4 for v in metrics["gate_rank"].values())
    assert metrics["mean_gate_rank"] < 4  # N(0, 1) gates with threshold 0.3: some are zeroed
