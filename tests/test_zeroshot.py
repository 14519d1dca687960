"""Zero-shot evaluation through lm-eval on the project's local task (no hub).

The scores of :func:`zero_shot` are checked twice: against lm-eval run directly on the
same model, and against an independent computation of the same rule (arg-max of the
summed log-likelihood of ``" " + choice`` after the prompt) from the model's logits.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from fistaopt.llm.local_task import LOCAL_TASK, N_CHOICES, N_ITEMS, local_task_items, write_local_task
from fistaopt.llm.zeroshot import (
    EvalExtraMissing, ZeroShotError, check_tasks, lm_eval_version, parse_tasks, task_scores, zero_shot,
)
from llm_fixtures import char_tokenizer, hide_lm_eval, tiny_model

needs_lm_eval = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("lm_eval") is None, reason="lm-eval not installed (extra 'eval')"
)


def eos_char_tokenizer():
    """The tests' character tokenizer plus an EOS token (lm-eval's prefix token)."""
    tok = char_tokenizer()
    tok.add_special_tokens({"eos_token": "</s>"})
    return tok


@pytest.fixture(scope="module")
def model_and_tokenizer():
    torch.manual_seed(0)
    return tiny_model("llama", seed=3, scale=4.0), eos_char_tokenizer()


# ------------------------------------------------------------------ the local task
def test_local_task_items_are_deterministic_and_well_formed():
    items = local_task_items()
    assert items == local_task_items()
    assert len(items) == N_ITEMS
    for item in items:
        a, b = (int(w) for w in item["question"].removeprefix("What is ").removesuffix("?").split(" plus "))
        assert len(item["choices"]) == N_CHOICES == len(set(item["choices"]))
        assert item["choices"][item["label"]] == str(a + b)
        assert sum(c == str(a + b) for c in item["choices"]) == 1
    labels = {item["label"] for item in items}
    assert labels == set(range(N_CHOICES))  # the answer is not always in the same place


def test_write_local_task(tmp_path):
    folder = write_local_task(tmp_path / "tasks")
    lines = (folder / f"{LOCAL_TASK}.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == local_task_items()
    yaml_text = (folder / f"{LOCAL_TASK}.yaml").read_text()
    assert f"task: {LOCAL_TASK}" in yaml_text
    assert json.dumps(str(folder / f"{LOCAL_TASK}.jsonl")) in yaml_text  # absolute data path


# ------------------------------------------------------------------ errors
def test_missing_extra_is_one_clear_line(monkeypatch):
    hide_lm_eval(monkeypatch)
    with pytest.raises(EvalExtraMissing) as err:
        zero_shot(torch.nn.Linear(2, 2), None, [LOCAL_TASK])
    message = str(err.value)
    assert "pip install 'fistaopt[eval]'" in message and "\n" not in message
    assert isinstance(err.value, ImportError) and isinstance(err.value, ZeroShotError)


@needs_lm_eval
@pytest.mark.parametrize("kwargs, fragment", [
    (dict(tasks="fistaopt_arith"), "non-empty list"),
    (dict(tasks=[]), "non-empty list"),
    (dict(tasks=[LOCAL_TASK], batch_size=0), "batch_size"),
    (dict(tasks=[LOCAL_TASK], limit=0), "limit"),
    (dict(tasks=[LOCAL_TASK], limit=1.5), "limit"),
    (dict(tasks=[LOCAL_TASK], include_path="/nonexistent/tasks"), "include_path"),
])
def test_bad_settings_are_rejected_before_any_work(model_and_tokenizer, kwargs, fragment):
    model, tok = model_and_tokenizer
    tasks = kwargs.pop("tasks")
    with pytest.raises(ZeroShotError, match=fragment):
        zero_shot(model, tok, tasks, **kwargs)


@needs_lm_eval
def test_tokenizer_without_eos_or_bos(model_and_tokenizer):
    model, _ = model_and_tokenizer
    with pytest.raises(ZeroShotError, match="neither an EOS nor a BOS"):
        zero_shot(model, char_tokenizer(), [LOCAL_TASK])


@needs_lm_eval
def test_unknown_task_names_one_line_with_suggestion(model_and_tokenizer):
    model, tok = model_and_tokenizer
    with pytest.raises(ZeroShotError) as err:
        zero_shot(model, tok, ["fistaopt_arit"])
    message = str(err.value)
    assert "unknown lm-eval task" in message and "fistaopt_arith" in message and "\n" not in message


@needs_lm_eval
def test_check_tasks_before_any_work(tmp_path):
    check_tasks([LOCAL_TASK])  # known without reading lm-eval's task index
    check_tasks([LOCAL_TASK], include_path=write_local_task(tmp_path))
    with pytest.raises(ZeroShotError, match="unknown lm-eval task"):
        check_tasks(["no_such_task_anywhere"])
    with pytest.raises(ZeroShotError, match="not a folder"):
        check_tasks([LOCAL_TASK], include_path=tmp_path / "missing")


def test_parse_tasks():
    assert parse_tasks("arc_easy, hellaswag,arc_easy") == ["arc_easy", "hellaswag"]
    with pytest.raises(ZeroShotError):
        parse_tasks("arc_easy,,hellaswag")


def test_task_scores_names_filters_and_missing_stderr():
    results = {
        "results": {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": "N/A",
                          "exact_match,flexible": 0.25, "exact_match_stderr,flexible": 0.1}},
        "n-samples": {"t": {"original": 10, "effective": 4}},
    }
    assert task_scores(results) == {"t": {"acc": 0.5, "acc_stderr": None, "exact_match_flexible": 0.25,
                                          "exact_match_flexible_stderr": 0.1, "n_samples": 4}}


# ------------------------------------------------------------------ scores
def choice_log_likelihoods(model, tok, item) -> list[float]:
    """Σ log p(" " + choice | "Question: ...\\nAnswer:") per choice, from the model's logits."""
    context = tok(f"Question: {item['question']}\nAnswer:", add_special_tokens=False).input_ids
    out = []
    for choice in item["choices"]:
        cont = tok(" " + choice, add_special_tokens=False).input_ids
        ids = torch.tensor([context + cont])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
        out.append(sum(float(logp[len(context) + k - 1, t]) for k, t in enumerate(cont)))
    return out


