"""AdaLoRA: importance EMAs, the cubic budget schedule, masking to the budget, and the orthogonal regulariser."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import compose_cfg

from loralab.adapters import adapter_layers
from loralab.methods.adalora import AdaLora, AdaLoraConfig
from loralab.run import build, dry_run, make_plan, run


def test_budget_schedule_is_cubic():
    m = AdaLora(AdaLoraConfig(init_r=12, target_r=8, t_init=10, t_final=20))
    m.total_steps = 110  # pruning phase: steps 10 .. 89 (80 steps)
    k = 5
    assert m.budget(0, k) == m.budget(9, k) == 60
    assert m.budget(10, k) == 60
    assert m.budget(50, k) == int(40 + 20 * (1 - 40 / 80) ** 3) == 42
    assert m.budget(90, k) == m.budget(109, k) == 40


def test_orthogonal_regulariser_squared_and_plain():
    plan = make_plan(compose_cfg("model=tiny-bert", "task=glue/rte", "method=adalora", "method.init_r=4",
                                 "method.target_r=2", "method.orth_weight=0.5"))  # fmt: skip
    torch.manual_seed(0)
    model = build(plan)[0]
    sq = plain = 0.0
    for layer in adapter_layers(model).values():
        p, q = layer.factors["P"], layer.factors["Q"]
        for gram in (p.T @ p, q @ q.T):
            d = ((gram - torch.eye(4)) ** 2).sum()
            sq, plain = sq + d, plain + d.sqrt()
    torch.testing.assert_close(plan.method.extra_loss(model, 0), 0.5 * sq)
    plan.method.cfg.orth_squared = False
    torch.testing.assert_close(plan.method.extra_loss(model, 0), 0.5 * plain)


def test_importance_ema_formula_and_zero_start():
    plan = make_plan(compose_cfg("model=tiny-bert", "task=glue/rte", "method=adalora", "method.init_r=4",
                                 "method.target_r=2", "method.beta1=0.8", "method.beta2=0.7"))  # fmt: skip
    torch.manual_seed(0)
    model = build(plan)[0]
    layers = adapter_layers(model)
    assert all(torch.equal(x.delta_weight(), torch.zeros_like(x.delta_weight())) for x in layers.values())
    ids = torch.randint(5, 200, (2, 7))
    model(input_ids=ids, labels=torch.tensor([0, 1])).loss.backward()
    plan.method.after_backward(model, 0)
    name, layer = next(iter(layers.items()))
    q = layer.factors["Q"]
    sens = (q * q.grad).abs()
    i_bar, u_bar = plan.method.ema[f"{name}.Q"]
    torch.testing.assert_close(i_bar, 0.2 * sens)
    torch.testing.assert_close(u_bar, 0.3 * (sens - 0.2 * sens).abs())


def test_budget_holds_after_every_masking_in_a_run(tmp_path, tiny_glue):
    # 24 examples / batch 8 = 3 steps per epoch, 8 epochs: T = 24; prune from step 2 to 17, every 3 steps
    cfg = compose_cfg(
        "model=tiny-bert", "task=glue/rte", "method=adalora", "method.init_r=6", "method.target_r=2",
        "method.t_init=2", "method.t_final=6", "method.delta_t=3", f"task.data_dir={tiny_glue}", "trainer.epochs=8",
        "trainer.batch_size=8", "trainer.lr=5e-3", "logger.mode=disabled", "trainer.progress=false",
    )  # fmt: skip
    metrics = run(cfg, tmp_path)["method_metrics"]
    modules = len(metrics["rank"])
    log = metrics["budget_log"]
    assert [s for s, *_ in log] == [2, 5, 8, 11, 14, 17, 18]
    for step, budget, active in log:
        assert active == budget, (step, budget, active)
    assert log[0][1] == 6 * modules and log[-1][1] == 2 * modules
    assert sum(metrics["rank"].values()) <= 2 * modules  # final phase: the pruned lambdas stayed zero


def test_schedule_must_fit_the_run():
    m = AdaLora(AdaLoraConfig(t_init=200, t_final=1000))
    with pytest.raises(ValueError, match="t_init < T - t_final"):
        m.on_train_start(torch.nn.Linear(1, 1), None, total_steps=500)
    with pytest.raises(ValueError, match="target_r <= init_r"):
        AdaLora(AdaLoraConfig(init_r=4, target_r=8))


@pytest.mark.parametrize(("method", "ranks", "millions"), [
    ("adalora", ["method.init_r=8", "method.target_r=4"], 1.92),  # Table 1, R=4 block: "1.92M / 1.26M"
    ("adalora", ["method.init_r=16", "method.target_r=8"], 3.25),  # R=8 block: "3.25M / 1.92M"
    ("sora", ["method.r=8"], 1.92),  # R=4 block: "1.92M / 1.38M"
    ("sora", ["method.r=16"], 3.25),  # R=8 block: "3.25M / 2.24M"
])  # fmt: skip
def test_rm_lora_table1_training_counts_of_the_baselines(method, ranks, millions):
    # RM-LoRA Table 1 (DeBERTa-v3-base, encoder linears adapted, pooler and classifier trained): the trainable
    # column at the initial rank (the inference column depends on how far training prunes)
    cfg = compose_cfg("experiment=rm_lora/deberta_glue", "task=glue/rte", f"method={method}", *ranks, "dry_run=true")
    assert round(dry_run(make_plan(cfg))["trainable_params"] / 1e6, 2) == millions


def test_allocator_state_round_trip_continues_the_same_schedule():
    # a run interrupted at step 7 and resumed from (model, optimizer, method) state makes the same masking
    # decisions as an uninterrupted one: the importance EMAs and the final mask travel in method.state_dict()
    overrides = ("method.init_r=4", "method.target_r=2", "method.t_init=2", "method.t_final=4", "method.delta_t=2")
    ids = torch.randint(5, 200, (4, 9), generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 1, 1, 0])

    def fresh():
        plan = make_plan(compose_cfg("model=tiny-bert", "task=glue/rte", "method=adalora", *overrides))
        torch.manual_seed(0)
        model = build(plan)[0].eval()  # no dropout: the comparison is about state, not random masks
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        plan.method.on_train_start(model, opt, total_steps=14)
        return plan.method, model, opt

    def steps(method, model, opt, start, stop):
        for step in range(start, stop):
            loss = model(input_ids=ids, labels=labels).loss + method.extra_loss(model, step)
            loss.backward()
            method.after_backward(model, step)
            opt.step()
            method.after_optimizer_step(model, step)
            opt.zero_grad()

    method, model, opt = fresh()
    steps(method, model, opt, 0, 14)
    reference = (method.budget_log, {n: x.factors["E"].detach().clone() for n, x in adapter_layers(model).items()})

    method, model, opt = fresh()
    steps(method, model, opt, 0, 7)
    saved = (
        {k: v.clone() for k, v in model.state_dict().items()},
        copy.deepcopy(opt.state_dict()),
        copy.deepcopy(method.state_dict()),
    )
    method, model, opt = fresh()  # "restart the process"
    model.load_state_dict(saved[0])
    opt.load_state_dict(saved[1])
    method.load_state_dict(saved[2])
    steps(method, model, opt, 7, 14)
    assert method.budget_log == reference[0]
    for n, x in adapter_layers(model).items():
        torch.testing.assert_close(x.factors["E"], reference[1][n], atol=1e-6, rtol=0)
