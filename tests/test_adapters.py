"""The adapter core: factor chains, freezing, merging, saving, tied factors, counting and errors."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from conftest import check_merge_roundtrip, compose_cfg
from safetensors.torch import load_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from loralab.adapters import (
    AdapterLinear,
    Factor,
    adapter_layers,
    adapter_state_dict,
    count_parameters,
    find_targets,
    freeze_base,
    inject_adapters,
    load_adapter,
    merge_adapters,
    save_adapter,
    unmerge_adapters,
)
from loralab.adapters.model import BANK_NAME
from loralab.methods import Method
from loralab.methods.lora import Lora, LoraConfig
from loralab.methods.lora_mini import LoraMini, LoraMiniConfig
from loralab.models import ModelConfig, build_model, head_modules, resolve_targets
from loralab.run import build, make_plan

MODEL_CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
SEQ_CLS = "sequence_classification"
GPT2_LINEARS = r".*\.(c_attn|c_fc|c_proj)"


# --- helpers ----------------------------------------------------------------------------------------------------


def tiny_config(name: str) -> ModelConfig:
    """The ``conf/model/<name>.yaml`` test model as a ModelConfig (random weights, built-in tokenizer)."""
    raw = yaml.safe_load((MODEL_CONF / f"{name}.yaml").read_text())
    return ModelConfig(name=raw["name"], family=raw["family"], weights="random", tokenizer="tiny", arch=raw["arch"])


def tiny_model(name: str, kind: str = SEQ_CLS, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model, source = build_model(tiny_config(name), kind, num_labels=2)
    assert source == "random"
    return model.eval()


def attach(
    model: nn.Module, model_name: str, method: Method, targets: str = "D", kind: str = SEQ_CLS, seed: int = 1
) -> list[str]:
    """Attach ``method`` to its preset targets and the family's head, the way the training entry point does."""
    cfg = tiny_config(model_name)
    torch.manual_seed(seed)
    return method.attach(model, resolve_targets(cfg, targets, method.cfg.target_modules), head_modules(cfg, kind))


