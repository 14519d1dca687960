"""The ``fistaopt prune`` / ``fistaopt eval`` commands on a tiny saved model."""

from __future__ import annotations

import json
import os
import re
import stat

import pytest
import torch

from fistaopt.cli import build_parser, main
from llm_fixtures import char_tokenizer, tiny_model, write_text


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "llama"
    model = tiny_model("llama", scale=3.0)
    model.save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any attempt to load a model fails the test: the check must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr("fistaopt.cli.prune.load_model", refuse)


def _prune_args(folder, tmp_path, *extra):
    calib = write_text(tmp_path / "calib.txt")
    return ["prune", str(folder), "--nsamples", "2", "--seqlen", "16", "--calib", str(calib), "--eval-tokens", "0",
            "--method", "magnitude", "--no-progress", *extra]


def _one_line_error(capsys, rc, pattern):
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(pattern, err), err


@pytest.mark.parametrize(
    "argv,match",
    [
        (["prune", "--out", "x", "--sparsity", "1.5"], "sparsity must be in"),
        (["prune", "--out", "x", "--method", "obs"], "invalid choice"),
        (["prune", "--out", "x", "--method", "cvxpy"], "invalid choice: 'cvxpy'"),
        (["prune"], "--out"),
        (["prune", "--out", "x", "--nsamples", "0"], "positive integer"),
        (["prune", "--out", "x", "--pattern", "2:4", "--sparsity", "0.6"], "implies sparsity 0.5"),
        (["prune", "--out", "x", "--pattern", "3:2"], "3:2"),
        (["prune", "--out", "x", "--warm-start", "obs"], "invalid choice"),
        (["prune", "--out", "x", "--save-dtype", "int8"], "argument --save-dtype: invalid choice: 'int8'"),
        (["prune", "--out", "x", "--precision", "half"], "argument --precision: invalid choice: 'half'"),
        (["prune", "--out", "x", "--round-kind", "l0"], "argument --round-kind: invalid choice: 'l0'"),
        (["prune", "--out", "x", "--blocks", "a-b"], "expected block indices"),
        (["prune", "--out", "x", "--cache-gib", "-1"], "--cache-gib must be >= 0"),
        (["prune", "--out", "x", "--tune-epochs", "-1"], "argument --tune-epochs"),
        (["prune", "--out", "x", "--tune-target", "dense"], "argument --tune-target"),
        (["prune", "--out", "x", "--tune-skip-groups", "-1"], "argument --tune-skip-groups"),
        (["prune", "--out", "x", "--tune-epochs", "1", "--tune-lr", "0"], "tune_lr must be a number > 0"),
        (["prune", "--out", "x", "--tune-epochs", "1", "--no-error-correction"], "tune_epochs needs error_correction"),
        (["prune", "--out", "x", "--tune-blocks", "0-9"], r"tune_blocks=\[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\] needs tune_epochs"),
        (["prune", "--out", "x", "--tune-epochs", "1", "--tune-blocks", "x"], "argument --tune-blocks: expected block indices"),
        (["prune", "/no/such/model", "--out", "x", "--eval-tokens", "0"], "no such model folder or file: /no/such/model"),
        (["prune", "no-such-hub-id", "--out", "x", "--eval-tokens", "0"], "hub id needs network access"),
        (["eval", "/no/such/model"], "no such model folder or file"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_argument_errors_exit_2_with_one_line(argv, match, capsys, tmp_path, monkeypatch, no_model_loading):
    monkeypatch.chdir(tmp_path)
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    _one_line_error(capsys, rc, match)
    assert list(tmp_path.iterdir()) == []  # no output folder


def test_bad_inputs_are_refused_before_loading(tiny_folder, tmp_path, capsys, no_model_loading):
    out = tmp_path / "o"
    cases = [
        (["--pattern", "2:5"], r"divisible by 5; operator 'hidden_size' has d_in = 32"),
        (["--calib", str(tmp_path)], "--calib: .* is not a regular file"),
        (["--calib", str(tmp_path / "missing.txt")], "--calib: no such file"),
        (["--eval-tokens", "100", "--eval-seqlen", "512"], "--eval-tokens"),
        (["--blocks", "1-2"], r"blocks must be indices in \[0, 2\)"),
    ]
    for extra, match in cases:
        _one_line_error(capsys, main([*_prune_args(tiny_folder, tmp_path, *extra), "--out", str(out)]), match)
        assert not out.exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    _one_line_error(capsys, main([*_prune_args(tiny_folder, tmp_path), "--out", str(foreign)]), "not a fistaopt output")
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_short_calibration_text_is_one_line(tiny_folder, tmp_path, capsys):
    short = write_text(tmp_path / "short.txt", "tiny")
    rc = main([*_prune_args(tiny_folder, tmp_path), "--calib", str(short), "--out", str(tmp_path / "o")])
    _one_line_error(capsys, rc, "--calib: .*(too short|fewer than)")
    assert not (tmp_path / "o").exists()


def test_bos_always_without_a_bos_token_is_one_line(tiny_folder, tmp_path, capsys):
    rc = main([*_prune_args(tiny_folder, tmp_path), "--bos", "always", "--out", str(tmp_path / "o")])
    _one_line_error(capsys, rc, "--bos: .*no bos_token_id")
    assert not (tmp_path / "o").exists()


def test_prune_command_end_to_end(tiny_folder, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    calib = write_text(tmp_path / "calib.txt")
    ev = write_text(tmp_path / "eval.txt", "A different text for evaluation only. " * 10)
    out = tmp_path / "out"
    argv = ["prune", str(tiny_folder), "--method", "wanda", "--pattern", "2:4", "--nsamples", "4", "--seqlen", "16",
            "--calib", str(calib), "--eval-text", str(ev), "--eval-tokens", "128", "--out", str(out), "--no-progress"]
    old = os.umask(0o022)
    try:
        assert main(argv) == 0
    finally:
        os.umask(old)
    printed = capsys.readouterr().out
    assert "perplexity before" in printed and "perplexity after" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["pattern"] == "2:4" and report["settings"]["sparsity"] == 0.5
    assert report["settings"]["bos"] == "auto" and report["seed"] == 0
    assert report["perplexity_before"]["ppl"] > 0 and report["perplexity_after"]["ppl"] > 0
    assert report["perplexity_after"]["bos_token_id"] is None  # the char tokenizer adds no BOS
    assert report["calibration"]["bos"] == "auto" and report["calibration"]["bos_token_id"] is None
    versions = report["versions"]
    assert versions["torch"] == torch.__version__.split("+")[0] or versions["torch"] == torch.__version__
    assert "gguf" in versions and "tokenizers" in versions and len(report["records"]) == 14
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o644
    model = AutoModelForCausalLM.from_pretrained(out)
    W = model.model.layers[1].mlp.down_proj.weight
    assert torch.all((W != 0).view(W.shape[0], -1, 4).sum(-1) <= 2)

    rc = main(["eval", str(out), "--seqlen", "16", "--max-tokens", "128", "--eval-text", str(ev), "--json", "--no-progress"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["ppl"] == pytest.approx(report["perplexity_after"]["ppl"], rel=1e-4)

    # a rerun into its own previous output needs no --overwrite, and keeps files it did not write
    (out / "notes.txt").write_text("mine")
    assert main([*argv[:3], "magnitude", *argv[4:]]) == 0
    assert json.loads((out / "report.json").read_text())["settings"]["method"] == "magnitude"
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.txt", "eval.txt", "out"]


def test_prune_precision_reaches_the_report(tiny_folder, tmp_path, capsys):
    """``--precision`` reaches the layer prune and the report, with what it resolved to; the default is auto."""
    calib = write_text(tmp_path / "calib.txt")
    base = ["prune", str(tiny_folder), "--method", "fista", "--nsamples", "2", "--seqlen", "16", "--blocks", "0",
            "--calib", str(calib), "--eval-tokens", "0", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "default")]) == 0
    assert main([*base, "--precision", "bf16", "--out", str(tmp_path / "bf16")]) == 0
    from fistaopt.layer.options import resolve_precision

    default = json.loads((tmp_path / "default" / "report.json").read_text())["settings"]["layer"]
    low = json.loads((tmp_path / "bf16" / "report.json").read_text())["settings"]["layer"]
    assert default["precision"] == "auto" and default["precision_used"] == resolve_precision("auto", "cpu", torch.float32)
    assert low["precision"] == low["precision_used"] == "bf16"


def test_prune_round_kind_reaches_the_layer_prune(tiny_folder, tmp_path, capsys):
    """``--round-kind l0-admm`` runs the l0-ADMM round (other weights than the l1 rounds'), recorded in the report."""
    from safetensors.torch import load_file

    calib = write_text(tmp_path / "calib.txt")
    base = ["prune", str(tiny_folder), "--method", "fista", "--nsamples", "2", "--seqlen", "16", "--blocks", "0",
            "--calib", str(calib), "--eval-tokens", "0", "--no-progress"]
    assert main([*base, "--round-kind", "l1", "--out", str(tmp_path / "l1")]) == 0
    assert main([*base, "--round-kind", "l0-admm", "--out", str(tmp_path / "l0")]) == 0
    settings = {k: json.loads((tmp_path / k / "report.json").read_text())["settings"]["layer"] for k in ("l1", "l0")}
    assert settings["l1"]["round_kind"] == "l1" and settings["l0"]["round_kind"] == "l0-admm"
    w = {k: load_file(str(tmp_path / k / "model.safetensors")) for k in ("l1", "l0")}
    block0 = [n for n in w["l1"] if ".layers.0." in n and n.endswith("proj.weight")]
    assert block0 and any(not torch.equal(w["l1"][n], w["l0"][n]) for n in block0)


def test_prune_tune_epochs_reach_the_report(tiny_folder, tmp_path, capsys):
    """``--tune-epochs`` tunes every pruned block: the report holds one tuning entry per block."""
    calib = write_text(tmp_path / "calib.txt")
    argv = ["prune", str(tiny_folder), "--method", "fista", "--nsamples", "2", "--seqlen", "16", "--calib", str(calib),
            "--eval-tokens", "0", "--no-progress", "--tune-epochs", "1", "--tune-lr", "1e-4", "--tune-windows", "1",
            "--tune-target", "model", "--tune-skip-groups", "1", "--tune-precision", "bf16", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["settings"]["tune_precision"] == "bf16"
    assert {t["products"] for t in report["tuning"]} == {"bfloat16"}
    assert report["settings"]["tune_epochs"] == 1 and report["settings"]["tune_windows"] == 1
    assert report["settings"]["tune_target"] == "model" and report["settings"]["tune_skip_groups"] == 1
    assert [t["block"] for t in report["tuning"]] == list(range(report["settings"]["n_blocks"]))
    assert all(t["steps"] == 1 and t["error_after"] <= t["error_before"] for t in report["tuning"])
    assert main([*argv[:-1], str(tmp_path / "last"), "--tune-blocks", "1"]) == 0
    report = json.loads((tmp_path / "last" / "report.json").read_text())
    assert report["settings"]["tune_blocks"] == [1] and [t["block"] for t in report["tuning"]] == [1]
    assert report["settings"]["residual_correction"] is True
    assert main([*argv[:-1], str(tmp_path / "plain"), "--no-residual-correction"]) == 0
    assert json.loads((tmp_path / "plain" / "report.json").read_text())["settings"]["residual_correction"] is False


def test_tune_blocks_outside_the_model_is_one_line_and_writes_nothing(tiny_folder, tmp_path, capsys):
    calib = write_text(tmp_path / "calib.txt")
    argv = ["prune", str(tiny_folder), "--method", "fista", "--nsamples", "2", "--seqlen", "16", "--calib", str(calib),
            "--eval-tokens", "0", "--no-progress", "--tune-epochs", "1", "--tune-blocks", "1-7", "--out",
            str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fistaopt prune: error: tune_blocks must be indices in [0, 2), got [1, 2, 3, 4, 5, 6, 7]"], err
    assert not (tmp_path / "o").exists()


def test_help_version_and_plain_command(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        for action in p._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
        text = p.format_help()
        assert "examples:" in text, name
    prune_help = sub.choices["prune"].format_help()
    for default in ("(default: 64)", "(default: 512)", "(default: 0)", "(default: 8)", "(default: fista)"):
        assert default in prune_help
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("fistaopt ")
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: fistaopt") and "prune" in err and "examples:" in err
