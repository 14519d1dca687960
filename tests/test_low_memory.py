"""Low-memory mode: blocks read from safetensors shards in turn, pruned by the same loop, written as shards.

Tiny random Llama (untied) and OPT (tied embeddings) with 3 blocks, saved with a small
``max_shard_size`` so the input has several shards.  Everything runs on one thread so
the in-memory and the low-memory prune do the same arithmetic in the same order.
"""

from __future__ import annotations

import json

import pytest
import torch

from fistaopt import _io
from fistaopt.cli import main
from fistaopt.llm import perplexity, perplexity_from_pretrained, prune, prune_from_pretrained
from fistaopt.llm.model import find_blocks
from fistaopt.llm.shards import INDEX_FILE, ShardedModel
from llm_fixtures import calib, char_tokenizer, tiny_config, write_text

ARCHS = ("llama", "opt")
N_BLOCKS = 3


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(arch: str):
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch)
    config.num_hidden_layers = N_BLOCKS
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(3.0)
    return model.eval()


@pytest.fixture(scope="module", params=ARCHS)
def saved(request, tmp_path_factory):
    """A tiny model saved in several shards (with a tokenizer): its folder."""
    folder = tmp_path_factory.mktemp(request.param) / "model"
    _tiny(request.param).save_pretrained(folder, max_shard_size="20KB")
    char_tokenizer().save_pretrained(folder)
    assert len(json.loads((folder / INDEX_FILE).read_text())["weight_map"]) > 0
    assert len(list(folder.glob("*.safetensors"))) > N_BLOCKS
    return folder


def _load(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def _block_params(model) -> int:
    _, blocks = find_blocks(model)
    return sum(p.numel() for p in blocks[0].parameters())


@pytest.mark.parametrize("method", ["wanda", "fista"])
def test_low_memory_prune_is_bit_identical_to_in_memory(saved, tmp_path, method):
    ids = calib(8, 16)
    reference = _load(saved)
    prune(reference, ids, sparsity=0.5, method=method, progress=False)

    report = prune_from_pretrained(saved, ids, tmp_path / "out", sparsity=0.5, method=method, progress=False)
    pruned = _load(tmp_path / "out")
    want, got = reference.state_dict(), pruned.state_dict()
    assert want.keys() == got.keys()
    assert [k for k in want if not torch.equal(want[k], got[k])] == []
    with torch.no_grad():
        assert torch.equal(reference(ids).logits, pruned(ids).logits)
    # only one block was ever materialised: the counter looks at every block after each load
    assert report.totals["peak_resident_block_params"] == _block_params(reference)
    assert report.totals["peak_host_bytes"] > 0 and report.totals["low_memory"] is True
    assert report.totals["sparsity"] == pytest.approx(0.5, abs=0.02)


def test_output_folder_is_a_hugging_face_folder_with_one_shard_per_block(saved, tmp_path):
    out = tmp_path / "out"
    prune_from_pretrained(saved, calib(4, 16), out, sparsity=0.5, method="magnitude", progress=False)
    index = json.loads((out / INDEX_FILE).read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) == N_BLOCKS + 1
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "report.json", _io.MANIFEST} <= names
    assert set(json.loads((out / _io.MANIFEST).read_text())) == names - {_io.MANIFEST}
    model = _load(out)
    if model.config.tie_word_embeddings:  # OPT: stored once, tied again on load
        assert "lm_head.weight" not in index["weight_map"]
        assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert json.loads((out / "report.json").read_text())["totals"]["n_blocks"] == N_BLOCKS


def test_blocks_after_the_last_selected_one_are_copied_unchanged(saved, tmp_path):
    ids = calib(4, 16)
    reference = _load(saved)
    prune(reference, ids, sparsity=0.5, method="wanda", blocks=[0], progress=False)
    prune_from_pretrained(saved, ids, tmp_path / "out", sparsity=0.5, method="wanda", blocks=[0], progress=False)
    want, got = reference.state_dict(), _load(tmp_path / "out").state_dict()
    assert [k for k in want if not torch.equal(want[k], got[k])] == []


def test_streamed_perplexity_equals_in_memory_perplexity(saved):
    tokens = torch.randint(0, 100, (300,), generator=torch.Generator().manual_seed(1))
    model = _load(saved)
    for batch_size, bos in ((1, None), (3, 5)):
        want = perplexity(model, tokens, seqlen=32, batch_size=batch_size, bos_token_id=bos)
        got = perplexity_from_pretrained(saved, tokens, seqlen=32, batch_size=batch_size, bos_token_id=bos)
        assert got == want