def tokens(batch: int = 2, length: int = 12, seed: int = 123) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 256, (batch, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def randomize_factors(model: nn.Module, names: tuple[str, ...], std: float = 0.2, seed: int = 7) -> None:
    """Overwrite the named factors of every adapter layer with random values (e.g. LoRA's zero-initialised B)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            for n in names:
                t = layer.factors[n]
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype) * std)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def lora_factors(r: int = 2, init: str = "kaiming_uniform", tie_a: bool = False) -> Callable:
    def factors(name: str, d_in: int, d_out: int) -> list[Factor]:
        return [
            Factor("A", "matrix", d_in, r, tie="A" if tie_a else None),
            Factor("B", "matrix", r, d_out, init=init),
        ]

    return factors


class TwoBranch(nn.Module):
    """``left(x) + right(x)``: two linear maps fed the same input (for tied factors)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.left = nn.Linear(d, d)
        self.right = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.left(x) + self.right(x)


# --- 1. delta_weight is the chain product, forward is base + x delta^T -------------------------------------------

D_IN, D_OUT = 7, 5
CHAINS = {
    # name: (factors, scaling, expected delta from the factor tensors)
    "lora": (
        Lora(LoraConfig(r=3, alpha=6.0)).factors("m", D_IN, D_OUT),
        Lora(LoraConfig(r=3, alpha=6.0)).scaling,
        lambda f: 2.0 * f["B"] @ f["A"],  # alpha / r = 6 / 3
    ),
    "lora_mini": (
        LoraMini(LoraMiniConfig(r=2, a=4, b=3)).factors("m", D_IN, D_OUT),
        LoraMini(LoraMiniConfig(r=2, a=4, b=3)).scaling,
        lambda f: f["B_aux"] @ f["B_train"] @ f["A_train"] @ f["A_aux"],  # no alpha: scaling 1
    ),
    "diag_inside": (
        [
            Factor("A", "matrix", D_IN, 3),
            Factor("u", "diag", 3, 3, init="ones"),
            Factor("B", "matrix", 3, D_OUT),
            Factor("v", "diag", D_OUT, D_OUT, init="ones"),
        ],
        0.5,
        lambda f: 0.5 * torch.diag(f["v"]) @ f["B"] @ torch.diag(f["u"]) @ f["A"],
    ),
    "diag_first": (
        [Factor("w", "diag", D_IN, D_IN), Factor("A", "matrix", D_IN, 2), Factor("B", "matrix", 2, D_OUT)],
        1.5,
        lambda f: 1.5 * f["B"] @ f["A"] @ torch.diag(f["w"]),
    ),
}
BASES = {"linear": lambda: nn.Linear(D_IN, D_OUT), "conv1d": lambda: Conv1D(D_OUT, D_IN)}


@pytest.mark.parametrize("base_kind", sorted(BASES))
@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_delta_weight_is_chain_product_and_forward_adds_it(chain: str, base_kind: str):
    factors, scaling, expected = CHAINS[chain]
    torch.manual_seed(0)
    layer = AdapterLinear(BASES[base_kind](), factors, scaling).double()
    with torch.no_grad():  # every factor random and non-zero (LoRA's B starts at zero, diagonals at one)
        for t in layer.factors.values():
            t.normal_()
    f = dict(layer.factors)

    delta = layer.delta_weight()
    assert delta.shape == (D_OUT, D_IN)
    torch.testing.assert_close(delta, expected(f))
    assert delta.abs().max() > 1e-3  # a real update, not a zero matrix

    x = torch.randn(3, 4, D_IN, dtype=torch.float64)
    torch.testing.assert_close(layer(x), layer.base(x) + x @ delta.T)


# --- 2. frozen factors stay frozen, trainable ones train ----------------------------------------------------------


def test_lora_mini_training_step_updates_only_trainable_tensors():
    model = tiny_model("tiny-roberta")
    attach(model, "tiny-roberta", LoraMini(LoraMiniConfig(r=2, a=8, b=8)), targets="D+A")
    before = snapshot(model)

    def should_train(name: str) -> bool:
        return name.endswith(("factors.A_train", "factors.B_train")) or name.startswith("classifier.out_proj.")

    for name, p in model.named_parameters():
        assert p.requires_grad == should_train(name), name
    assert any(n.endswith("factors.A_aux") for n in before) and any(n.endswith("factors.B_aux") for n in before)

    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)  # every parameter: frozen ones must be skipped
    out = model(**tokens())
    nn.functional.cross_entropy(out.logits, torch.tensor([0, 1])).backward()
    opt.step()

    params = dict(model.named_parameters())
    for name, p in params.items():
        if should_train(name):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
            assert not torch.equal(p, before[name]), f"{name} did not change"
        else:
            assert p.grad is None, name
            assert torch.equal(p, before[name]), f"frozen {name} changed"
    # the frozen tensors named explicitly: LoRA-Mini's outer factors and the base weights they wrap
    layer = "roberta.encoder.layer.0.attention.self.query"
    for name in (f"{layer}.factors.A_aux", f"{layer}.factors.B_aux", f"{layer}.base.weight"):
        assert torch.equal(params[name], before[name])


# --- 3. merge equivalence ---------------------------------------------------------------------------------------


def test_merge_roberta_lora_mini_d_plus_a():
    batch = tokens()
    model = tiny_model("tiny-roberta")
    base_out = logits(model, batch)
    names = attach(model, "tiny-roberta", LoraMini(LoraMiniConfig(r=2, a=8, b=8)), targets="D+A")
    assert len(names) == 2 * 6 + 1  # q, k, v and three denses per layer, plus classifier.dense
    check_merge_roundtrip(model, lambda: logits(model, batch), base_out)


def test_merge_gpt2_conv1d_lora():
    batch = tokens()
    model = tiny_model("tiny-gpt2", kind="causal_lm")
    base_out = logits(model, batch)
    method = Lora(LoraConfig(r=2, alpha=4.0, target_modules=[GPT2_LINEARS]))
    names = attach(model, "tiny-gpt2", method, kind="causal_lm")
    assert len(names) == 2 * 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj per block
    assert all(layer.fan_in_fan_out for layer in adapter_layers(model).values())
    randomize_factors(model, ("B",))  # B starts at zero
    check_merge_roundtrip(model, lambda: logits(model, batch), base_out)


