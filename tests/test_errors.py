"""Bad input fails early with a message naming what was wrong and what to do; no result file is written."""

from __future__ import annotations

import pytest
from conftest import compose_cfg

from loralab.run import run

TINY = ["model=tiny-bert", "method=lora", "logger.mode=disabled", "trainer.progress=false"]


def fails(tmp_path, *overrides, error=Exception, match: str):
    cfg = compose_cfg(*TINY, *overrides)
    with pytest.raises(error, match=match):
        run(cfg, tmp_path / "out")
    assert not (tmp_path / "out" / "results.json").exists()


def test_missing_data_folder(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    fails(tmp_path, "task=glue/rte", f"task.data_dir={missing}", "task.source=local", error=FileNotFoundError,
          match=f"{missing}.*LORALAB_GLUE_DIR")  # fmt: skip
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # auto source, folder absent, hub unreachable
    fails(tmp_path, "task=glue/rte", f"task.data_dir={missing}", error=FileNotFoundError, match="HF_HUB_OFFLINE")


def test_target_pattern_matching_nothing(tmp_path, tiny_glue):
    fails(tmp_path, "task=glue/rte", f"task.data_dir={tiny_glue}", "method.target_modules=[.*nope]",
          match=r"\['\.\*nope'\] match no linear module")  # fmt: skip


def test_unknown_target_preset(tmp_path, tiny_glue):
    fails(tmp_path, "task=glue/rte", f"task.data_dir={tiny_glue}", "method.targets=D+X",
          match=r"unknown target preset\(s\) \['X'\].*presets: \['A', 'D'\]")  # fmt: skip


def test_impossible_adapter_shape(tmp_path, tiny_glue):
    # tiny-bert's hidden size is 32, LoRA-Mini's default a = 64
    fails(tmp_path, "task=glue/rte", f"task.data_dir={tiny_glue}", "method=lora_mini", match=r"a=64 must be <= 32")


def test_bad_labels_name_file_and_line(tmp_path, tiny_glue):
    path = tiny_glue / "RTE" / "dev.tsv"
    lines = path.read_text().splitlines()
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\tmaybe"
    path.write_text("\n".join(lines) + "\n")
    fails(tmp_path, "task=glue/rte", f"task.data_dir={tiny_glue}", match=rf"{path}:4")


def test_other_bad_settings(tmp_path, tiny_glue):
    data = f"task.data_dir={tiny_glue}"
    fails(tmp_path, "task=bare", match="only serves dry_run")
    fails(tmp_path, "task=glue/rte", data, "method.targets=''", match="needs target modules")
    fails(tmp_path, "task=glue/rte", data, "task.main_metric=f1", match="main_metric 'f1'")
    fails(tmp_path, "task=glue/rte", data, "trainer.precision=fp16", match="auto, bf16 or fp32")
    fails(tmp_path, "task=glue/rte", data, "task.subset=qnlii", match="unknown GLUE task 'qnlii'")
    fails(tmp_path, "task=glue/rte", data, "model.family=bart", match="unknown family 'bart'")
