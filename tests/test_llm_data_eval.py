"""Calibration/evaluation tokens and perplexity."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fistaopt.llm.data import (
    bos_token_id,
    calibration_tokens,
    default_calibration_path,
    default_evaluation_path,
    evaluation_tokens,
    load_wiki_summaries,
    packaged_evaluation_path,
)
from fistaopt.llm.evaluate import perplexity
from llm_fixtures import TEXT, bos_char_tokenizer, char_tokenizer, tiny_model, write_text


def test_perplexity_equals_exp_mean_cross_entropy_by_hand():
    model = tiny_model("llama", scale=5.0)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 128, (53,), generator=g)
    res = perplexity(model, tokens, seqlen=16, batch_size=2)
    nll = []
    with torch.no_grad():
        for w in range(3):  # 53 // 16 windows, remainder dropped
            ids = tokens[w * 16 : (w + 1) * 16]
            logits = model(ids[None]).logits[0]
            nll.append(F.cross_entropy(logits[:-1], ids[1:], reduction="none"))
    nll = torch.cat(nll)
    assert res.n_windows == 3 and res.n_tokens == 45 and res.seqlen == 16
    assert res.ppl == pytest.approx(math.exp(float(nll.mean())), rel=1e-5)
    assert float(res) == res.ppl
    assert perplexity(model, tokens, seqlen=16, max_tokens=32).n_windows == 2


def test_perplexity_bad_inputs():
    model = tiny_model("gpt2")
    with pytest.raises(TypeError, match="integer"):
        perplexity(model, torch.rand(40), seqlen=8)
    with pytest.raises(ValueError, match="need at least 8 tokens for one window"):
        perplexity(model, torch.arange(5), seqlen=8)
    with pytest.raises(ValueError, match="bos_token_id"):
        perplexity(model, torch.arange(40), seqlen=8, bos_token_id=-1)
    with pytest.raises(ValueError, match="seqlen"):
        perplexity(model, torch.arange(40), seqlen=1)


def test_calibration_tokens_from_strings_file_and_ids(tmp_path):
    tok = char_tokenizer()
    a = calibration_tokens(tok, TEXT.splitlines(), nsamples=5, seqlen=32, seed=1)
    b = calibration_tokens(tok, TEXT.splitlines(), nsamples=5, seqlen=32, seed=1)
    c = calibration_tokens(tok, TEXT.splitlines(), nsamples=5, seqlen=32, seed=2)
    assert a.shape == (5, 32) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    stream = tok("\n\n".join(TEXT.splitlines()), add_special_tokens=False)["input_ids"]
    text_ids = "," + ",".join(map(str, stream)) + ","
    for row in a.tolist():  # every window is a contiguous piece of the token stream
        assert "," + ",".join(map(str, row)) + "," in text_ids
    f = write_text(tmp_path / "calib.txt")
    assert calibration_tokens(tok, f, nsamples=3, seqlen=16).shape == (3, 16)
    ids = torch.arange(100)
    w = calibration_tokens(tok, ids, nsamples=4, seqlen=10)
    assert torch.all(w[:, 1:] - w[:, :-1] == 1)


def test_calibration_tokens_errors(tmp_path):
    tok = char_tokenizer()
    with pytest.raises(ValueError, match="calibration text is too short: 5 tokens, one window needs 64"):
        calibration_tokens(tok, ["short"], nsamples=1, seqlen=64)
    with pytest.raises(ValueError, match="not a regular file"):
        calibration_tokens(tok, tmp_path)
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00\x81" * 50)
    with pytest.raises(ValueError, match="not UTF-8"):
        calibration_tokens(tok, tmp_path / "binary.txt")
    with pytest.raises(ValueError, match="bos must be one of"):
        calibration_tokens(tok, ["x" * 100], nsamples=1, seqlen=8, bos="yes")
    with pytest.raises(ValueError, match="nsamples"):
        calibration_tokens(tok, ["x" * 100], nsamples=0, seqlen=8)
    with pytest.raises(FileNotFoundError):
        calibration_tokens(tok, tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="empty"):
        calibration_tokens(tok, [])
    with pytest.raises(TypeError, match="integer dtype"):
        calibration_tokens(tok, torch.rand(100))


def test_default_calibration_source_is_the_wiki_summaries():
    path = default_calibration_path()
    assert path.name == "summaries_en-us.json"
    texts = load_wiki_summaries(path)
    assert len(texts) > 10000 and all(isinstance(t, str) and t for t in texts[:100])


def test_evaluation_tokens(tmp_path, monkeypatch):
    tok = char_tokenizer()
    f = write_text(tmp_path / "eval.txt", "hello world")
    assert evaluation_tokens(tok, f).tolist() == tok("hello world", add_special_tokens=False)["input_ids"]
    monkeypatch.setenv("FISTAOPT_EVAL_TEXT", str(f))
    assert evaluation_tokens(tok).numel() == 11
    monkeypatch.setenv("FISTAOPT_EVAL_TEXT", str(tmp_path / "nope.txt"))
    with pytest.raises(FileNotFoundError, match="evaluation text not found"):
        evaluation_tokens(tok)


# ------------------------------------------------------------------ BOS rule
def test_bos_auto_follows_the_tokenizer():
    plain, with_bos = char_tokenizer(), bos_char_tokenizer()
    assert plain("x")["input_ids"][0] != plain.bos_token_id  # no BOS by default (SmolLM2, GPT-2 style)
    assert with_bos("x")["input_ids"][0] == with_bos.bos_token_id  # BOS by default (Llama style)
    assert bos_token_id(plain, "auto") is None
    assert bos_token_id(with_bos, "auto") == with_bos.bos_token_id
    assert bos_token_id(with_bos, "never") is None
    assert bos_token_id(with_bos, "always") == with_bos.bos_token_id
    with pytest.raises(ValueError, match="defines no bos_token_id"):
        bos_token_id(plain, "always")


def test_calibration_windows_start_with_bos_exactly_when_the_rule_says():
    plain, with_bos = char_tokenizer(), bos_char_tokenizer()
    bid = with_bos.bos_token_id
    auto = calibration_tokens(with_bos, TEXT.splitlines(), nsamples=6, seqlen=16, seed=3)
    assert auto.shape == (6, 16) and torch.all(auto[:, 0] == bid)
    assert not torch.any(auto[:, 1:] == bid)  # BOS only at position 0, the rest is text
    never = calibration_tokens(with_bos, TEXT.splitlines(), nsamples=6, seqlen=16, seed=3, bos="never")
    assert not torch.any(never == bid)
    no_bos = calibration_tokens(plain, TEXT.splitlines(), nsamples=6, seqlen=16, seed=3)
    assert not torch.any(no_bos[:, 0] == bid)
    # 'always' on a tokenizer that has a BOS but does not add it
    plain_with_bos_token = bos_char_tokenizer()
    plain_with_bos_token.backend_tokenizer.post_processor = None
    assert bos_token_id(plain_with_bos_token, "auto") is None
    forced = calibration_tokens(plain_with_bos_token, TEXT.splitlines(), nsamples=2, seqlen=16, bos="always")
    assert torch.all(forced[:, 0] == bid)


def test_perplexity_with_bos_scores_bos_plus_text_windows():
    model = tiny_model("llama", scale=5.0)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, 100, (50,), generator=g)
    bos = 120
    res = perplexity(model, tokens, seqlen=16, bos_token_id=bos)
    nll = []
    with torch.no_grad():
        for w in range(50 // 15):
            ids = torch.cat([torch.tensor([bos]), tokens[w * 15 : (w + 1) * 15]])
            logits = model(ids[None]).logits[0]
            nll.append(F.cross_entropy(logits[:-1], ids[1:], reduction="none"))
    nll = torch.cat(nll)
    assert res.n_windows == 3 and res.n_tokens == 45 and res.seqlen == 16
    assert res.ppl == pytest.approx(math.exp(float(nll.mean())), rel=1e-5)
    assert res.ppl != pytest.approx(perplexity(model, tokens, seqlen=16).ppl, rel=1e-3)


# ------------------------------------------------------------------ shipped evaluation text
def test_evaluation_text_is_shipped_with_the_package(monkeypatch):
    import hashlib

    import fistaopt

    monkeypatch.delenv("FISTAOPT_EVAL_TEXT", raising=False)
    path = default_evaluation_path()
    assert path == packaged_evaluation_path()
    assert path.resolve().is_relative_to(__import__("pathlib").Path(fistaopt.__file__).resolve().parent)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == "696cca6b65a171b0a358a4be6732cdfdf2dd6164a32e20fd70e3c13fc4dfae83"
    assert (path.parent / "README.md").read_text().count("CC BY-SA 3.0") >= 1
    assert evaluation_tokens(char_tokenizer()).numel() > 1_000_000


def test_evaluation_text_overrides(tmp_path, monkeypatch):
    tok = char_tokenizer()
    env_file = write_text(tmp_path / "env.txt", "abc" * 10)
    arg_file = write_text(tmp_path / "arg.txt", "xy" * 10)
    monkeypatch.setenv("FISTAOPT_EVAL_TEXT", str(env_file))
    assert evaluation_tokens(tok).numel() == 30
    assert evaluation_tokens(tok, arg_file).numel() == 20  # an explicit path wins
    monkeypatch.setenv("FISTAOPT_EVAL_TEXT", str(tmp_path / "missing.txt"))
    with pytest.raises(FileNotFoundError, match=r"missing.txt \(from \$FISTAOPT_EVAL_TEXT\)"):
        evaluation_tokens(tok)