T5_D = [r".*\.(wi|wo)", "lm_head"]  # the T5 "D" preset: the feed-forward maps and the (tied) lm_head
TIED_HEADS = {
    # model, kind, target regexes, the embedding the adapted head shares its weight with, method, factor to randomise
    "t5_lora": ("tiny-t5", "seq2seq_lm", T5_D, "shared", lambda: Lora(LoraConfig(r=2, alpha=4.0)), "B"),
    "t5_lora_mini": ("tiny-t5", "seq2seq_lm", T5_D, "shared", lambda: LoraMini(LoraMiniConfig(r=2, a=8, b=8)), None),
    "llama": (
        "tiny-llama",
        "causal_lm",
        [r".*\.q_proj", "lm_head"],
        "model.embed_tokens",
        lambda: Lora(LoraConfig()),
        "B",
    ),
    "gpt2": ("tiny-gpt2", "causal_lm", [r".*\.c_attn", "lm_head"], "transformer.wte", lambda: Lora(LoraConfig()), "B"),
}


@pytest.mark.parametrize("case", sorted(TIED_HEADS))
def test_merge_with_tied_embeddings_leaves_them_untouched(case: str):
    """An adapted head whose weight is tied to the input embeddings: merging must not write into the embeddings."""
    name, kind, targets, embedding, make, randomize = TIED_HEADS[case]
    cfg = tiny_config(name)
    cfg.arch = {**cfg.arch, "tie_word_embeddings": True}
    torch.manual_seed(0)
    model = build_model(cfg, kind)[0].eval()
    emb = model.get_submodule(embedding).weight
    assert emb is model.get_output_embeddings().weight, "the test model's head is not tied"
    batch = tokens() | ({"decoder_input_ids": tokens(length=5, seed=9)["input_ids"]} if kind == "seq2seq_lm" else {})
    base_out = logits(model, batch)
    torch.manual_seed(1)
    assert "lm_head" in make().attach(model, targets, head_modules(cfg, kind))
    if randomize:
        randomize_factors(model, (randomize,), std=0.5)  # LoRA's B starts at zero
    embedded = emb.detach().clone()
    head = adapter_layers(model)["lm_head"]

    adapted = logits(model, batch)
    assert not torch.allclose(adapted, base_out, atol=1e-4), "vacuous: the adapters change nothing"
    merge_adapters(model)
    torch.testing.assert_close(logits(model, batch), adapted, atol=1e-5, rtol=0)
    assert torch.equal(model.get_submodule(embedding).weight, embedded), "merging wrote into the tied embeddings"
    assert head.base.weight is not emb
    unmerge_adapters(model)
    assert head.base.weight is emb, "unmerging must restore the tie"
    assert torch.equal(emb, embedded)
    torch.testing.assert_close(logits(model, batch), adapted, atol=1e-5, rtol=0)


def test_vera_frozen_projections_follow_peft():
    """VeRA's shared A and B have peft's distribution (U(+-sqrt(6/fan_in))), and with peft's A and B copied in, our
    VeRA computes what peft's computes."""
    peft = pytest.importorskip("peft")
    from loralab.methods.vera import Vera, VeraConfig

    r, batch = 64, tokens()
    ours = tiny_model("tiny-roberta")
    theirs = tiny_model("tiny-roberta")
    names = attach(ours, "tiny-roberta", Vera(VeraConfig(r=r)), targets="D+A")
    theirs = peft.get_peft_model(theirs, peft.VeraConfig(r=r, target_modules=names, vera_dropout=0.0))
    bank = getattr(ours, BANK_NAME).tensors
    a, b = bank["vera_A"], bank["vera_B"]
    peft_a, peft_b = theirs.base_model.vera_A["default"], theirs.base_model.vera_B["default"]
    assert a.shape == peft_a.shape and b.shape == peft_b.shape
    for mine, peft_t in ((a, peft_a), (b, peft_b)):
        bound = (6 / mine.shape[1]) ** 0.5
        assert mine.abs().max() <= bound and mine.abs().max() > 0.95 * bound
        assert mine.std().item() == pytest.approx(bound / 3**0.5, rel=0.06)  # uniform: std = bound / sqrt(3)
        assert mine.std().item() == pytest.approx(peft_t.std().item(), rel=0.1)

    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        a.copy_(peft_a), b.copy_(peft_b)
        for name, layer in adapter_layers(ours).items():
            peft_layer = theirs.base_model.model.get_submodule(name)
            for mine, peft_name in (("d", "vera_lambda_d"), ("b", "vera_lambda_b")):
                value = torch.randn(layer.factors[mine].shape, generator=g)
                layer.factors[mine].copy_(value)
                getattr(peft_layer, peft_name)["default"].copy_(value)
    out = logits(ours, batch)
    assert not torch.allclose(out, logits(tiny_model("tiny-roberta"), batch), atol=1e-3)
    torch.testing.assert_close(out, logits(theirs, batch), atol=1e-5, rtol=0)


