"""The ``fistaopt prune`` / ``fistaopt eval`` commands on a tiny saved model."""

from __future__ import annotations

import json

import pytest
import torch

from fistaopt.cli import main
from llm_fixtures import char_tokenizer, tiny_model, write_text


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "llama"
    model = tiny_model("llama", scale=3.0)
    model.save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "argv,match",
    [
        (["prune", "--out", "x", "--sparsity", "1.5"], "sparsity must be in"),
        (["prune", "--out", "x", "--method", "obs"], "invalid choice"),
        (["prune"], "--out"),
        (["prune", "--out", "x", "--nsamples", "0"], "positive integer"),
        (["prune", "--out", "x", "--pattern", "2:4", "--sparsity", "0.5"], "cannot be combined"),
        (["prune", "--out", "x", "--pattern", "3:2"], "--pattern"),
        (["prune", "/no/such/model", "--out", "x", "--eval-tokens", "0"], "cannot load model|not found"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_argument_errors_exit_2_with_one_line(argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        rc = main(argv)
        raise SystemExit(rc)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    import re

    assert re.search(match, err), err


def test_prune_command_end_to_end(tiny_folder, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    calib = write_text(tmp_path / "calib.txt")
    ev = write_text(tmp_path / "eval.txt", "A different text for evaluation only. " * 10)
    out = tmp_path / "out"
    rc = main([
        "prune", str(tiny_folder), "--method", "wanda", "--pattern", "2:4", "--nsamples", "4", "--seqlen", "16",
        "--calib", str(calib), "--eval-text", str(ev), "--eval-tokens", "128", "--out", str(out), "--no-progress",
    ])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "perplexity before" in printed and "perplexity after" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["pattern"] == "2:4" and report["extra"]["seed"] == 0
    assert report["extra"]["perplexity_before"]["ppl"] > 0 and report["extra"]["perplexity_after"]["ppl"] > 0
    assert "torch" in report["extra"]["versions"] and len(report["records"]) == 14
    model = AutoModelForCausalLM.from_pretrained(out)
    W = model.model.layers[1].mlp.down_proj.weight
    assert torch.all((W != 0).view(W.shape[0], -1, 4).sum(-1) <= 2)

    rc = main(["eval", str(out), "--seqlen", "16", "--max-tokens", "128", "--eval-text", str(ev), "--json", "--no-progress"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["ppl"] == pytest.approx(report["extra"]["perplexity_after"]["ppl"], rel=1e-4)


def test_prune_command_rejects_incompatible_nm(tiny_folder, tmp_path, capsys):
    calib = write_text(tmp_path / "calib.txt")
    rc = main(["prune", str(tiny_folder), "--pattern", "2:5", "--nsamples", "2", "--seqlen", "16", "--calib", str(calib),
               "--eval-tokens", "0", "--out", str(tmp_path / "o"), "--method", "magnitude", "--no-progress"])
    assert rc == 2
    assert "divisible" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
