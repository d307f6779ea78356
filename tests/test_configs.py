"""Every config option composes, is validated by its schema, and builds (on the meta device)."""

from __future__ import annotations

import pytest
from conftest import CONF_DIR, compose_cfg
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from loralab.config import PROJECT_ROOT
from loralab.methods import METHODS
from loralab.run import dry_run, make_plan

CONF = PROJECT_ROOT / "conf"


def options(group: str) -> list[str]:
    return sorted(str(p.relative_to(CONF / group).with_suffix("")) for p in (CONF / group).rglob("*.yaml"))


MODELS, TASKS, METHOD_FILES = options("model"), options("task"), options("method")


def test_every_registered_method_has_a_config_and_back():
    assert set(METHOD_FILES) == set(METHODS)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("method", METHOD_FILES)
def test_every_model_and_method_builds_on_meta(model, method):
    task = "bare" if "t5" in model else "vision/cifar100" if "vit" in model else "glue/rte"
    targets = ["method.targets=D+A"] if method in ("lora", "lora_mini", "vera") else []
    small = ["method.a=16", "method.b=16"] if model.startswith("tiny") and method == "lora_mini" else []
    info = dry_run(make_plan(compose_cfg(f"model={model}", f"task={task}", f"method={method}", *targets, *small)))
    assert info["trainable_params"] > 0
    assert (info["adapted_modules"] > 0) == (method != "full_ft")


# a tiny model of the kind each task family needs
TASK_MODELS = {"glue": "tiny-bert", "squad": "tiny-bert", "vision": "tiny-vit", "wmt16": "tiny-t5", "bare": "tiny-t5"}


@pytest.mark.parametrize("task", TASKS)
def test_every_task_composes_and_builds(task):
    cfg = compose_cfg(f"task={task}")
    assert cfg.task.name == task
    if task.startswith("glue/"):
        assert cfg.task.subset == task.split("/")[1]
        assert cfg.task.data_dir.endswith("datasets/glue")
    model = TASK_MODELS.get(task.split("/")[0], "tiny-llama")
    model = "tiny-gpt2" if task == "squad/gen" else model
    info = dry_run(make_plan(compose_cfg(f"task={task}", f"model={model}", "method=lora")))
    assert info["trainable_params"] > 0 and info["task"] == task


@pytest.mark.parametrize("point", options("rab"))
def test_grid_points_set_r_a_b(point):
    cfg = compose_cfg("method=lora_mini", f"rab={point}")
    assert point == f"r{cfg.method.r}_a{cfg.method.a}_b{cfg.method.b}"


def test_sweep_and_experiment_compose():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["sweep=lora_mini_grid"], return_hydra_config=True)
    assert cfg.method.name == "lora_mini"
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert dict(cfg.hydra.sweeper.params) == {"rab": "glob(*)", "method.targets": "D,D+A"}
    exp = compose_cfg("experiment=rte_minilm")
    assert (exp.model.name, exp.task.name, exp.method.name, exp.method.targets) == (
        "minilm-l6",
        "glue/rte",
        "lora_mini",
        "D+A",
    )
    # experiment values win over the group defaults (_self_ first in train.yaml)
    assert exp.trainer.lr == 1e-3


def test_env_var_sets_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("LORALAB_GLUE_DIR", str(tmp_path))
    assert compose_cfg("task=glue/rte").task.data_dir == str(tmp_path)


@pytest.mark.parametrize(
    "override,error",
    [
        ("method.rr=3", "Key 'rr' not in 'LoraMiniConfig'"),
        ("method.r=abc", "Value 'abc' of type 'str' could not be converted to Integer"),
        ("trainer.lr=fast", "could not be converted to Float"),
        ("model.wieghts=random", "Key 'wieghts' not in 'ModelConfig'"),
        ("method=nope", "Could not find 'method/nope'"),
        ("method=tied_lora method.varaint=tl1", "Key 'varaint' not in 'TiedLoraConfig'"),
        ("task=glue/*", "Could not find 'task/glue/*'"),
    ],
)
def test_bad_overrides_fail_at_composition(override, error):
    with pytest.raises((ConfigCompositionException, ConfigKeyError, ValidationError)) as e:
        compose_cfg(*override.split())
    chain = str(e.value) + str(e.value.__cause__)
    assert error in chain


def test_schemas_type_check_group_files():
    cfg = compose_cfg("method=lora")
    with pytest.raises(ValidationError):
        cfg.method.r = "eight"
    assert OmegaConf.get_type(cfg.method).__name__ == "LoraConfig"


EXPERIMENTS = options("experiment")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_builds_on_meta(experiment):
    task = ["task=bare"] if experiment.startswith("tied_lora") else []
    info = dry_run(make_plan(compose_cfg(f"experiment={experiment}", *task)))
    assert info["trainable_params"] > 0


@pytest.mark.parametrize("setting", options("sparsify"))
@pytest.mark.parametrize("method", ["lora", "adalora", "rolora"])
def test_rolora_table_rows_compose(setting, method):
    # each RoLoRA table row: the experiment (shared hyper-parameters) + the method (+ its sparsification settings)
    extra = [f"sparsify={setting}"] if method != "lora" else []
    ranks = ["method.init_r=12", "method.target_r=8"] if method == "adalora" else []
    experiment = setting + "v1" if setting.endswith("squad") else setting  # SQuAD v1 and v2 share Table 11
    cfg = compose_cfg(f"experiment={experiment}", f"method={method}", *extra, *ranks)
    info = dry_run(make_plan(cfg))
    assert info["adapted_modules"] == (24 if "roberta" in setting else 36)
    if method != "lora":
        assert cfg.method.t_init > 0 and cfg.method.orth_weight in (0.01, 0.1, 0.3, 0.5)