# --- 4. save / load ---------------------------------------------------------------------------------------------


def trained_roberta(method: Method, adapter_seed: int) -> nn.Module:
    """tiny-roberta (base seed 0) with ``method`` attached; adapters and head differ per ``adapter_seed``."""
    model = tiny_model("tiny-roberta", seed=0)
    attach(model, "tiny-roberta", method, seed=adapter_seed)
    g = torch.Generator().manual_seed(adapter_seed)
    with torch.no_grad():  # as if trained: every trainable tensor moves (the head would otherwise match)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def test_save_load_round_trip(tmp_path: Path):
    def method() -> Method:
        return LoraMini(LoraMiniConfig(r=2, a=8, b=8))

    batch = tokens()
    source = trained_roberta(method(), adapter_seed=1)
    path = tmp_path / "adapter.safetensors"
    save_adapter(source, path, metadata={"method": "lora_mini"})

    saved = load_file(str(path))
    factors = {f"{n}.factors.{f}" for n in adapter_layers(source) for f in ("A_aux", "A_train", "B_train", "B_aux")}
    assert set(saved) == factors | {"classifier.out_proj.weight", "classifier.out_proj.bias"}
    assert not any(".base." in k or k.startswith("roberta.embeddings") for k in saved)
    params = dict(source.named_parameters())
    for k, t in saved.items():
        assert torch.equal(t, params[k]), k

    target = trained_roberta(method(), adapter_seed=2)
    assert not torch.allclose(logits(target, batch), logits(source, batch), atol=1e-4)
    load_adapter(target, path)
    torch.testing.assert_close(logits(target, batch), logits(source, batch), atol=0, rtol=0)

    merge_adapters(target)  # loading into merged weights would desynchronise them from the factors
    with pytest.raises(ValueError, match="unmerge_adapters"):
        load_adapter(target, path)


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (lambda: LoraMini(LoraMiniConfig(r=2, a=8, b=8)), r"A_train has shape \(4, 8\), model has \(2, 8\)"),
        (lambda: Lora(LoraConfig(r=4)), r"does not fit this model: missing \[.*factors\.A'.*unexpected.*A_aux"),
    ],
    ids=["other-rank", "other-method"],
)
def test_load_adapter_into_other_method_shape_raises(tmp_path: Path, other: Callable[[], Method], message: str):
    path = tmp_path / "adapter.safetensors"
    save_adapter(trained_roberta(LoraMini(LoraMiniConfig(r=4, a=8, b=8)), adapter_seed=1), path)
    with pytest.raises(ValueError, match=message):
        load_adapter(trained_roberta(other(), adapter_seed=2), path)


# --- 5. tied factors --------------------------------------------------------------------------------------------

D, R = 6, 2


def tied_model() -> tuple[TwoBranch, Factor]:
    torch.manual_seed(0)
    model = TwoBranch(D)
    names = inject_adapters(model, ["left", "right"], lora_factors(R, tie_a=True), scaling=1.0)
    assert names == ["left", "right"]
    freeze_base(model)
    model.double()  # factors are created in float32; the tied tensor stays one Parameter
    return model, model.left.specs[0]


