"""The held-out split of the calibration corpus: by article, deterministic, never in calibration."""

from __future__ import annotations

import json
import random
import string

import pytest
import torch

from fistaopt.llm.data import (
    calibration_tokens,
    heldout_tokens,
    load_wiki_summaries,
    split_articles,
)
from llm_fixtures import char_tokenizer, write_text


def random_articles(n: int = 40, length: int = 60, seed: int = 0) -> list[str]:
    """``n`` articles of random letters and digits: any 12 characters shared by two texts are a copy."""
    rng = random.Random(seed)
    return ["".join(rng.choices(string.ascii_letters + string.digits, k=length)) for _ in range(n)]


def window_text(tok, row: list[int]) -> str:
    return "".join(tok.convert_ids_to_tokens(row))


def shares_a_piece(window: str, article: str, k: int = 12) -> bool:
    return any(window[i : i + k] in article for i in range(len(window) - k + 1))


def test_every_tenth_article_is_held_out_deterministically_and_disjointly():
    articles = random_articles(35)
    kept, held = split_articles(articles)
    assert held == [articles[9], articles[19], articles[29]]
    assert kept == [a for i, a in enumerate(articles) if i not in (9, 19, 29)]
    assert not set(kept) & set(held)
    assert split_articles(articles) == (kept, held)
    assert split_articles(articles, every=5)[1] == articles[4::5]


def test_a_repeated_held_out_article_is_dropped_from_calibration_too():
    articles = random_articles(20)
    articles[3] = articles[9]  # the corpus repeats the held-out article 9 at index 3
    kept, held = split_articles(articles)
    assert articles[9] in held and articles[9] not in kept
    assert len(kept) == 20 - 2 - 1


def test_no_held_out_text_in_any_calibration_window():
    tok, articles = char_tokenizer(), random_articles(40)
    held = split_articles(articles)[1]
    for seed in range(3):
        windows = calibration_tokens(tok, articles, nsamples=200, seqlen=32, seed=seed, heldout=True)
        texts = [window_text(tok, row) for row in windows.tolist()]
        assert not any(shares_a_piece(w, a) for w in texts for a in held)
    # the check can see a leak: without the split the same draw does cover held-out text
    plain = calibration_tokens(tok, articles, nsamples=200, seqlen=32, seed=0)
    assert any(shares_a_piece(window_text(tok, row), a) for row in plain.tolist() for a in held)


def test_heldout_windows_are_deterministic_and_read_the_kept_stream():
    tok, articles = char_tokenizer(), random_articles(40)
    a = calibration_tokens(tok, articles, nsamples=16, seqlen=24, seed=5, heldout=True)
    assert torch.equal(a, calibration_tokens(tok, articles, nsamples=16, seqlen=24, seed=5, heldout=True))
    stream = tok("\n\n".join(split_articles(articles)[0]), add_special_tokens=False)["input_ids"]
    kept_ids = "," + ",".join(map(str, stream)) + ","
    assert all("," + ",".join(map(str, row)) + "," in kept_ids for row in a.tolist())


def test_heldout_tokens_are_the_held_out_articles(tmp_path):
    tok, articles = char_tokenizer(), random_articles(30)
    ids = heldout_tokens(tok, articles)
    expected = tok("\n\n".join(articles[9::10]), add_special_tokens=False)["input_ids"]
    assert ids.dtype == torch.long and ids.tolist() == expected
    wiki = tmp_path / "summaries.json"
    wiki.write_text(json.dumps({f"t{i}": {"title": f"t{i}", "extract": a} for i, a in enumerate(articles)}))
    assert torch.equal(heldout_tokens(tok, wiki), ids)  # the wiki JSON: one entry is one article
    assert torch.equal(calibration_tokens(tok, wiki, nsamples=4, seqlen=16, heldout=True),
                       calibration_tokens(tok, articles, nsamples=4, seqlen=16, heldout=True))


def test_the_held_out_split_needs_articles(tmp_path):
    tok = char_tokenizer()
    with pytest.raises(ValueError, match="held-out split needs articles"):
        calibration_tokens(tok, write_text(tmp_path / "plain.txt"), nsamples=2, seqlen=8, heldout=True)
    with pytest.raises(ValueError, match="held-out split needs articles"):
        heldout_tokens(tok, torch.arange(100))
    with pytest.raises(ValueError, match="every must be an int >= 2"):
        split_articles(random_articles(30), every=1)
    with pytest.raises(ValueError, match="5 articles hold no held-out article"):
        split_articles(random_articles(5))


def test_default_corpus_split():
    texts = load_wiki_summaries()
    kept, held = split_articles(texts)
    assert len(held) == len(texts) // 10 and len(kept) + len(held) == len(texts)
    assert not set(kept) & set(held)
