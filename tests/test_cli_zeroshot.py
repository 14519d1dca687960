"""``--tasks``: zero-shot scores through lm-eval in ``fistaopt eval`` and ``fistaopt prune``."""

from __future__ import annotations

import json

import pytest

from fistaopt.cli import main
from llm_fixtures import char_tokenizer, hide_lm_eval, tiny_model, write_text

import lm_eval  # noqa: E402,F401  (the eval extra is part of dev: a missing install fails here)
TASK = "fistaopt_arith"


@pytest.fixture(scope="module")
def eos_tiny_folder(tmp_path_factory):
    """A tiny Llama whose tokenizer has an EOS token (lm-eval's prefix token)."""
    folder = tmp_path_factory.mktemp("tiny") / "llama"
    tiny_model("llama", scale=3.0).save_pretrained(folder)
    tok = char_tokenizer()
    tok.add_special_tokens({"eos_token": "</s>"})
    tok.save_pretrained(folder)
    return folder


def _eval_json(capsys, folder, ev):
    rc = main(["eval", str(folder), "--seqlen", "16", "--max-tokens", "64", "--eval-text", str(ev), "--tasks", TASK,
               "--json", "--no-progress"])
    assert rc == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_eval_and_prune_record_zero_shot_before_and_after(eos_tiny_folder, tmp_path, capsys):
    ev = write_text(tmp_path / "eval.txt", "A different text for evaluation only. " * 10)
    dense = _eval_json(capsys, eos_tiny_folder, ev)["zero_shot"]["tasks"][TASK]
    assert dense["n_samples"] == 48 and 0.0 <= dense["acc"] <= 1.0

    out = tmp_path / "out"
    argv = ["prune", str(eos_tiny_folder), "--method", "wanda", "--pattern", "2:4", "--nsamples", "4", "--seqlen", "16",
            "--calib", str(write_text(tmp_path / "calib.txt")), "--eval-text", str(ev), "--eval-tokens", "64",
            "--tasks", TASK, "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"{TASK} acc before" in printed and f"{TASK} acc after" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["zero_shot_before"]["tasks"][TASK]["acc"] == dense["acc"]  # the same dense model
    after = report["zero_shot_after"]["tasks"][TASK]
    assert report["zero_shot_after"]["lm_eval_version"] and after["n_samples"] == 48
    # the saved pruned folder scores what prune measured on the model in memory
    assert _eval_json(capsys, out, ev)["zero_shot"]["tasks"][TASK]["acc"] == after["acc"]

    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and f"| {TASK} | acc |" in card and "prune-report.png" in card
    assert f'from_pretrained("{out}")' in card and (out / "prune-report.png").is_file()


def test_unknown_task_is_refused_before_loading(eos_tiny_folder, tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr("fistaopt.cli.evaluate.load_model", refuse)
    ev = write_text(tmp_path / "eval.txt")
    rc = main(["eval", str(eos_tiny_folder), "--eval-text", str(ev), "--tasks", "fistaopt_arit"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "unknown lm-eval task" in err and TASK in err


def test_missing_extra_is_one_line(eos_tiny_folder, tmp_path, capsys, monkeypatch):
    hide_lm_eval(monkeypatch)
    rc = main(["eval", str(eos_tiny_folder), "--eval-text", str(write_text(tmp_path / "e.txt")), "--tasks", TASK])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "pip install 'fistaopt[eval]'" in err