@needs_lm_eval
def test_scores_flow_into_a_json_friendly_dict(model_and_tokenizer):
    model, tok = model_and_tokenizer
    res = zero_shot(model, tok, [LOCAL_TASK], batch_size=4)
    json.dumps(res)  # JSON-friendly
    row = res["tasks"][LOCAL_TASK]
    assert row["n_samples"] == N_ITEMS
    p = row["acc"]
    assert 0.0 <= p <= 1.0 and res["mean_acc"] == p
    assert row["acc_stderr"] == pytest.approx(math.sqrt(p * (1 - p) / (N_ITEMS - 1)), rel=1e-9)
    assert res["settings"]["tasks"] == [LOCAL_TASK] and res["settings"]["num_fewshot"] == 0
    assert res["lm_eval_version"] == lm_eval_version()

    # the same rule computed from the logits, independently of lm-eval
    items = local_task_items()
    lls = [choice_log_likelihoods(model, tok, item) for item in items]
    acc = sum(max(range(N_CHOICES), key=ll.__getitem__) == item["label"] for ll, item in zip(lls, items)) / N_ITEMS
    acc_norm = sum(
        max(range(N_CHOICES), key=lambda k: ll[k] / len(item["choices"][k])) == item["label"]
        for ll, item in zip(lls, items)
    ) / N_ITEMS
    assert row["acc"] == pytest.approx(acc, abs=1e-12)
    assert row["acc_norm"] == pytest.approx(acc_norm, abs=1e-12)


@needs_lm_eval
def test_dense_model_scores_what_lm_eval_scores_directly(model_and_tokenizer, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tok = model_and_tokenizer
    ours = zero_shot(model, tok, [LOCAL_TASK], limit=24)["tasks"][LOCAL_TASK]
    manager = TaskManager(include_path=str(write_local_task(tmp_path)), include_defaults=False)
    direct = simple_evaluate(model=HFLM(pretrained=model, tokenizer=tok, batch_size=2), tasks=[LOCAL_TASK],
                             num_fewshot=0, limit=24, task_manager=manager)["results"][LOCAL_TASK]
    assert ours["n_samples"] == 24
    for metric in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr"):
        assert ours[metric] == pytest.approx(direct[f"{metric},none"], abs=1e-12), metric


@needs_lm_eval
def test_the_weights_in_memory_are_evaluated(model_and_tokenizer):
    """With lm_head zeroed in memory every token has probability 1/V, so the prediction
    is the shortest choice (the first one among equals): no reload could score that.
    The model goes back to its device and its train/eval mode."""
    model, tok = model_and_tokenizer
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        pruned.lm_head.weight.zero_()
    pruned.train()
    row = zero_shot(pruned, tok, [LOCAL_TASK], device="cpu")["tasks"][LOCAL_TASK]
    assert pruned.training  # the mode is restored (HFLM evaluates in eval mode)
    items = local_task_items()
    shortest = [min(range(N_CHOICES), key=lambda k: (len(item["choices"][k]), k)) for item in items]
    expected = sum(s == item["label"] for s, item in zip(shortest, items)) / N_ITEMS
    assert row["acc"] == pytest.approx(expected, abs=1e-12)
    assert next(pruned.parameters()).device.type == "cpu"