def test_tied_factor_is_one_tensor_counted_and_saved_once():
    model, fa = tied_model()
    bank_a = getattr(model, BANK_NAME).tensors["A"]
    assert model.left.tensor(fa) is bank_a and model.right.tensor(fa) is bank_a
    assert sum(p is bank_a for p in model.parameters()) == 1
    assert "A" not in model.left.factors and "A" not in model.right.factors

    base = 2 * (D * D + D)
    adapter = R * D + 2 * D * R  # A once, a B per module
    assert count_parameters(model) == {
        "total_params": base + adapter,
        "trainable_params": adapter,
        "adapter_params": adapter,
        "adapter_frozen_params": 0,
        "head_params": 0,
    }
    assert set(adapter_state_dict(model)) == {f"{BANK_NAME}.tensors.A", "left.factors.B", "right.factors.B"}


def test_tied_factor_accumulates_gradient_and_both_modules_see_the_step():
    model, fa = tied_model()
    a = getattr(model, BANK_NAME).tensors["A"]
    x = torch.randn(4, D, dtype=torch.float64)
    (g_left,) = torch.autograd.grad(model.left(x).square().sum(), a)
    (g_right,) = torch.autograd.grad(model.right(x).square().sum(), a)
    assert g_left.abs().sum() > 0 and g_right.abs().sum() > 0 and not torch.allclose(g_left, g_right)

    (model.left(x).square().sum() + model.right(x).square().sum()).backward()
    torch.testing.assert_close(a.grad, g_left + g_right)

    expected = a.detach() - 0.1 * (g_left + g_right)
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    for layer in (model.left, model.right):
        torch.testing.assert_close(layer.tensor(fa).detach(), expected)
        torch.testing.assert_close(layer.delta_weight(), layer.factors["B"] @ expected)


def test_row_sliced_tied_factor_gives_each_module_its_block():
    def factors(name: str, d_in: int, d_out: int) -> list[Factor]:
        rows = (0, D) if name == "left" else (D, 2 * D)
        return [Factor("A", "matrix", d_in, R), Factor("B", "matrix", R, 2 * D, tie="B", rows=rows)]

    torch.manual_seed(0)
    model = TwoBranch(D)
    inject_adapters(model, ["left", "right"], factors, scaling=3.0)
    freeze_base(model)
    model.double()
    fb_left, fb_right = model.left.specs[1], model.right.specs[1]
    b = getattr(model, BANK_NAME).tensors["B"]
    assert b.shape == (2 * D, R)

    torch.testing.assert_close(model.left.tensor(fb_left), b[:D])
    torch.testing.assert_close(model.right.tensor(fb_right), b[D:])
    torch.testing.assert_close(model.left.delta_weight(), 3.0 * b[:D] @ model.left.factors["A"])
    torch.testing.assert_close(model.right.delta_weight(), 3.0 * b[D:] @ model.right.factors["A"])
    x = torch.randn(4, D, dtype=torch.float64)
    torch.testing.assert_close(model.right(x), model.right.base(x) + x @ model.right.delta_weight().T)
    assert count_parameters(model)["adapter_params"] == 2 * D * R + 2 * R * D

    model.left(x).sum().backward()  # the left module's gradient lands in its block only
    assert b.grad[:D].abs().sum() > 0
    assert torch.equal(b.grad[D:], torch.zeros(D, R, dtype=torch.float64))


# --- 6. errors --------------------------------------------------------------------------------------------------


def test_pattern_matching_nothing_raises_naming_it():
    model = tiny_model("tiny-bert")
    missing = r".*\.nonexistent"
    with pytest.raises(ValueError, match=re.escape(f"{[missing]} match no linear module")) as err:
        find_targets(model, [r".*\.query", missing])
    assert "linear modules include: bert.encoder.layer.0.attention.self.query" in str(err.value)
    with pytest.raises(ValueError, match="no_such_layer"):
        inject_adapters(model, ["no_such_layer"], lora_factors(), scaling=1.0)
    assert not adapter_layers(model)


