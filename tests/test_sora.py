"""SoRA: the gate's proximal (soft-threshold) step at xi * lr, the reference's normalised L1 term, the recorded
gate ranks and inference parameters."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import compose_cfg

from loralab.adapters import adapter_layers
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


def batch(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(5, 200, (4, 9), generator=g), "labels": torch.tensor([0, 1, 1, 0])}


@pytest.mark.parametrize(("multiply_lr", "threshold"), [(True, 0.5 * 0.1), (False, 0.5)])
def test_proximal_step_after_optimizer_step(multiply_lr, threshold):
    method, model = tiny("method.xi=0.5", f"method.multiply_lr={str(multiply_lr).lower()}", "method.sparse_lambda=0")
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    method.on_train_start(model, opt, 10)
    gates = method.gates(model)
    with torch.no_grad():
        for g in gates.values():
            g.copy_(torch.tensor([-1.0, -threshold / 2, threshold / 4, 2.0]))
    before = {n: g.clone() for n, g in gates.items()}  # B = 0, so the gates get no gradient: SGD leaves them
    model(**batch()).loss.backward()
    method.after_backward(model, 0)
    opt.step()
    method.after_optimizer_step(model, 0)
    for n, g in gates.items():
        expected = before[n].sign() * (before[n].abs() - threshold).clamp_min(0)
        torch.testing.assert_close(g.detach(), expected)
        assert g[1] == 0 and g[2] == 0  # the entries within the threshold are exactly zero
    assert method.final_metrics(model)["mean_gate_rank"] == 2


def test_l1_term_is_normalised_by_the_number_of_gates():
    # the reference's trainer.py: loss += sparse_lambda * sum(|g|) / p_total, p_total = all gate entries
    method, model = tiny("method.sparse_lambda=10")
    gates = list(method.gates(model).values())
    expected = 10 * sum(g.abs().sum() for g in gates) / (4 * len(gates))
    torch.testing.assert_close(method.extra_loss(model, 0), expected)
    assert tiny("method.sparse_lambda=0")[0].extra_loss(model, 0) is None


def test_gate_trajectory_follows_the_reference_update():
    # a fixed problem (tiny BERT, one batch, AdamW at lr 1e-3 as RM-LoRA Table 4) with RM-LoRA's SST-2 lambda 5e-3
    # and the reference's L1 weight 10: every step our gates equal the reference's update written out here, i.e.
    # AdamW on loss + 10 * sum|g| / p_total, then with tau = xi * lr:
    #   g[g > tau] -= tau;  g[g < -tau] += tau;  g[|g| < tau] = 0
    method, model = tiny("method.xi=5e-3")  # defaults: multiply_lr=true, sparse_lambda=10
    model.eval()  # no dropout: both copies see the same computation
    reference = copy.deepcopy(model)
    lr, xi = 1e-3, 5e-3
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    ref_opt = torch.optim.AdamW([p for p in reference.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    method.on_train_start(model, opt, 40)
    ref_gates = [x.factors["gate"] for x in adapter_layers(reference).values()]
    p_total = sum(g.numel() for g in ref_gates)
    zeros = []
    for step in range(40):
        (model(**batch()).loss + method.extra_loss(model, step)).backward()
        method.after_backward(model, step)
        opt.step()
        method.after_optimizer_step(model, step)
        opt.zero_grad()

        (reference(**batch()).loss + 10 * sum(g.abs().sum() for g in ref_gates) / p_total).backward()
        ref_opt.step()
        ref_opt.zero_grad()
        tau = xi * lr
        with torch.no_grad():
            for g in ref_gates:
                g[g > tau] -= tau
                g[g < -tau] += tau
                g[abs(g) < tau] = 0.0
        ours = list(method.gates(model).values())
        for g, r in zip(ours, ref_gates, strict=True):
            torch.testing.assert_close(g, r, atol=1e-6, rtol=0)
        zeros.append(sum(int((g == 0).sum()) for g in ours) / p_total)
    # xi * lr = 5e-6 per step: the gates are pruned slowly (xi = 5e-3 itself, at and above an Adam step's size,
    # zeroes every gate it reaches and never lets one back)
    assert zeros[-1] < 0.05, zeros


def test_run_records_best_epoch_gates_and_inference_params(tmp_path, tiny_glue):
    cfg = compose_cfg(
        "model=tiny-bert", "task=glue/rte", "method=sora", "method.r=4", "method.xi=0.3", "method.multiply_lr=false",
        f"task.data_dir={tiny_glue}", "trainer.max_steps=3", "logger.mode=disabled", "trainer.progress=false",
    )  # fmt: skip
    result = run(cfg, tmp_path)
    m = result["method_metrics"]
    assert m["ranks_of"] == "best_epoch"
    assert all(0 <= v <= 4 for v in m["gate_rank"].values())
    assert m["mean_gate_rank"] < 4  # N(0, 1) gates with threshold 0.3 per step: some are zeroed
    assert m["gate_sparsity"] == pytest.approx(1 - m["mean_gate_rank"] / 4)
    # inference: the trainable count without the pruned A rows and B columns and without the gates (folded into B)
    method, model = tiny()
    dims = {n: x.in_features + x.out_features for n, x in adapter_layers(model).items()}
    pruned = sum((4 - m["gate_rank"][n]) * d for n, d in dims.items())
    assert m["inference_params"] == result["params"]["trainable_params"] - pruned - 4 * len(dims)


def test_inference_params_of_gates_set_by_hand():
    method, model = tiny()
    layers = adapter_layers(model)
    with torch.no_grad():
        for x in layers.values():
            x.factors["gate"].copy_(torch.tensor([0.0, 1.5, 0.0, -0.2]))
    method.on_best_epoch(model)
    m = method.final_metrics(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert m["mean_gate_rank"] == 2 and m["gate_sparsity"] == 0.5
    removed = sum(2 * (x.in_features + x.out_features) + 4 for x in layers.values())  # 2 pruned + the gate vector
    assert m["inference_params"] == trainable - removed
