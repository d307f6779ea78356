"""Parameter counts on the meta device (no weights) against the numbers the papers print."""

from __future__ import annotations

import pytest
from conftest import compose_cfg

from loralab.run import dry_run, make_plan


def counts(*overrides: str) -> dict:
    return dry_run(make_plan(compose_cfg(*overrides, "dry_run=true")))


# LoRA-Mini appendix, (r, a, b) -> trainable parameters (D, D+A). Tables 5-7 and 9-11 (CoLA, RTE, MRPC on
# RoBERTa-base and BERT-base: two labels) print the same counts; Tables 8 and 12 are STS-B (one output).
CLASSIFICATION = {
    (8, 16, 16): (11010, 20226), (8, 16, 32): (15746, 29570), (8, 16, 64): (25218, 48258),
    (8, 32, 16): (15746, 29570), (8, 32, 32): (20482, 38914), (8, 32, 64): (29954, 57602),
    (8, 64, 16): (25218, 48258), (8, 64, 32): (29954, 57602), (8, 64, 64): (39426, 76290),
    (16, 32, 32): (39426, 76290), (16, 32, 64): (58370, 113666), (16, 64, 32): (58370, 113666),
    (16, 64, 64): (77314, 151042), (32, 64, 64): (153090, 300546),
}  # fmt: skip
# Table 8 (RoBERTa STS-B). Table 12 (BERT STS-B) prints the same except one cell, r=16 a=64 b=32 D+A, where it
# prints 113666: the CoLA value (two labels), a copying slip; its r=16 a=32 b=64 twin prints 112897 like Table 8.
STSB = {
    (8, 16, 16): (10241, 19457), (8, 16, 32): (14977, 28801), (8, 16, 64): (24449, 47489),
    (8, 32, 16): (14977, 28801), (8, 32, 32): (19713, 38145), (8, 32, 64): (29185, 56833),
    (8, 64, 16): (24449, 47489), (8, 64, 32): (29185, 56833), (8, 64, 64): (38657, 75521),
    (16, 32, 32): (38657, 75521), (16, 32, 64): (57601, 112897), (16, 64, 32): (57601, 112897),
    (16, 64, 64): (76545, 150273), (32, 64, 64): (152321, 299777),
}  # fmt: skip
# Tables 13-14: T5 on WMT16 en-ro, LoRA-Mini on attention and dense layers (counted on the bare seq2seq model).
T5 = {
    (8, 16, 16): (20224, 40192), (8, 16, 32): (30336, 60288), (8, 16, 64): (50560, 100480),
    (8, 32, 16): (30336, 60288), (8, 32, 32): (40448, 80384), (8, 32, 64): (60672, 120576),
    (8, 64, 16): (50560, 100480), (8, 64, 32): (60672, 120576), (8, 64, 64): (80896, 160768),
    (16, 32, 32): (80896, 160768), (16, 32, 64): (121344, 241152), (16, 64, 32): (121344, 241152),
    (16, 64, 64): (161792, 321536), (32, 64, 64): (323584, 643072),
}  # fmt: skip


def test_grid_files_are_the_papers_grid():
    from loralab.config import PROJECT_ROOT

    files = {p.stem for p in (PROJECT_ROOT / "conf" / "rab").glob("*.yaml")}
    assert files == {f"r{r}_a{a}_b{b}" for r, a, b in CLASSIFICATION}


@pytest.mark.parametrize("model", ["roberta-base", "bert-base-uncased"])
@pytest.mark.parametrize(
    "task,table", [("glue/cola", CLASSIFICATION), ("glue/rte", CLASSIFICATION), ("glue/stsb", STSB)]
)
def test_lora_mini_tables_5_to_12(model, task, table):
    for (r, a, b), (d, da) in table.items():
        for targets, expected in (("D", d), ("D+A", da)):
            got = counts(
                f"model={model}", f"task={task}", "method=lora_mini", f"rab=r{r}_a{a}_b{b}", f"method.targets={targets}"
            )
            assert got["trainable_params"] == expected, (model, task, r, a, b, targets)
            assert got["adapter_params"] == r * (a + b) * got["adapted_modules"]


@pytest.mark.parametrize("model,column", [("t5-small", 0), ("t5-base", 1)])
def test_lora_mini_tables_13_14_t5(model, column):
    for (r, a, b), expected in T5.items():
        got = counts(f"model={model}", "task=bare", "method=lora_mini", f"rab=r{r}_a{a}_b{b}", "method.targets=D+A")
        assert got["trainable_params"] == expected[column], (model, r, a, b)


@pytest.mark.parametrize("model", ["roberta-base", "bert-base-uncased"])
def test_lora_rows_of_tables_1_2(model):
    # LoRA on the D modules, r=8: 898,562 (printed as 0.90M); r=16 1.80M; r=32 3.59M (printed 3.50M).
    assert counts(f"model={model}", "task=glue/cola", "method=lora", "method.r=8")["trainable_params"] == 898_562
    assert (
        round(counts(f"model={model}", "task=glue/cola", "method=lora", "method.r=16")["trainable_params"], -4)
        == 1_800_000
    )


def test_lora_rows_of_tables_3_4_t5():
    # LoRA on the same T5 modules as LoRA-Mini. The paper prints two digits, sometimes truncated (0.149M ->
    # "0.14M"), sometimes rounded (1.195M -> "1.2M"): ours must lie within one unit of the last printed digit.
    small = {1: 0.14, 2: 0.29, 4: 0.59, 8: 1.2, 16: 2.3}
    for r, printed in small.items():
        got = counts("model=t5-small", "task=bare", "method=lora", f"method.r={r}", "method.targets=D+A")[
            "trainable_params"
        ]
        assert abs(got / 1e6 - printed) < (0.01 if printed < 1 else 0.1), (r, got)
    got = counts("model=t5-base", "task=bare", "method=lora", "method.r=1", "method.targets=D+A")["trainable_params"]
    assert got == 383_104


def test_full_fine_tuning_rows():
    # FFT: 125M (RoBERTa-base), 110M (BERT-base: 109.5M, the usual rounding), 60M (T5-small), 223M (T5-base).
    for model, task, millions in (
        ("roberta-base", "glue/cola", 125),
        ("bert-base-uncased", "glue/cola", 110),
        ("t5-small", "bare", 60),
        ("t5-base", "bare", 223),
    ):
        got = counts(f"model={model}", f"task={task}", "method=full_ft")
        assert got["trainable_params"] == got["total_params"]
        assert abs(got["trainable_params"] / 1e6 - millions) < 1, (model, got)
