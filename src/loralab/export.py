"""Export a finished run's adapter for use outside loralab.

    python -m loralab.export <run dir> --format peft --out <folder>     # a peft adapter folder
    python -m loralab.export <run dir> --format merged --out <folder>   # a plain transformers model

The run folder must hold ``results.json`` (its resolved config) and ``adapter.safetensors``; the backbone is built
as the run built it (same weights source and seed) and the adapter loaded into it.

``peft``: ``adapter_config.json`` + ``adapter_model.safetensors`` for ``PeftModel.from_pretrained(<the same base
model>, <folder>)``, with the trained head as ``modules_to_save``. VeRA becomes peft's VeRA (the shared A and B are
saved: ``save_projection``), AdaLoRA peft's AdaLoRA (all ``init_r`` triplets, pruned ones with lambda = 0; peft
divides by ``r + 1e-5`` where loralab divides by ``r``: a relative difference of ~1e-6), every other method peft's
LoRA: the chain multiplied out at its narrowest width, exactly (LoRA-Mini's ``A_train A_aux`` and ``B_aux B_train``,
Tied-LoRA's ``diag(v) B diag(u)`` and ``A``, RoLoRA's per-module ranks as ``rank_pattern``). Needs peft
(``pip install -e '.[bench]'``).

``merged``: the adapters merged into the base weights, saved with ``save_pretrained`` with the tokenizer, for
``AutoModelFor<task kind>.from_pretrained(<folder>)``; any method. A merged head whose weight was tied to the input
embeddings (T5's ``lm_head``) is saved untied (``tie_word_embeddings: false`` where the config class keeps it; T5's
does not, and transformers 5 loads a head that differs from the embeddings untied), the embeddings unchanged.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from loralab.adapters import adapter_layers, merge_adapters
from loralab.adapters.model import BANK_NAME, _adapter_param_ids, shared_parameter_ids
from loralab.adapters.peft_io import as_lora
from loralab.config import LoggerConfig, TaskConfig, TrainerConfig
from loralab.evaluate import adapter_path, build_with_adapter
from loralab.methods import METHODS
from loralab.models import ModelConfig, load_tokenizer, resolve_weights
from loralab.records import RESULTS_FILE
from loralab.run import Plan, make_plan


def run_config(run_dir: str | Path) -> DictConfig:
    """The resolved config of a finished run (``results.json``), typed by the config schemas again."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: export needs a finished run's folder")
    config = json.loads(path.read_text())["config"]
    cfg = OmegaConf.create(config)
    schemas = {"method": METHODS[config["method"]["name"]].config_class, "model": ModelConfig, "task": TaskConfig,
               "trainer": TrainerConfig, "logger": LoggerConfig}  # fmt: skip
    for key, schema in schemas.items():
        cfg[key] = OmegaConf.merge(OmegaConf.structured(schema), config[key])
    return cfg


def load_run(run_dir: str | Path) -> tuple[Plan, nn.Module, Any]:
    """The run's model with its saved adapter loaded (eval mode), its plan and its tokenizer (None for images)."""
    plan = make_plan(run_config(run_dir))
    path = adapter_path(run_dir)
    tokenizer = None if plan.runner.model_kind == "image_classification" else load_tokenizer(plan.model)
    model, *_ = build_with_adapter(plan, path, tokenizer)
    return plan, model.eval(), tokenizer


def strip_adapters(model: nn.Module) -> None:
    """Put every adapter layer's base layer back in its place and drop the tied-factor bank."""
    for name in adapter_layers(model):
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, getattr(owner, child).base)
    if hasattr(model, BANK_NAME):
        delattr(model, BANK_NAME)


def trained_modules(model: nn.Module) -> list[str]:
    """Modules trained in full besides the adapters (the head, ``extra_trainable``): peft's ``modules_to_save``."""
    adapter_ids = _adapter_param_ids(model)
    owners = {n.rpartition(".")[0] for n, p in model.named_parameters() if p.requires_grad and id(p) not in adapter_ids}
    return sorted(n for n in owners if not any(n.startswith(o + ".") for o in owners))


def _keeps_untied(config: Any) -> bool:
    """Whether the config class keeps ``tie_word_embeddings: false``. transformers 5's T5Config forces it back to
    true (reading false as "do not scale the decoder outputs"); there, a saved head that differs from the embeddings
    is loaded untied anyway ("both are present in the checkpoint with different values")."""
    return type(config).from_dict({**config.to_dict(), "tie_word_embeddings": False}).tie_word_embeddings is False


def export_merged(model: nn.Module, tokenizer: Any, out: str | Path) -> dict[str, Any]:
    """Merge the adapters and save a plain transformers model (+ tokenizer) into ``out``."""
    shared = shared_parameter_ids(model)
    untied = [n for n, layer in adapter_layers(model).items() if id(layer.base.weight) in shared]
    merge_adapters(model)
    strip_adapters(model)
    if untied and _keeps_untied(model.config):
        model.config.tie_word_embeddings = False
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return {"format": "merged", "class": type(model).__name__, "untied": untied}


