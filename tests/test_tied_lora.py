"""Tied-LoRA (variants lora, vera, tl1..tl6 of the paper's Table 1) and VeRA: counts, initialisation, tying,
q/k/v row blocks, merging and the regenerable frozen random factors."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from conftest import check_merge_roundtrip, compose_cfg
from safetensors.torch import load_file
from torch import nn

from loralab.adapters import (
    AdapterLinear,
    Factor,
    adapter_layers,
    count_parameters,
    load_adapter,
    save_adapter,
)
from loralab.adapters.model import BANK_NAME
from loralab.methods.tied_lora.method import VARIANTS
from loralab.run import build, dry_run, make_plan

ALL_VARIANTS = ["lora", "vera", "tl1", "tl2", "tl3", "tl4", "tl5", "tl6"]
RANKS = [2, 4, 8, 16, 32, 64, 128]
L, D = 32, 4096  # LLaMA-2-7B
HIDDEN = 32  # the tiny test models' hidden size

# Table 1 of Tied-LoRA: trainable parameters with L layers, hidden size d, rank r (q, k, v as one fused 3d output).
TABLE_1 = {
    "lora": lambda r: 4 * L * D * r,
    "vera": lambda r: L * (3 * D + r),
    "tl1": lambda r: D * r,
    "tl2": lambda r: 3 * D * L + L * r + D * r,
    "tl3": lambda r: 3 * D * r,
    "tl4": lambda r: 3 * D * r + L * r,
    "tl5": lambda r: 4 * D * r,
    "tl6": lambda r: 4 * D * r + L * (3 * D + r),
}
# The same numbers as printed at r = 8.
TABLE_1_R8 = {
    "lora": 4_194_304,
    "tl1": 32_768,
    "tl2": 426_240,
    "tl3": 98_304,
    "tl4": 98_560,
    "tl5": 131_072,
    "tl6": 524_544,
    "vera": 393_472,
}
# The frozen (random, regenerable) tied factors: A is d x r, B is r x 3d, each stored once.
FROZEN = {
    "lora": lambda r: 0,
    "vera": lambda r: 4 * D * r,
    "tl1": lambda r: 3 * D * r,
    "tl2": lambda r: 3 * D * r,
    "tl3": lambda r: D * r,
    "tl4": lambda r: D * r,
    "tl5": lambda r: 0,
    "tl6": lambda r: 0,
}
# The factor each variant initialises at zero (the update is zero at step 0; only it gets gradient at first).
ZERO_FACTOR = {"lora": "B", "vera": "v", "tl1": "A", "tl2": "v", "tl3": "B", "tl4": "B", "tl5": "B", "tl6": "v"}


# --- helpers ----------------------------------------------------------------------------------------------------


@functools.cache
def llama2_counts(variant: str, r: int) -> dict:
    return dry_run(make_plan(compose_cfg("model=llama2-7b", "task=bare", "method=tied_lora",
                                         f"method.variant={variant}", f"method.r={r}")))  # fmt: skip


def build_tiny(model: str = "tiny-llama", method: str = "tied_lora", *overrides: str, torch_seed: int = 0) -> nn.Module:
    """A tiny random sequence-classification model with ``method`` attached (no data needed), in eval mode
    (GPT-2 and RoBERTa have dropout). ``torch_seed`` seeds the global RNG (base weights, trainable factors)."""
    cfg = compose_cfg(f"model={model}", "task=glue/rte", f"method={method}", *overrides)
    torch.manual_seed(torch_seed)
    built, source, hit = build(make_plan(cfg))
    assert source == "random" and hit
    return built.eval()


def tied_llama(variant: str, *overrides: str) -> nn.Module:
    return build_tiny("tiny-llama", "tied_lora", f"method.variant={variant}", *overrides)


def bank(model: nn.Module) -> nn.ParameterDict:
    return getattr(model, BANK_NAME).tensors


def param_of(layer: AdapterLinear, f: Factor) -> nn.Parameter:
    """The stored parameter behind factor ``f`` of ``layer`` (the whole tensor, not its row/column block)."""
    return layer.factors[f.name] if f.tie is None else layer._bank[0].get(f)


def adapter_params(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Factor name -> the distinct parameters holding it (one when tied across layers, one per layer otherwise)."""
    out: dict[str, list[nn.Parameter]] = {}
    for layer in adapter_layers(model).values():
        for f in layer.specs:
            p, known = param_of(layer, f), out.setdefault(f.name, [])
            if not any(p is q for q in known):
                known.append(p)
    return out


def tokens(batch: int = 2, length: int = 10, seed: int = 123) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 256, (batch, length), generator=g)  # no padding id (0)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).logits.square().sum()


