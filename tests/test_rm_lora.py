"""RM-LoRA: the orthogonality regulariser (eq. 10), gradient masking (Algorithm 1) and Table 5's measurements."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import compose_cfg

from loralab import tables
from loralab.adapters import adapter_layers, count_parameters
from loralab.config import PROJECT_ROOT
from loralab.methods.lora import Lora, LoraConfig
from loralab.methods.rm_lora import RmLora, RmLoraConfig, orthogonality_penalty
from loralab.models import build_model, head_modules
from loralab.run import build, dry_run, make_plan, run


def test_regulariser_value_and_gradient_against_direct_computation():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 10, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(7, 4, dtype=torch.float64, generator=g, requires_grad=True)
    value = orthogonality_penalty(a, b)
    eye = torch.eye(4, dtype=torch.float64)
    direct = sum(
        (sum(a[i, k] * a[j, k] for k in range(10)) - eye[i, j]) ** 2 for i in range(4) for j in range(4)
    ) + sum((sum(b[k, i] * b[k, j] for k in range(7)) - eye[i, j]) ** 2 for i in range(4) for j in range(4))
    torch.testing.assert_close(value, direct)
    ga, gb = torch.autograd.grad(value, [a, b])
    # d/dA ||A A^T - I||^2 = 4 (A A^T - I) A ;  d/dB ||B^T B - I||^2 = 4 B (B^T B - I)
    torch.testing.assert_close(ga, 4 * (a @ a.T - eye) @ a)
    torch.testing.assert_close(gb, 4 * b @ (b.T @ b - eye))


def tiny(*overrides: str):
    cfg = compose_cfg("model=tiny-bert", "task=glue/rte", "method=rm_lora", "method.r=4", *overrides)
    plan = make_plan(cfg)
    torch.manual_seed(0)
    model = build(plan)[0]
    return plan.method, model


def loss_of(model) -> torch.Tensor:
    ids = torch.randint(5, 200, (3, 9), generator=torch.Generator().manual_seed(1))
    return model(input_ids=ids, labels=torch.tensor([0, 1, 0])).loss


def test_extra_loss_is_weighted_sum_over_adapters():
    method, model = tiny("method.reg_weight=0.25")
    layers = adapter_layers(model).values()
    expected = 0.25 * sum(orthogonality_penalty(x.factors["A"], x.factors["B"]) for x in layers)
    torch.testing.assert_close(method.extra_loss(model, 0), expected)
    assert tiny("method.regularize=false")[0].extra_loss(model, 0) is None


def test_masked_entries_and_adam_moments_do_not_move():
    method, model = tiny("method.mask_directions=1")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    method.on_train_start(model, opt, 10)
    layers = adapter_layers(model)
    with torch.no_grad():  # B starts at zero: give it values so masking is visible in both factors
        for layer in layers.values():
            layer.factors["B"].normal_()
    for step in range(3):
        (loss_of(model) + method.extra_loss(model, step)).backward()
        method.after_backward(model, step)
        frozen = [(p, m) for p, m, _ in method._frozen]
        before = {
            id(p): (p.detach().clone(), {k: v.clone() for k, v in opt.state.get(p, {}).items()}) for p, _ in frozen
        }
        opt.step()
        method.after_optimizer_step(model, step)
        opt.zero_grad()
        for p, masked in frozen:
            value, state = before[id(p)]
            assert torch.equal(p.detach()[masked], value[masked])  # masked: bit-identical, weight decay included
            assert not torch.equal(p.detach()[~masked], value[~masked])  # the kept direction moved
            for k in ("exp_avg", "exp_avg_sq"):
                if k in state:  # from the second step on
                    assert torch.equal(opt.state[p][k][masked], state[k][masked])
    # one of the r = 4 directions kept per adapter: a row of A and the matching column of B
    for p, masked in frozen:
        kept = (~masked).any(dim=1 if p.shape[0] == 4 else 0)
        assert int(kept.sum()) == 1


def test_mask_directions_default_and_bounds():
    assert RmLora(RmLoraConfig(r=8)).r_hat == 4
    with pytest.raises(ValueError, match="mask_directions must be in 1..r=8"):
        RmLora(RmLoraConfig(r=8, mask_directions=9))


def test_table5_measurements_on_the_unscaled_delta_w():
    # Delta W = W_B W_A (unscaled; alpha / r = 2 here) with singular values 1, 1, 0.5 and 1e-4 on known axes:
    # rank with relative tolerance 0.01 = 3; ||Delta W Delta W^T - I||_F^2 = sum_i (s_i^2 - 1)^2 + (d_out - 4)
    method, model = tiny()
    name, layer = next(iter(adapter_layers(model).items()))
    singular = [1.0, 1.0, 0.5, 1e-4]
    with torch.no_grad():
        layer.factors["A"].zero_()
        layer.factors["B"].zero_()
        for i, s in enumerate(singular):
            layer.factors["A"][i, i] = s
            layer.factors["B"][i + 1, i] = 1.0  # orthonormal columns of B
    metrics = method.final_metrics(model)
    d_out = layer.out_features
    assert metrics["delta_rank"][name] == 3
    expected = sum((s**2 - 1) ** 2 for s in singular) + (d_out - 4)
    assert metrics["delta_orthogonality_loss"][name] == pytest.approx(expected, rel=1e-5)
    # the other adapters are untouched (B = 0): rank 0, loss d_out
    other, x = list(adapter_layers(model).items())[1]
    assert metrics["delta_rank"][other] == 0 and metrics["delta_orthogonality_loss"][other] == x.out_features
    method.cfg.rank_rtol = 1e-5  # a tighter tolerance counts the 1e-4 direction too
    assert method.final_metrics(model)["delta_rank"][name] == 4


def test_mask_generator_follows_the_trainer_seed():
    def draws(seed: int) -> list[list[int]]:
        plan = make_plan(compose_cfg("model=tiny-bert", "task=glue/rte", "method=rm_lora", f"trainer.seed={seed}"))
        return [torch.randperm(8, generator=plan.method.generator).tolist() for _ in range(5)]

    assert draws(1) == draws(1)
    assert draws(1) != draws(2)


@pytest.mark.parametrize(("r", "trainable"), [(4, 1_255_682), (8, 1_919_234)])
def test_deberta_glue_counts_of_table1(r, trainable):
    # RM-LoRA Table 1: LoRA R=4 "1.26M", R=8 "1.92M": encoder linears adapted, pooler and classifier trained
    cfg = compose_cfg(
        "experiment=rm_lora/deberta_glue", "task=glue/rte", "method=rm_lora", f"method.r={r}", "dry_run=true"
    )
    assert dry_run(make_plan(cfg))["trainable_params"] == trainable


def test_run_records_rank_and_orthogonality(tmp_path, tiny_glue):
    cfg = compose_cfg(
        "model=tiny-bert", "task=glue/rte", "method=rm_lora", "method.r=4", f"task.data_dir={tiny_glue}",
        "trainer.max_steps=2", "logger.mode=disabled", "trainer.progress=false",
    )  # fmt: skip
    result = run(cfg, tmp_path)
    assert set(result["method_metrics"]) == {
        "delta_rank", "delta_orthogonality_loss", "mean_delta_rank", "mean_delta_orthogonality_loss",
    }  # fmt: skip
    assert 1 <= result["method_metrics"]["mean_delta_rank"] <= 4


@pytest.mark.parametrize(("r", "trainable"), [(8, 1_328_642), (4, 665_090)])
def test_deberta_squad_counts_of_table2(r, trainable):
    # RM-LoRA Table 2 (DeBERTa-v3-base, SQuAD): LoRA / RM-LoRA R=8 "1.33M", R=4 "0.67M": encoder linears adapted,
    # the span head (qa_outputs, 768 x 2 + 2) trained. Counted on the meta device with the QA model class.
    plan = make_plan(compose_cfg("model=deberta-v3-base", "task=bare"))
    model, _ = build_model(plan.model, "question_answering", device="meta")
    encoder = [r".*encoder\.layer\.\d+\..*(query_proj|key_proj|value_proj|dense)"]
    Lora(LoraConfig(r=r)).attach(model, encoder, head_modules(plan.model, "question_answering"))
    assert count_parameters(model)["trainable_params"] == trainable


def test_table1_renders_training_and_inference_counts(tmp_path):
    # RM-LoRA Table 1 prints "# T / I - Params": SoRA's I is what its output keeps after pruning (recorded by the
    # run), LoRA's I is its T (nothing pruned)
    spec = tables.load_spec(PROJECT_ROOT / "experiments" / "rm_lora" / "table1.yaml")

    def put(row: str, trainable: int, method_metrics: dict) -> None:
        path = tmp_path / "runs" / "rm_lora" / "table1" / "offline" / row / "cola" / "seed42" / "results.json"
        path.parent.mkdir(parents=True)
        result = {"status": "finished", "metrics": {"best": {"mcc": 0.5}, "epochs": []}, "weights_source": "hub",
                  "params": {"trainable_params": trainable}, "method_metrics": method_metrics}  # fmt: skip
        path.write_text(json.dumps(result))

    put("sora_r4", 2_000_000, {"inference_params": 1_400_000, "mean_gate_rank": 5.5})
    put("lora_r4", 1_255_682, {})
    results = tables.results_from_disk(spec, "offline", tmp_path)
    cells = {(c.row, c.column): c for c in tables.collect(spec, "offline", results, {})}
    sora, lora = cells[("sora_r4", "cola")], cells[("lora_r4", "cola")]
    assert (sora.params_paper, sora.inference_paper, sora.inference_run) == ("1.92M", "1.38M", 1_400_000)
    assert (lora.params_paper, lora.inference_paper, lora.inference_run) == ("1.26M", "1.26M", 1_255_682)
    md, _ = tables.render(spec, "offline", list(cells.values()), results)
    assert "| inference (our run) | inference (paper) |" in md
    assert "| 2,000,000 |  | 1.92M |  | 1,400,000 | 1.38M |" in md