def test_streamed_perplexity_holds_one_block(saved):
    sharded = ShardedModel(saved)
    assert sharded.resident_block_params() == 0
    from fistaopt.llm.streamed_eval import streamed_perplexity

    streamed_perplexity(sharded, torch.arange(64) % 100, seqlen=32)
    assert sharded.peak_resident_block_params == _block_params(_load(saved))
    assert sharded.resident_block_params() == 0


def test_a_killed_run_resumes_without_redoing_its_blocks(saved, tmp_path):
    ids, ckpt, out = calib(4, 16), tmp_path / "ckpt", tmp_path / "out"
    prune_from_pretrained(saved, ids, tmp_path / "whole", sparsity=0.5, method="fista", progress=False)

    def die_after_first(i, report):
        if i == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prune_from_pretrained(saved, ids, out, sparsity=0.5, method="fista", checkpoint_dir=ckpt,
                              progress=False, callback=die_after_first)
    assert not out.exists()  # atomic: nothing published
    seen = []
    report = prune_from_pretrained(saved, ids, out, sparsity=0.5, method="fista", checkpoint_dir=ckpt,
                                   progress=False, callback=lambda i, r: seen.append(i))
    assert seen == list(range(1, N_BLOCKS))
    assert sorted({r.block for r in report.records}) == list(range(N_BLOCKS))
    want, got = _load(tmp_path / "whole").state_dict(), _load(out).state_dict()
    assert [k for k in want if not torch.equal(want[k], got[k])] == []


def test_bad_inputs_get_one_line_errors(saved, tmp_path):
    empty = tmp_path / "config-only"
    empty.mkdir()
    (empty / "config.json").write_text((saved / "config.json").read_text())
    with pytest.raises(ValueError, match=r"needs safetensors weights; .* has no weight files \(supported:"):
        prune_from_pretrained(empty, calib(2, 16), tmp_path / "o1", progress=False)
    bin_only = tmp_path / "bin-only"
    bin_only.mkdir()
    (bin_only / "config.json").write_text((saved / "config.json").read_text())
    torch.save(_load(saved).state_dict(), bin_only / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"has pytorch_model.bin \(supported: a Hugging Face folder with"):
        perplexity_from_pretrained(bin_only, torch.arange(64), seqlen=32)
    assert not (tmp_path / "o1").exists()


def test_foreign_output_folder_is_refused_and_user_files_are_kept(saved, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(_io.OutputExistsError):
        prune_from_pretrained(saved, calib(2, 16), out, method="magnitude", progress=False)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    prune_from_pretrained(saved, calib(2, 16), out, method="magnitude", progress=False, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and (out / INDEX_FILE).is_file()


def _cli(folder, tmp_path, out, *extra):
    text = write_text(tmp_path / "text.txt")
    return main(["prune", str(folder), "--nsamples", "4", "--seqlen", "16", "--calib", str(text), "--eval-text",
                 str(text), "--eval-tokens", "256", "--method", "wanda", "--no-progress", "--threads", "1",
                 "--out", str(out), *extra])


def test_cli_low_memory_matches_the_in_memory_command(saved, tmp_path, capsys):
    assert _cli(saved, tmp_path, tmp_path / "mem") == 0
    assert _cli(saved, tmp_path, tmp_path / "low", "--low-memory") == 0
    mem = json.loads((tmp_path / "mem" / "report.json").read_text())
    low = json.loads((tmp_path / "low" / "report.json").read_text())
    for key in ("perplexity_before", "perplexity_after"):
        assert {k: v for k, v in low[key].items() if k != "seconds"} == {k: v for k, v in mem[key].items() if k != "seconds"}
    assert low["totals"]["peak_resident_block_params"] > 0
    assert (tmp_path / "low" / "README.md").is_file()
    want, got = _load(tmp_path / "mem").state_dict(), _load(tmp_path / "low").state_dict()
    assert [k for k in want if not torch.equal(want[k], got[k])] == []


def test_cli_low_memory_refusals_are_one_line(saved, tmp_path, capsys):
    bin_only = tmp_path / "bin-only"
    bin_only.mkdir()
    (bin_only / "config.json").write_text((saved / "config.json").read_text())
    (bin_only / "pytorch_model.bin").write_bytes(b"")
    for folder, extra, pattern in ((bin_only, (), "needs safetensors weights"),
                                   (saved, ("--tasks", "arc_easy"), "--tasks")):
        assert _cli(folder, tmp_path, tmp_path / "x", "--low-memory", *extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and pattern in err, err