def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def randomize_zero_factors(model: nn.Module, std: float = 0.3, seed: int = 7) -> list[str]:
    """Fill every all-zero trainable adapter tensor with random values (so merge tests are not vacuous)."""
    g, filled = torch.Generator().manual_seed(seed), []
    with torch.no_grad():
        for name, params in adapter_params(model).items():
            for p in params:
                if p.requires_grad and not p.any():
                    p.copy_(torch.randn(p.shape, generator=g) * std)
                    filled.append(name)
    assert filled, "no zero-initialised factor found"
    return filled


def adapter_file_tensors(model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """The adapter factors (not the task head) of the file ``save_adapter`` writes."""
    save_adapter(model, path)
    return {k: t for k, t in load_file(str(path)).items() if k.startswith(f"{BANK_NAME}.") or ".factors." in k}


# --- 1. Table 1 counts on LLaMA-2-7B (meta device) --------------------------------------------------------------


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_table1_counts_on_llama2_7b(variant: str):
    for r in RANKS:
        info = llama2_counts(variant, r)
        assert info["adapted_modules"] == 3 * L  # q, k and v of every layer
        assert info["adapter_params"] == TABLE_1[variant](r), (variant, r)
        assert info["adapter_frozen_params"] == FROZEN[variant](r), (variant, r)


def test_table1_printed_values_at_r8():
    assert set(TABLE_1_R8) == set(VARIANTS) == set(ALL_VARIANTS)
    assert {v: llama2_counts(v, 8)["adapter_params"] for v in ALL_VARIANTS} == TABLE_1_R8


# --- 2. zero update at step 0, gradient flow --------------------------------------------------------------------


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_zero_update_at_step0_and_every_factor_trains(variant: str):
    """The update is exactly zero at step 0. As in LoRA, only the zero-initialised factor (``ZERO_FACTOR``) gets a
    non-zero gradient on the first backward: every other factor's gradient passes through it and is exactly zero.
    After one step the update is non-zero, and on the second backward every trainable factor gets gradient."""
    model, batch = tied_llama(variant), tokens()
    layers = adapter_layers(model)
    assert len(layers) == 6  # q, k, v in 2 layers
    for layer in layers.values():
        assert torch.equal(layer.delta_weight(), torch.zeros(layer.out_features, layer.in_features))

    factors = adapter_params(model)
    trainable = {name: [p for p in ps if p.requires_grad] for name, ps in factors.items()}
    trainable = {name: ps for name, ps in trainable.items() if ps}
    assert set(trainable) == set(VARIANTS[variant][0])
    zero = ZERO_FACTOR[variant]
    assert all(not p.any() for p in trainable[zero])

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss(model, batch).backward()
    for name, ps in trainable.items():
        for p in ps:
            assert p.grad is not None, name
            assert bool(p.grad.any()) == (name == zero), f"{variant}: first gradient of {name}"
    for name, ps in factors.items():
        assert all(p.grad is None for p in ps if not p.requires_grad), f"frozen {name} got a gradient"
    opt.step()
    opt.zero_grad(set_to_none=True)

    for n, layer in layers.items():
        assert layer.delta_weight().abs().max() > 1e-4, f"{variant}: {n} did not move"
    loss(model, batch).backward()
    for name, ps in trainable.items():
        for p in ps:
            assert p.grad.any(), f"{variant}: {name} gets no gradient after the first step"


# --- 3. tied tensors are stored, counted and saved once ---------------------------------------------------------


@pytest.mark.parametrize("variant", ["tl5", "tl6"])
def test_tied_a_b_stored_once_and_file_grows_only_by_u_v(variant: str, tmp_path: Path):
    r, fused_out = 8, 3 * HIDDEN
    sizes = {}
    for layers in (2, 4):
        model = tied_llama(variant, f"model.arch.num_hidden_layers={layers}")
        a, b = bank(model)["A"], bank(model)["B"]
        assert a.shape == (r, HIDDEN) and b.shape == (fused_out, r)
        assert sum(p is a for p in model.parameters()) == 1 and sum(p is b for p in model.parameters()) == 1
        for layer in adapter_layers(model).values():  # every q/k/v module uses those two tensors
            assert param_of(layer, layer.specs[0]) is a
            assert param_of(layer, next(f for f in layer.specs if f.name == "B")) is b

        saved = adapter_file_tensors(model, tmp_path / f"{variant}-{layers}.safetensors")
        assert torch.equal(saved[f"{BANK_NAME}.tensors.A"], a.detach())
        assert torch.equal(saved[f"{BANK_NAME}.tensors.B"], b.detach())
        per_layer = [k for k in saved if "@" in k]
        assert len(per_layer) == (2 * layers if variant == "tl6" else 0)  # u and v of each attention block
        sizes[layers] = sum(t.numel() for t in saved.values())
        assert sizes[layers] == count_parameters(model)["adapter_params"]
        assert len(saved) == 2 + len(per_layer)

    tied = r * HIDDEN + fused_out * r
    if variant == "tl5":
        assert sizes[2] == sizes[4] == tied
    else:
        assert sizes[4] - sizes[2] == 2 * (r + fused_out)
        assert sizes[2] == tied + 2 * (r + fused_out)


# --- 4. a tied tensor is updated once per step ------------------------------------------------------------------


def test_tied_tensor_updated_once_per_step():
    lr = 1e-2
    model = tied_llama("tl5")
    b = bank(model)["B"]
    named = model.named_parameters(remove_duplicate=False)
    distinct = {id(p) for _, p in named if p.requires_grad}
    assert len(distinct) == 3  # the tied A and B, and the head (score.weight)

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    assert len(opt.param_groups[0]["params"]) == len(distinct)
    assert sum(p is b for p in opt.param_groups[0]["params"]) == 1

    before = b.detach().clone()
    loss(model, tokens()).backward()
    grad = b.grad.clone()
    assert grad.abs().min() > 0  # every element of B gets gradient, summed over the 2 layers' q, k, v
    opt.step()
    step = b.detach() - before
    assert step.abs().max() <= lr * 1.01  # Adam's first step moves an element by at most ~lr: ~2 lr if once per layer
    assert step.abs().median() >= 0.9 * lr
    # exactly one Adam step with the summed gradient (B starts at zero, so weight decay does nothing)
    torch.testing.assert_close(step, -lr * grad / (grad.abs() + 1e-8), rtol=1e-5, atol=1e-9)


# --- 5. q/k/v row blocks with grouped-query attention -----------------------------------------------------------


def test_qkv_row_blocks_with_grouped_query_attention():
    model = tied_llama("tl6", "model.arch.num_key_value_heads=1", "model.arch.num_attention_heads=2")
    r = 8
    a, b = bank(model)["A"], bank(model)["B"]
    assert b.shape == (64, r)  # q 32 + k 16 + v 16
    randomize_zero_factors(model)  # v starts at zero
    expected_rows = {"q_proj": (0, 32), "k_proj": (32, 48), "v_proj": (48, 64)}
    for i in range(2):
        group = f"model.layers.{i}.self_attn"
        u, v = bank(model)[f"u@{group.replace('.', '__')}"], bank(model)[f"v@{group.replace('.', '__')}"]
        assert u.shape == (r,) and v.shape == (64,)
        with torch.no_grad():
            u.copy_(torch.linspace(0.5, 1.5, r))  # u starts at one: make it non-trivial too
            full = torch.diag(v) @ b @ torch.diag(u) @ a  # the fused (64 x 32) update, by hand
        for proj, (lo, hi) in expected_rows.items():
            layer = model.get_submodule(f"{group}.{proj}")
            assert isinstance(layer, AdapterLinear) and (layer.out_features, layer.in_features) == (hi - lo, 32)
            specs = {f.name: f for f in layer.specs}
            assert specs["B"].rows == specs["v"].rows == (lo, hi) and specs["A"].rows is None
            torch.testing.assert_close(layer.delta_weight().detach(), full[lo:hi], rtol=1e-6, atol=1e-7)
            assert layer.delta_weight().abs().max() > 1e-3


# --- 6. merge / unmerge -----------------------------------------------------------------------------------------


def test_merge_tl6_llama():
    model, batch = tied_llama("tl6"), tokens()
    base_out = logits(model, batch)
    assert randomize_zero_factors(model) == ["v", "v"]  # one v per attention block
    check_merge_roundtrip(model, lambda: logits(model, batch), base_out)


@pytest.mark.parametrize("variant", ["tl5", "tl6"])
def test_merge_tied_lora_gpt2_fused_c_attn(variant: str):
    model = build_tiny("tiny-gpt2", "tied_lora", f"method.variant={variant}")
    layers = adapter_layers(model)
    assert sorted(layers) == [f"transformer.h.{i}.attn.c_attn" for i in range(2)]  # one fused module per layer
    for layer in layers.values():
        assert layer.fan_in_fan_out and (layer.in_features, layer.out_features) == (HIDDEN, 3 * HIDDEN)
        assert all(f.rows is None for f in layer.specs)  # the whole chain, no row blocks
    assert bank(model)["B"].shape == (3 * HIDDEN, 8)
    batch = tokens()
    base_out = logits(model, batch)
    randomize_zero_factors(model)
    check_merge_roundtrip(model, lambda: logits(model, batch), base_out)


def test_merge_vera_roberta_modules_of_different_sizes():
    r = 8
    model = build_tiny("tiny-roberta", "vera", f"method.r={r}", "method.targets=D+A")
    layers = adapter_layers(model)
    assert len(layers) == 2 * 6 + 1  # q, k, v and three denses per layer, plus classifier.dense
    a, b = bank(model)["vera_A"], bank(model)["vera_B"]
    assert a.shape == (r, 64) and b.shape == (64, r)  # the largest input (output.dense) and output (intermediate)
    assert not a.requires_grad and not b.requires_grad
    sizes = {(layer.in_features, layer.out_features) for layer in layers.values()}
    assert sizes == {(32, 32), (32, 64), (64, 32)}
    batch = tokens()
    base_out = logits(model, batch)
    assert randomize_zero_factors(model) == ["b"] * len(layers)  # b starts at zero
    for n, layer in layers.items():
        d_in, d_out = layer.in_features, layer.out_features
        t = {f.name: layer.tensor(f) for f in layer.specs}
        assert torch.equal(t["A"], a[:, :d_in]) and torch.equal(t["B"], b[:d_out]), n
        assert t["d"].shape == (r,) and t["b"].shape == (d_out,) and t["d"].requires_grad and t["b"].requires_grad
        by_hand = torch.diag(t["b"]) @ b[:d_out] @ torch.diag(t["d"]) @ a[:, :d_in]
        torch.testing.assert_close(layer.delta_weight().detach(), by_hand.detach(), rtol=1e-6, atol=1e-7)
    assert count_parameters(model)["adapter_params"] == sum(r + layer.out_features for layer in layers.values())
    check_merge_roundtrip(model, lambda: logits(model, batch), base_out)


# --- 7. frozen random factors are regenerable from the seed -----------------------------------------------------


def frozen_tied(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {k: p.detach().clone() for k, p in bank(model).items() if not p.requires_grad}
    assert out and all(t.abs().min() > 0 for t in out.values())
    return out


@pytest.mark.parametrize(
    ("method", "overrides", "frozen"),
    [
        ("tied_lora", ("method.variant=vera",), {"A", "B"}),
        ("tied_lora", ("method.variant=tl1",), {"B"}),
        ("tied_lora", ("method.variant=tl3",), {"A"}),
        ("vera", ("method.r=8",), {"vera_A", "vera_B"}),
    ],
    ids=["tied-vera", "tl1", "tl3", "vera"],
)
def test_frozen_random_factors_depend_only_on_method_seed(method: str, overrides: tuple[str, ...], frozen: set):
    def build_with(seed: int, torch_seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        model = build_tiny("tiny-llama", method, *overrides, f"method.seed={seed}", torch_seed=torch_seed)
        return frozen_tied(model), model.score.weight.detach().clone()

    first, head = build_with(seed=3, torch_seed=0)
    assert set(first) == frozen
    again, other_head = build_with(seed=3, torch_seed=1)
    assert not torch.equal(head, other_head)  # the global RNG did change what it draws
    other, _ = build_with(seed=4, torch_seed=0)
    for k in frozen:
        assert torch.equal(first[k], again[k]), k
        assert not torch.allclose(first[k], other[k]), k


# --- 8. errors --------------------------------------------------------------------------------------------------


def test_unknown_variant_raises_naming_the_valid_ones():
    with pytest.raises(ValueError, match="unknown variant 'tl7'") as err:
        make_plan(compose_cfg("model=tiny-llama", "task=glue/rte", "method=tied_lora", "method.variant=tl7"))
    for v in ALL_VARIANTS:
        assert repr(v) in str(err.value)


def test_tying_blocks_of_different_shapes_raises():
    # "D" on llama: o_proj (32 -> 32) per attention block, gate/up (32 -> 64) and down (64 -> 32) per MLP
    with pytest.raises(ValueError, match="every attention block must have one input size"):
        tied_llama("tl5", "method.targets=D")


@pytest.mark.parametrize(("method", "overrides"), [("vera", ("method.r=8",)), ("tied_lora", ("method.variant=tl3",))])
def test_frozen_seeded_factors_are_regenerated_not_stored(method: str, overrides: tuple[str, ...], tmp_path: Path):
    source = build_tiny("tiny-roberta" if method == "vera" else "tiny-llama", method, *overrides, torch_seed=1)
    randomize_zero_factors(source)
    path = tmp_path / "adapter.safetensors"
    save_adapter(source, path)
    stored = load_file(str(path))
    frozen = {f"{BANK_NAME}.tensors.{k}" for k, p in bank(source).items() if not p.requires_grad}
    assert frozen and not frozen & set(stored)  # the random A/B are not in the file ...
    target = build_tiny("tiny-roberta" if method == "vera" else "tiny-llama", method, *overrides, torch_seed=2)
    load_adapter(target, path)  # ... yet loading into a fresh build (other global seed) reproduces the outputs
    batch = tokens()
    with torch.no_grad():
        target.load_state_dict(
            {k: v for k, v in source.state_dict().items() if ".factors." not in k and BANK_NAME not in k}, strict=False
        )  # same frozen base weights
        torch.testing.assert_close(logits(target, batch), logits(source, batch), atol=0, rtol=0)
