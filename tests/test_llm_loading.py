"""Model loading: local folders, GGUF files, and clear one-line errors for everything else."""

from __future__ import annotations

import pytest
import torch

from fistaopt.llm.loading import load_model, resolve_model_source
from llm_fixtures import char_tokenizer, tiny_model


def test_missing_path_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^no such model folder or file: .*nowhere$"):
        resolve_model_source(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"^no such model folder or file: \./model\.gguf$"):
        resolve_model_source("./model.gguf")


def test_uncached_hub_id_says_it_needs_network(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    with pytest.raises(FileNotFoundError, match="no such model folder or file: someone/model .*needs network access"):
        resolve_model_source("someone/model")


def test_folder_without_config_and_non_gguf_file_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        resolve_model_source(tmp_path)
    f = tmp_path / "weights.bin"
    f.write_bytes(b"0")
    with pytest.raises(FileNotFoundError, match="is not a .gguf file"):
        resolve_model_source(f)


def test_load_model_from_a_saved_folder(tmp_path):
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "m")
    char_tokenizer().save_pretrained(tmp_path / "m")
    loaded, tok = load_model(tmp_path / "m")
    assert resolve_model_source(tmp_path / "m") == tmp_path / "m"
    assert not loaded.training and tok("ab")["input_ids"] == char_tokenizer()("ab")["input_ids"]
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_save_pruned_never_deletes_the_users_files(tmp_path):
    from fistaopt.llm.loading import save_pruned
    from fistaopt._io import OutputExistsError

    model, tok = tiny_model("llama"), char_tokenizer()
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not a fistaopt output"):
        save_pruned(model, tok, out, {"settings": {}, "records": []})
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    save_pruned(model, tok, out, {"settings": {}, "records": []}, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.safetensors").is_file()
    assert oct((out / "model.safetensors").stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    save_pruned(model, tok, out, {"settings": {}, "records": []})  # a previous output: rewritten
    assert (out / "notes.txt").read_text() == "mine"


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