@pytest.mark.parametrize(
    "factors",
    [
        [Factor("A", "matrix", 8, 2), Factor("B", "matrix", 3, 6)],  # inner sizes differ
        [Factor("A", "matrix", 8, 2), Factor("B", "matrix", 2, 5)],  # ends with 5, layer outputs 6
        [Factor("A", "matrix", 7, 2), Factor("B", "matrix", 2, 6)],  # starts with 7, layer takes 8
        [Factor("d", "diag", 6, 6)],  # a diagonal on an 8 -> 6 layer
    ],
    ids=["inner", "end", "start", "diag"],
)
def test_impossible_chain_raises(factors: list[Factor]):
    with pytest.raises(ValueError, match="impossible adapter shape"):
        AdapterLinear(nn.Linear(8, 6), factors, scaling=1.0)


@pytest.mark.parametrize(("a", "b", "fragment"), [(33, 8, "a=33 must be <= 32"), (8, 65, "b=65 must be <= 64")])
def test_lora_mini_outer_size_larger_than_layer_raises(a: int, b: int, fragment: str):
    model = tiny_model("tiny-roberta")
    method = LoraMini(LoraMiniConfig(r=2, a=a, b=b, target_modules=[r".*\.intermediate\.dense"]))  # 32 -> 64
    with pytest.raises(ValueError, match=rf"intermediate\.dense \(32 -> 64\).*{fragment}.*method\.a/method\.b"):
        attach(model, "tiny-roberta", method)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "matrix", "init": "xavier"}, "unknown init 'xavier'"),
        ({"kind": "dense"}, "kind must be 'matrix' or 'diag'"),
        ({"kind": "diag", "out_dim": 4}, "diagonal needs in_dim == out_dim"),
        ({"kind": "matrix", "in_dim": 0}, "dimensions must be >= 1"),
        ({"kind": "matrix", "rows": (2, 9)}, r"rows \(2, 9\) outside"),
    ],
)
def test_bad_factor_raises(kwargs: dict, message: str):
    spec = {"name": "F", "in_dim": 3, "out_dim": 8} | kwargs
    with pytest.raises(ValueError, match=message):
        Factor(**spec)


def test_tied_factor_errors():
    with pytest.raises(ValueError, match="no AdapterBank"):
        AdapterLinear(nn.Linear(4, 4), lora_factors(tie_a=True)("m", 4, 4), scaling=1.0)
    with pytest.raises(ValueError, match="requested with two shapes"):  # one tie key, A of 4 -> 2 and of 5 -> 2
        inject_adapters(nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 4)), [r"\d"], lora_factors(tie_a=True), 1.0)


def test_freeze_base_pattern_matching_nothing_raises():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    inject_adapters(model, ["0"], lora_factors(), scaling=1.0)
    with pytest.raises(ValueError, match=r"\['head'\] match no module"):
        freeze_base(model, ["1", "head"])


# --- 7. parameter counts ----------------------------------------------------------------------------------------

ROBERTA_D = {  # tiny-roberta's "D" targets (every linear named *.dense): (in, out)
    **{
        f"roberta.encoder.layer.{i}.{m}": dims
        for i in range(2)
        for m, dims in (
            ("attention.output.dense", (32, 32)),
            ("intermediate.dense", (32, 64)),
            ("output.dense", (64, 32)),
        )
    },
    "classifier.dense": (32, 32),
}
ROBERTA_HEAD = 32 * 2 + 2  # classifier.out_proj: weight 2 x 32 and bias 2


def test_count_parameters_lora_on_roberta_by_hand():
    model = tiny_model("tiny-roberta")
    base_total = sum(p.numel() for p in model.parameters())
    names = attach(model, "tiny-roberta", Lora(LoraConfig(r=2)))
    assert set(names) == set(ROBERTA_D)

    adapter = sum(2 * (d_in + d_out) for d_in, d_out in ROBERTA_D.values())
    assert adapter == 1152  # per layer 2*64 + 2*96 + 2*96 = 512, twice, plus classifier.dense 128
    assert count_parameters(model) == {
        "total_params": base_total + adapter,
        "trainable_params": adapter + ROBERTA_HEAD,
        "adapter_params": adapter,
        "adapter_frozen_params": 0,
        "head_params": ROBERTA_HEAD,
    }


