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


def tiny_adalora(*overrides: str):
    plan = make_plan(compose_cfg("model=tiny-bert", "task=glue/rte", "method=adalora", "method.init_r=4",
                                 "method.target_r=2", *overrides))  # fmt: skip
    torch.manual_seed(0)
    return plan.method, build(plan)[0]


@pytest.mark.parametrize("squared", [False, True])
def test_orthogonal_regulariser_value_and_gradient(squared):
    # fixed P, Q (not orthonormal) in every adapter; the formulas written out:
    #   code (default):  gamma / (2K) * sum_k (||P_k^T P_k - I||_F + ||Q_k Q_k^T - I||_F)
    #     d/dP ||P^T P - I||_F = 2 P (P^T P - I) / ||P^T P - I||_F ;  d/dQ ||Q Q^T - I||_F = 2 (Q Q^T - I) Q / ||.||_F
    #   eq. 7 (squared): gamma * sum_k (||P_k^T P_k - I||_F^2 + ||Q_k Q_k^T - I||_F^2)
    #     d/dP ||P^T P - I||_F^2 = 4 P (P^T P - I) ;  d/dQ ||Q Q^T - I||_F^2 = 4 (Q Q^T - I) Q
    method, model = tiny_adalora("method.orth_weight=0.3", f"method.orth_squared={str(squared).lower()}")
    layers = list(adapter_layers(model).values())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in layers:
            for f in ("P", "Q"):
                layer.factors[f].copy_(torch.randn(layer.factors[f].shape, generator=g) * 0.3)
    k, eye = len(layers), torch.eye(4)
    with torch.no_grad():
        mp = [x.factors["P"].T @ x.factors["P"] - eye for x in layers]
        mq = [x.factors["Q"] @ x.factors["Q"].T - eye for x in layers]
        frob = [torch.sqrt((m**2).sum()) for m in mp + mq]
        expected = 0.3 * sum(n**2 for n in frob) if squared else 0.3 / (2 * k) * sum(frob)
    value = method.extra_loss(model, 0)
    torch.testing.assert_close(value, expected)
    value.backward()
    p, q = layers[0].factors["P"], layers[0].factors["Q"]
    with torch.no_grad():
        if squared:
            grad_p, grad_q = 0.3 * 4 * p @ mp[0], 0.3 * 4 * mq[0] @ q
        else:
            grad_p = 0.3 / (2 * k) * 2 * p @ mp[0] / torch.sqrt((mp[0] ** 2).sum())
            grad_q = 0.3 / (2 * k) * 2 * mq[0] @ q / torch.sqrt((mq[0] ** 2).sum())
    torch.testing.assert_close(p.grad, grad_p)
    torch.testing.assert_close(q.grad, grad_q)


def test_importance_ema_from_post_step_weights_and_clipped_gradients():
    # the reference updates the EMAs after optimizer.step() (update_and_mask), from the post-step weights and the
    # clipped gradients, and not in the final phase
    method, model = tiny_adalora("method.beta1=0.8", "method.beta2=0.7")
    layers = adapter_layers(model)
    assert all(torch.equal(x.delta_weight(), torch.zeros_like(x.delta_weight())) for x in layers.values())
    with torch.no_grad():  # lambda != 0, so P and Q get gradients and every sensitivity differs before the step
        for x in layers.values():
            x.factors["E"].copy_(torch.tensor([0.5, -0.3, 0.2, 0.1]))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5)
    method.on_train_start(model, opt, total_steps=2000)  # t_init 200, t_final 1000: step 0 updates, no masking
    ids = torch.randint(5, 200, (2, 7), generator=torch.Generator().manual_seed(2))
    model(input_ids=ids, labels=torch.tensor([0, 1])).loss.backward()
    method.after_backward(model, 0)
    torch.nn.utils.clip_grad_norm_(params, 1e-3)  # the loop clips between the hooks: the clipping bites here
    opt.step()
    method.after_optimizer_step(model, 0)
    name, layer = next(iter(layers.items()))
    for f in ("Q", "P", "E"):
        p = layer.factors[f]
        sens = (p * p.grad).abs()  # post-step weight x clipped gradient
        assert sens.max() > 0
        i_bar, u_bar = method.ema[f"{name}.{f}"]
        torch.testing.assert_close(i_bar, 0.2 * sens, rtol=1e-5, atol=0)  # relative: the values are ~1e-6
        torch.testing.assert_close(u_bar, 0.3 * (sens - 0.2 * sens).abs(), rtol=1e-5, atol=0)
    before = {k: v[0].clone() for k, v in method.ema.items()}
    method.after_optimizer_step(model, 1000)  # T - t_final: the final phase keeps the EMAs
    assert all(torch.equal(method.ema[k][0], v) for k, v in before.items())


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
    assert metrics["mean_final_rank"] <= 2  # final phase: the pruned lambdas stayed zero
    assert metrics["ranks_of"] == "best_epoch"  # "rank": the output adapters, the best epoch's (any of 6..2 here)
    assert 2 <= metrics["mean_rank"] <= 6


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


def test_output_ranks_and_inference_params_are_the_best_epochs():
    # the run's output is the best epoch's adapter: its active triplets are "rank"; the inference size keeps their
    # P columns and Q rows (lambda folded in) plus the trained head
    method, model = tiny_adalora()
    layers = adapter_layers(model)
    with torch.no_grad():
        for x in layers.values():
            x.factors["E"].copy_(torch.tensor([0.5, 0.0, 0.2, 0.0]))
    method.on_best_epoch(model)
    with torch.no_grad():
        for x in layers.values():
            x.factors["E"][2] = 0.0  # pruned after the best epoch
    m = method.final_metrics(model)
    assert m["ranks_of"] == "best_epoch" and m["mean_rank"] == 2 and m["mean_final_rank"] == 1
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head = trainable - sum(f.numel() for x in layers.values() for f in x.factors.values())
    assert m["inference_params"] == head + sum(2 * (x.in_features + x.out_features) for x in layers.values())
