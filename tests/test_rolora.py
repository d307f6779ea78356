"""RoLoRA: rank moves within the budget, EXTEND keeps the model's function, and a run never over-allocates."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_cfg
from safetensors.torch import load_file

import loralab.run as run_module
from loralab.adapters import adapter_layers
from loralab.methods.rolora import Rolora, move_ranks, resize_triplets
from loralab.run import build, make_plan, run


def test_move_ranks_stays_in_budget_and_keeps_survivors():
    current, survived = [8, 8, 8, 8], [7, 1, 3, 5]  # sum 16 = half the budget of 4 x 8
    first = move_ranks(current, survived, average=8, gamma=1.0)  # gamma = 1/t at t = 1: jump to rescaled s
    assert first == [14, 2, 6, 10] and sum(first) == 32
    later = move_ranks(first, [9, 2, 2, 3], average=8, gamma=0.5)
    assert sum(later) <= 32 and all(r >= s for r, s in zip(later, [9, 2, 2, 3], strict=True))
    odd = move_ranks([3, 3, 3], [1, 1, 1], average=3, gamma=1 / 3)  # rounding could overshoot: trimmed
    assert sum(odd) <= 9 and min(odd) >= 1


def test_extend_and_compact_keep_outputs():
    plan = make_plan(compose_cfg("model=tiny-bert", "task=glue/rte", "method=rolora", "method.init_r=4",
                                 "method.target_r=4"))  # fmt: skip
    torch.manual_seed(0)
    model = build(plan)[0].eval()
    layers = adapter_layers(model)
    with torch.no_grad():
        for layer in layers.values():  # two active triplets, two pruned (lambda = 0)
            layer.factors["E"].copy_(torch.tensor([0.7, 0.0, -1.2, 0.0]))
    ids = torch.randint(5, 200, (2, 9))
    before = model(input_ids=ids).logits
    for rank in (7, 2):  # grow, then compact to the survivors
        for layer in layers.values():
            resize_triplets(layer, rank)
            assert layer.factors["P"].shape[1] == layer.factors["Q"].shape[0] == layer.factors["E"].numel() == rank
        torch.testing.assert_close(model(input_ids=ids).logits, before, atol=1e-6, rtol=0)


def test_run_never_allocates_more_than_k_times_r(tmp_path, tiny_glue):
    # two phases of 24 steps (24 examples, batch 8, 8 epochs); SPARSIFY prunes from step 2 to 17
    cfg = compose_cfg(
        "model=tiny-bert", "task=glue/rte", "method=rolora", "method.init_r=4", "method.target_r=4",
        "method.iterations=2", "method.t_init=2", "method.t_final=6", "method.delta_t=3", f"task.data_dir={tiny_glue}",
        "trainer.epochs=8", "trainer.batch_size=8", "trainer.lr=5e-3", "logger.mode=disabled", "trainer.progress=false",
    )  # fmt: skip
    result = run(cfg, tmp_path)
    m = result["method_metrics"]
    modules = len(m["rank"])
    assert m["budget"] == 4 * modules and m["max_allocated"] <= m["budget"]
    assert len(m["rank_history"]) == 2
    assert sum(m["rank_history"][0].values()) <= 4 * modules  # after the first move
    # phase 1 prunes to an average of R/2 = 2; phase 2 to 2 * (1 + 1/3) = 2.67: the output is what survived
    assert sum(m["rank_history"][1].values()) <= round(2 * (1 + 1 / 3) * modules) + modules
    assert [e["phase"] for e in result["metrics"]["epochs"]] == [0] * 8 + [1] * 8
    assert result["metrics"]["steps"] == 48


def test_iterated_baseline_restarts_from_the_best_checkpoint(tmp_path, tiny_glue, monkeypatch):
    # LoRA* (RoLoRA Table 1): T runs, each starting from the best checkpoint so far
    restored = []
    real = run_module.load_adapter_state
    monkeypatch.setattr(run_module, "load_adapter_state", lambda m, s: (restored.append(s), real(m, s)))
    cfg = compose_cfg(
        "model=tiny-bert", "task=glue/rte", "method=lora", "trainer.iterations=3", "trainer.epochs=2",
        f"task.data_dir={tiny_glue}", "logger.mode=disabled", "trainer.progress=false",
    )  # fmt: skip
    result = run(cfg, tmp_path)
    assert [e["phase"] for e in result["metrics"]["epochs"]] == [0, 0, 1, 1, 2, 2]
    assert len(restored) == 3
    best_file = load_file(str(tmp_path / "adapter.safetensors"))  # the best epoch over all runs
    assert set(best_file) == set(restored[-1])
    assert all(torch.equal(best_file[k], restored[-1][k]) for k in best_file)


def test_iterations_and_rolora_phases_do_not_mix(tmp_path):
    cfg = compose_cfg("model=tiny-bert", "task=glue/rte", "method=rolora", "method.init_r=4", "method.target_r=4",
                      "trainer.iterations=2", "logger.mode=disabled")  # fmt: skip
    with pytest.raises(ValueError, match="leave trainer.iterations at 1"):
        run(cfg, tmp_path)


def test_sora_as_sparsify(tmp_path, tiny_glue):
    # RoLoRA^B (Table 5): SoRA's gates decide the survivors; EXTEND works on its (A, gate, B) chain too
    plan = make_plan(compose_cfg("model=tiny-bert", "task=glue/rte", "method=rolora", "method.init_r=4",
                                 "method.target_r=4", "method.sparsify=sora"))  # fmt: skip
    torch.manual_seed(0)
    model = build(plan)[0].eval()
    layer = next(iter(adapter_layers(model).values()))
    assert [f.name for f in layer.specs] == ["A", "gate", "B"]
    with torch.no_grad():
        for x in adapter_layers(model).values():
            x.factors["B"].normal_()
            x.factors["gate"].copy_(torch.tensor([0.5, 0.0, 0.0, -2.0]))
    ids = torch.randint(5, 200, (2, 9))
    before = model(input_ids=ids).logits
    for x in adapter_layers(model).values():
        resize_triplets(x, 6)
    torch.testing.assert_close(model(input_ids=ids).logits, before, atol=1e-6, rtol=0)

    cfg = compose_cfg(
        "model=tiny-bert", "task=glue/rte", "method=rolora", "method.init_r=4", "method.target_r=4",
        "method.sparsify=sora", "method.xi=0.3", "method.multiply_lr=false", "method.iterations=2",
        f"task.data_dir={tiny_glue}", "trainer.epochs=2", "logger.mode=disabled", "trainer.progress=false",
    )  # fmt: skip
    m = run(cfg, tmp_path / "run")["method_metrics"]
    assert m["max_allocated"] <= m["budget"] and len(m["rank_history"]) == 2
    # at the end the adapters are compacted to the surviving gates (a module with none keeps one zero-gated one)
    assert m["mean_final_rank"] * len(m["rank"]) <= sum(m["rank_history"][-1].values()) < m["budget"]
    assert m["ranks_of"] == "best_epoch" and all(0 <= r <= 4 for r in m["rank"].values())


def test_extend_draws_new_components_as_a_fresh_adapter():
    # "initialized in the same way as LoRA adapters so that their product is 0": SoRA's new components get a live
    # N(0, 1) gate, a Kaiming-uniform A row and a zero B column; AdaLoRA's new ones N(0, 0.02) P and Q, lambda 0
    for sparsify, (a, d, b) in (("sora", ("A", "gate", "B")), ("adalora", ("Q", "E", "P"))):
        plan = make_plan(compose_cfg("model=tiny-bert", "task=glue/rte", "method=rolora", "method.init_r=4",
                                     "method.target_r=4", f"method.sparsify={sparsify}"))  # fmt: skip
        torch.manual_seed(0)
        layer = next(iter(adapter_layers(build(plan)[0]).values()))
        with torch.no_grad():
            layer.factors[b].normal_()
            layer.factors[d].copy_(torch.tensor([0.5, 0.0, 0.0, -2.0]))
        resize_triplets(layer, 8)  # 2 survivors + 6 new
        new_a, new_d, new_b = (
            t.detach() for t in (layer.factors[a][2:], layer.factors[d][2:], layer.factors[b][:, 2:])
        )
        if sparsify == "sora":
            assert (new_b == 0).all() and (new_d != 0).all()
            assert 0 < new_a.abs().max() <= 1 / layer.in_features**0.5  # U(+-1/sqrt(fan_in)), as at build time
        else:
            assert (new_d == 0).all() and (new_a != 0).all() and (new_b != 0).all()
            assert float(new_a.std()) == pytest.approx(0.02, rel=0.2)
            assert float(new_b.std()) == pytest.approx(0.02, rel=0.2)


def test_rolora_b_new_gates_live_after_extend(tmp_path, tiny_glue, monkeypatch):
    # RoLoRA^B: phase 1 prunes gates (a strong threshold, 0.3 per step), EXTEND adds new components, and in phase 2
    # they train: their gates are still non-zero after its 3 steps and their B columns have moved off zero. (Given
    # gate 0, as before, a threshold above an Adam step kept every new gate at exactly 0.)
    real = Rolora.on_phase_end
    seen = {}

    def spy(self, model, phase):
        layers = adapter_layers(model)
        if phase == 0:
            seen["survived"] = self.active_ranks(model)
        else:  # before the final compaction: the components added at the end of phase 0
            seen["new"] = [
                (x.factors["gate"][seen["survived"][n] :].detach().clone(),
                 x.factors["B"][:, seen["survived"][n] :].detach().clone())
                for n, x in layers.items()
            ]  # fmt: skip
        real(self, model, phase)

    monkeypatch.setattr(Rolora, "on_phase_end", spy)
    cfg = compose_cfg(
        "model=tiny-bert", "task=glue/rte", "method=rolora", "method.init_r=4", "method.target_r=4",
        "method.sparsify=sora", "method.xi=0.3", "method.multiply_lr=false", "method.iterations=2",
        f"task.data_dir={tiny_glue}", "trainer.epochs=1", "trainer.batch_size=8", "trainer.lr=1e-3",
        "logger.mode=disabled", "trainer.progress=false",
    )  # fmt: skip
    run(cfg, tmp_path)
    gates = torch.cat([g for g, _ in seen["new"]])
    assert gates.numel() > 0  # phase 1 pruned, EXTEND grew
    alive = gates != 0
    assert alive.float().mean() > 0.2, gates
    for g, b in seen["new"]:  # every live new component contributes: its B column trained
        assert all(b[:, i].abs().max() > 0 for i in torch.nonzero(g).flatten())