def test_count_parameters_lora_mini_on_roberta_by_hand():
    r, a, b = 2, 8, 16
    model = tiny_model("tiny-roberta")
    base_total = sum(p.numel() for p in model.parameters())
    attach(model, "tiny-roberta", LoraMini(LoraMiniConfig(r=r, a=a, b=b)))

    trainable = len(ROBERTA_D) * r * (a + b)  # independent of the layer sizes
    frozen = sum(d_in * a + b * d_out for d_in, d_out in ROBERTA_D.values())
    assert count_parameters(model) == {
        "total_params": base_total + trainable + frozen,
        "trainable_params": trainable + ROBERTA_HEAD,
        "adapter_params": trainable,
        "adapter_frozen_params": frozen,
        "head_params": ROBERTA_HEAD,
    }


# --- 8. initialisation ------------------------------------------------------------------------------------------


def test_lora_starts_as_the_base_model():
    batch = tokens()
    model = tiny_model("tiny-roberta")
    base_out = logits(model, batch)
    attach(model, "tiny-roberta", Lora(LoraConfig(r=4, alpha=16.0)), targets="D+A")
    layers = adapter_layers(model)
    assert len(layers) == 13
    for layer in layers.values():
        assert torch.equal(layer.factors["B"], torch.zeros_like(layer.factors["B"]))
        assert layer.factors["A"].abs().min() > 0
        assert torch.equal(layer.delta_weight(), torch.zeros(layer.out_features, layer.in_features))
    assert torch.equal(logits(model, batch), base_out)


@pytest.mark.parametrize("zero_init", [False, True])
def test_lora_mini_initial_delta(zero_init: bool):
    batch = tokens()
    model = tiny_model("tiny-roberta")
    base_out = logits(model, batch)
    attach(model, "tiny-roberta", LoraMini(LoraMiniConfig(r=2, a=8, b=8, zero_init=zero_init)))
    for layer in adapter_layers(model).values():
        assert torch.count_nonzero(layer.factors["B_train"]) == (0 if zero_init else layer.factors["B_train"].numel())
        for name in ("A_aux", "A_train", "B_aux"):
            assert layer.factors[name].abs().min() > 0, name
        assert (layer.delta_weight().abs().max() > 0) != zero_init
    assert torch.equal(logits(model, batch), base_out) == zero_init


# --- regressions: bugs found while writing these tests ---------------------------------------------------------


def test_freeze_base_keeps_frozen_factors_frozen_inside_trainable_module():
    # a head pattern covering an adapter layer must not unfreeze its frozen factors
    model = nn.Sequential(nn.Linear(8, 8), nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)))
    LoraMini(LoraMiniConfig(r=2, a=4, b=4)).attach(model, ["0", r"1\.0"], ["1"])  # head "1" holds adapter 1.0
    frozen = {n: p.requires_grad for n, p in model.named_parameters() if n.endswith(("A_aux", "B_aux"))}
    assert frozen == dict.fromkeys(
        ["0.factors.A_aux", "0.factors.B_aux", "1.0.factors.A_aux", "1.0.factors.B_aux"], False
    )


def test_second_injection_keeps_first_tied_factors_registered():
    # a second injection reuses the model's AdapterBank instead of replacing it
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    inject_adapters(model, ["0"], lora_factors(tie_a=True), scaling=1.0)
    first = model[0].tensor(model[0].specs[0])
    inject_adapters(model, ["1"], lambda *dims: [Factor("C", "diag", 8, 8, tie="C")], scaling=1.0)
    assert any(p is first for p in model.parameters())


# --- the fast path: chains cut at their narrowest point and multiplied out once per step ------------------------