def _peft_config(peft: Any, plan: Plan, layers: dict[str, Any], heads: list[str], pairs: dict | None) -> Any:
    """The peft config of the method: VeRA, AdaLoRA, or LoRA with the pairs of :func:`as_lora`."""
    cfg, name = plan.method.cfg, plan.method.name
    common = {"target_modules": list(layers), "modules_to_save": heads or None,
              "fan_in_fan_out": any(layer.fan_in_fan_out for layer in layers.values())}  # fmt: skip
    if name == "vera":
        return peft.VeraConfig(r=cfg.r, projection_prng_key=cfg.seed, save_projection=True, vera_dropout=cfg.dropout,
                               d_initial=cfg.d_init, **common)  # fmt: skip
    if name == "adalora":
        total = max(1, cfg.t_init + cfg.t_final + 1)  # a training setting of peft's AdaLoRA, unused for inference
        return peft.AdaLoraConfig(init_r=cfg.init_r, target_r=cfg.target_r, lora_alpha=cfg.alpha, tinit=cfg.t_init,
                                  tfinal=cfg.t_final, deltaT=cfg.delta_t, beta1=cfg.beta1, beta2=cfg.beta2,
                                  orth_reg_weight=cfg.orth_weight, lora_dropout=cfg.dropout, total_step=total,
                                  **common)  # fmt: skip
    r = Counter(a.shape[0] for a, _, _ in pairs.values()).most_common(1)[0][0]
    alpha = Counter(al for *_, al in pairs.values()).most_common(1)[0][0]
    return peft.LoraConfig(
        r=r,
        lora_alpha=alpha,
        rank_pattern={re.escape(n): a.shape[0] for n, (a, _, _) in pairs.items() if a.shape[0] != r},
        alpha_pattern={re.escape(n): al for n, (*_, al) in pairs.items() if al != alpha},
        lora_dropout=float(getattr(cfg, "dropout", 0.0)),
        **common,
    )


@torch.no_grad()
def export_peft(plan: Plan, model: nn.Module, out: str | Path) -> dict[str, Any]:
    """Write the adapter as a peft adapter folder into ``out`` (the model is consumed: its adapters are removed)."""
    try:
        import peft
    except ImportError as e:
        raise ImportError("--format peft needs peft: pip install -e '.[bench]'") from e
    if not adapter_layers(model):
        raise ValueError(f"method {plan.method.name} has no adapter to export to peft; use --format merged")
    layers, heads = adapter_layers(model), trained_modules(model)
    native = plan.method.name in ("vera", "adalora")  # peft has these; every other chain becomes a LoRA pair
    pairs = None if native else {n: as_lora(layer) for n, layer in layers.items()}
    config = _peft_config(peft, plan, layers, heads, pairs)
    bank = getattr(model, BANK_NAME, None)
    strip_adapters(model)
    wrapped = peft.get_peft_model(model, config)
    inner = wrapped.base_model
    for name, layer in layers.items():
        target = inner.model.get_submodule(name)
        if pairs is not None:  # LoRA
            a, b, _ = pairs[name]
            target.lora_A["default"].weight.copy_(a)
            target.lora_B["default"].weight.copy_(b)
        elif plan.method.name == "vera":
            target.vera_lambda_d["default"].copy_(layer.factors["d"])
            target.vera_lambda_b["default"].copy_(layer.factors["b"])
        else:  # AdaLoRA: Q, lambda, P
            target.lora_A["default"].copy_(layer.factors["Q"])
            target.lora_E["default"].copy_(layer.factors["E"][:, None])
            target.lora_B["default"].copy_(layer.factors["P"])
    if plan.method.name == "vera":
        inner.vera_A["default"].copy_(bank.tensors["vera_A"])
        inner.vera_B["default"].copy_(bank.tensors["vera_B"])
    source = resolve_weights(plan.model)  # the base to load it on: a hub id, or the folder the run's weights came from
    wrapped.peft_config["default"].base_model_name_or_path = None if source.kind == "random" else source.location
    wrapped.save_pretrained(str(out))
    return {"format": "peft", "peft_type": config.peft_type.value, "modules": len(layers), "modules_to_save": heads}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m loralab.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a finished run's folder (results.json + adapter.safetensors)")
    parser.add_argument("--format", choices=("peft", "merged"), required=True)
    parser.add_argument("--out", required=True, help="the folder to write")
    args = parser.parse_args(argv)
    plan, model, tokenizer = load_run(args.run_dir)
    if args.format == "peft":
        info = export_peft(plan, model, args.out)
    else:
        info = export_merged(model, tokenizer, args.out)
    print(json.dumps({"run": str(args.run_dir), "out": str(args.out), **info}))
    return info


if __name__ == "__main__":
    main()