def test_lora_mini_fast_path_matches_factor_by_factor():
    torch.manual_seed(0)
    base = nn.Linear(48, 40).double()
    factors = LoraMini(LoraMiniConfig(r=4, a=32, b=24)).factors("m", 48, 40)
    layer = AdapterLinear(base, factors, scaling=0.5).double()
    assert layer._split == 2  # cut at r: (A_aux, A_train) | (B_train, B_aux)
    x = torch.randn(3, 5, 48, dtype=torch.float64)

    fast = layer.adapter_output(x)
    slow = x
    for _, t in layer.chain():
        slow = slow @ t.T
    slow = slow * 0.5
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)

    params = [layer.factors["A_train"], layer.factors["B_train"]]
    g_fast = torch.autograd.grad(fast.square().sum(), params)
    g_slow = torch.autograd.grad(slow.square().sum(), params)
    for a, b in zip(g_fast, g_slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


SPLIT_CHAINS = {
    # name: (factors, expected cut); diagonals on either side of the cut, and one that starts the right side
    "diag_right": (
        [Factor("A_aux", "matrix", 48, 32, trainable=False), Factor("A", "matrix", 32, 4),
         Factor("B", "matrix", 4, 24), Factor("v", "diag", 24, 24), Factor("B_aux", "matrix", 24, 40, trainable=False)],
        2,
    ),
    "diag_at_cut": (
        [Factor("w", "diag", 48, 48), Factor("A_aux", "matrix", 48, 32, trainable=False), Factor("A", "matrix", 32, 4),
         Factor("u", "diag", 4, 4), Factor("B", "matrix", 4, 24), Factor("B_aux", "matrix", 24, 40)],
        3,
    ),
}  # fmt: skip


@pytest.mark.parametrize("chain", sorted(SPLIT_CHAINS))
def test_split_chain_with_diagonals_matches_factor_by_factor(chain: str):
    # the right side of the cut is multiplied out transposed (_product_t): same values and gradients
    factors, cut = SPLIT_CHAINS[chain]
    torch.manual_seed(0)
    layer = AdapterLinear(nn.Linear(48, 40), factors, scaling=0.5).double()
    assert layer._split == cut
    with torch.no_grad():  # diagonals away from one, so a transposed or misplaced scale would show
        for t in layer.factors.values():
            t.normal_()
    x = torch.randn(3, 5, 48, dtype=torch.float64)

    fast = layer.adapter_output(x)
    slow = x
    for f, t in layer.chain():
        slow = slow * t if f.kind == "diag" else slow @ t.T
    slow = slow * 0.5
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)

    params = [p for p in layer.factors.values() if p.requires_grad]
    assert len(params) == sum(f.trainable for f in factors)
    g_fast = torch.autograd.grad(fast.square().sum(), params)
    g_slow = torch.autograd.grad(slow.square().sum(), params)
    for a, b in zip(g_fast, g_slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_two_factor_and_diagonal_chains_are_applied_factor_by_factor():
    lora = AdapterLinear(nn.Linear(16, 16), Lora(LoraConfig(r=4)).factors("m", 16, 16), scaling=1.0)
    tied_like = [
        Factor("A", "matrix", 16, 4),
        Factor("u", "diag", 4, 4),
        Factor("B", "matrix", 4, 16),
        Factor("v", "diag", 16, 16),
    ]
    assert lora._split is None
    assert AdapterLinear(nn.Linear(16, 16), tied_like, scaling=1.0)._split is None


def test_adapted_t5_runs_forward_and_backward():
    # T5's feed-forward reads ``wo.weight.dtype``: an adapted layer must expose its base weight
    cfg = compose_cfg("model=tiny-t5", "task=bare", "method=lora", "method.targets=D+A")
    model = build(make_plan(cfg))[0]
    assert isinstance(model.encoder.block[0].layer[1].DenseReluDense.wo, AdapterLinear)
    ids = torch.randint(5, 200, (2, 7))
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("chain", ["lora_mini", "diagonals"])
def test_autocast_bf16_matches_float32(chain):
    # under autocast the factors are applied without casting activations to float32 first (the GPU fast path)
    torch.manual_seed(0)
    if chain == "lora_mini":
        factors = LoraMini(LoraMiniConfig(r=4, a=16, b=16)).factors("m", 32, 24)
    else:
        factors = [Factor("A", "matrix", 32, 8), Factor("u", "diag", 8, 8, init="const:0.5"),
                   Factor("B", "matrix", 8, 24), Factor("v", "diag", 24, 24, init="ones")]  # fmt: skip
    layer = AdapterLinear(nn.Linear(32, 24), factors, scaling=1.0)
    x = torch.randn(5, 32)
    exact = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = layer(x)
    assert fast.dtype == torch.bfloat16
    torch.testing.assert_close(fast.float(), exact, rtol=3e-2, atol=3e-2)
