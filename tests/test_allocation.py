"""Non-uniform sparsity allocation (fistaopt.llm.allocation): exact totals, OWL, the convex rule, wiring."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from fistaopt.cli import main
from fistaopt.llm import PruneConfig, prune
from fistaopt.llm.allocation import (
    convex_sparsities, exact_counts, nonzero_curve, outlier_ratio, owl_block_sparsities, plan_allocation,
    uniform_count,
)
from fistaopt.llm.capture import calibration_batches, capture_block_inputs
from fistaopt.llm.model import find_blocks, linear_modules
from llm_fixtures import calib, char_tokenizer, tiny_model, write_text

SMOLLM2_BLOCK = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
OPT_BLOCK = [(768, 768)] * 4 + [(3072, 768), (768, 3072)]


@pytest.mark.parametrize("shapes,n_blocks", [(SMOLLM2_BLOCK, 30), (OPT_BLOCK, 12), ([(3, 7), (5, 11), (7, 13)], 4)])
@pytest.mark.parametrize("target,dev", [(0.5, 0.08), (0.7, 0.08), (0.613, 0.2), (0.3, 0.0)])
def test_exact_counts_meet_the_uniform_total_within_the_band(shapes, n_blocks, target, dev):
    units = [d_out for _ in range(n_blocks) for d_out, _ in shapes]
    widths = [d_in for _ in range(n_blocks) for _, d_in in shapes]
    rng = np.random.default_rng(0)
    desired = list(target + rng.uniform(-1.5 * dev, 1.5 * dev, len(units)))  # some outside the band
    counts = exact_counts(units, widths, desired, target, dev)
    uniform = sum(u * uniform_count(w, target) for u, w in zip(units, widths))
    assert sum(u * k for u, k in zip(units, counts)) == uniform
    for k, w in zip(counts, widths):
        assert k == uniform_count(w, target) or target - dev - 1e-9 <= k / w <= target + dev + 1e-9


def test_exact_counts_in_layer_scope_and_follow_the_desired_order():
    widths = [64 * 64, 64 * 256, 256 * 64]
    counts = exact_counts([1, 1, 1], widths, [0.6, 0.5, 0.4], 0.5, 0.1)
    assert sum(counts) == sum(uniform_count(w, 0.5) for w in widths)
    fractions = [k / w for k, w in zip(counts, widths)]
    assert fractions[0] > fractions[1] > fractions[2]


def test_owl_ratios_give_the_published_sparsities():
    # ratios 1%, 2%, 3% → normalised 0, 2·dev/2, 2·dev → centred: +dev, 0, −dev
    assert owl_block_sparsities([0.01, 0.02, 0.03], [10, 10, 10], 0.7, 0.08) == pytest.approx([0.78, 0.70, 0.62])
    # equal ratios: uniform
    assert owl_block_sparsities([0.02, 0.02], [5, 5], 0.5, 0.08) == pytest.approx([0.5, 0.5])
    # parameter-weighted mean equals the target
    s = owl_block_sparsities([0.0, 1.0, 0.5], [1, 3, 2], 0.6, 0.1)
    assert np.average(s, weights=[1, 3, 2]) == pytest.approx(0.6)


def test_outlier_ratio_counts_scores_above_m_times_the_mean():
    W = torch.ones(4, 25)
    W[0, 0] = 100.0  # scores: 99 ones and one 100 → mean 1.99; above 5 × 1.99: one
    assert outlier_ratio([W], [torch.ones(25)], 5.0) == pytest.approx(0.01)
    # the activation norm enters the score: column 3 of a second operator scaled by 50
    norms = torch.ones(25)
    norms[3] = 50.0
    assert outlier_ratio([W, torch.ones(2, 25)], [torch.ones(25), norms], 5.0) == pytest.approx(3 / 150)


def _operator(d_out, d_in, n_tokens, weight, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n_tokens, d_in, generator=g)
    return weight, X.T @ X / n_tokens


def test_convex_rule_gives_more_sparsity_where_pruning_is_cheaper():
    g = torch.Generator().manual_seed(1)
    dense = torch.randn(48, 64, generator=g)
    cheap = dense.clone()
    cheap[:, 16:] *= 1e-2  # three quarters of its weights carry almost no output energy
    ops = [_operator(48, 64, 512, w, seed) for seed, w in enumerate((cheap, dense))]
    curves = [nonzero_curve(W, H, damp=0.01) for W, H in ops]
    lam, s = convex_sparsities(curves, [48 * 64, 48 * 64], 0.5, 0.2)
    assert lam > 0
    assert s[0] > 0.6 and s[1] < 0.4
    assert np.mean(s) == pytest.approx(0.5, abs=0.02)
    counts = exact_counts([48, 48], [64, 64], s, 0.5, 0.2)
    assert sum(counts) == 2 * uniform_count(64, 0.5) and counts[0] > counts[1]


def _check_realised(model, report, sparsity):
    alloc = report.to_dict()["allocation"]
    targets = {(op["block"], op["name"]): op["target"] for op in alloc["operators"]}
    pruned, uniform = 0, 0
    for i, block in enumerate(find_blocks(model)[1]):
        for name, module in linear_modules(block).items():
            W = module.weight.detach()
            W = W if isinstance(module, torch.nn.Linear) else W.T
            d_out, d_in = W.shape
            k = round(targets[(i, name)] * d_in)
            assert k == pytest.approx(targets[(i, name)] * d_in)
            assert torch.all((W == 0).sum(1) == k), (i, name)  # every row, exactly its own count
            pruned += d_out * k
            uniform += d_out * uniform_count(d_in, sparsity)
    assert pruned == uniform
    assert all(op["realised"] == pytest.approx(op["target"]) for op in alloc["operators"])
    assert all(b["realised"] == pytest.approx(b["target"]) for b in alloc["blocks"])
    return alloc


@pytest.mark.parametrize("arch,rule,method", [
    ("llama", "owl", "fista"), ("llama", "convex", "wanda"), ("opt", "owl", "sparsegpt"),
    ("opt", "convex", "magnitude"), ("llama", "convex", "fista"), ("opt", "owl", "wanda"),
])
def test_realised_pattern_is_the_allocation_on_every_operator(arch, rule, method):
    model = tiny_model(arch)
    report = prune(model, calib(4, 16), method=method, sparsity=0.6, allocation=rule, max_deviation=0.1,
                   progress=False, batch_size=2)
    alloc = _check_realised(model, report, 0.6)
    assert alloc["rule"] == rule and len(alloc["operators"]) == len(report.records)
    assert len({round(op["target"], 6) for op in alloc["operators"]}) > 1  # not uniform in disguise
    assert report.settings["allocation"] == rule


def test_resume_takes_the_allocation_from_the_checkpoint(tmp_path, monkeypatch):
    """A resumed run does not redo the dense pre-pass: the finished blocks were pruned to the
    checkpoint's allocation, which a recomputation (e.g. with another number of ranks, whose
    sums round differently) could move by a count."""
    import importlib

    prune_module = importlib.import_module("fistaopt.llm.prune")  # the module, not the function it exports
    ids = calib(4, 16)
    kw = dict(method="wanda", sparsity=0.6, allocation="convex", max_deviation=0.1, progress=False, batch_size=2)
    reference = tiny_model("llama")
    want = prune(reference, ids, **kw)

    def stop_after_block_0(i, report):
        if i == 0:
            raise KeyboardInterrupt

    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        prune(tiny_model("llama"), ids, checkpoint_dir=ckpt, callback=stop_after_block_0, **kw)
    assert json.loads((ckpt / "state.json").read_text())["allocation"]["rule"] == "convex"

    def no_prepass(*args, **kwargs):
        raise AssertionError("the resumed run recomputed the allocation")

    monkeypatch.setattr(prune_module, "plan_allocation", no_prepass)
    resumed = tiny_model("llama")
    got = prune(resumed, ids, checkpoint_dir=ckpt, **kw)
    assert got.allocation == want.allocation
    for (k, v), (k2, v2) in zip(reference.state_dict().items(), resumed.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


@pytest.mark.parametrize("windows,batches", [(3, 2), (4, 2), (1, 1), (None, 3)])
def test_owl_counts_the_first_batches_holding_owl_windows(windows, batches):
    """OWL reads the first batches that hold ``owl_windows`` windows: the allocation of a
    calibration cut to those batches, with every window counted."""
    ids = calib(6, 16)
    kw = dict(method="wanda", sparsity=0.6, allocation="owl", max_deviation=0.1, progress=False, batch_size=2)
    got = prune(tiny_model("llama", scale=3.0), ids, owl_windows=windows, **kw).allocation
    want = prune(tiny_model("llama", scale=3.0), ids[: 2 * batches], owl_windows=None, **kw).allocation
    assert got["outlier_ratios"] == want["outlier_ratios"]
    assert got["operators"] == want["operators"]
    assert got["owl_windows"] == 2 * batches


def test_owl_prepass_forwards_each_counted_batch_once():
    """The forward that finds a block's operators is one of the counted batches' forwards."""
    model = tiny_model("llama")
    _, blocks = find_blocks(model)
    calls: list[int] = []
    hooks = [b.register_forward_pre_hook(lambda mod, args, i=i: calls.append(i)) for i, b in enumerate(blocks)]
    ids = calib(6, 16)
    config = PruneConfig(method="wanda", sparsity=0.6, allocation="owl", max_deviation=0.1, batch_size=2,
                         owl_windows=3)
    batches = calibration_batches(ids, config.batch_size, model)
    inputs = capture_block_inputs(model, batches)
    calls.clear()
    alloc = plan_allocation(blocks, inputs, [0, 1], config, torch.device("cpu"))
    for h in hooks:
        h.remove()
    assert calls == [0, 0, 1, 1]  # two batches (4 windows >= 3) through each block, once each
    assert alloc is not None and alloc.info["owl_windows"] == 4


@pytest.mark.parametrize("kwargs,rule", [
    (dict(method="fista", sparsity=0.7), "owl"),  # solver methods from 65%
    (dict(method="ista", sparsity=0.65), "owl"),
    (dict(method="fista", sparsity=0.6), "uniform"),  # measured: OWL did not pay at 60%
    (dict(method="fista", sparsity=0.5), "uniform"),
    (dict(method="fista", pattern="2:4"), "uniform"),
    (dict(method="fista", sparsity=0.95), "uniform"),  # 0.95 + max_deviation reaches 1
    (dict(method="sparsegpt", sparsity=0.7), "uniform"),  # baselines: their own protocol
    (dict(method="wanda", sparsity=0.7, allocation="owl"), "owl"),  # an explicit rule stays
    (dict(method="fista", sparsity=0.7, allocation="uniform"), "uniform"),
])
def test_auto_allocation_is_owl_for_solvers_from_65_percent(kwargs, rule):
    assert PruneConfig(**kwargs).allocation_rule == rule
    # resolved where it is read, whatever changed after the default config was built (llm.prune's path)
    assert PruneConfig.build(None, **kwargs).allocation_rule == rule
    assert PruneConfig.build(PruneConfig(method="fista", sparsity=0.5), **kwargs).allocation_rule == rule
    assert PruneConfig.build(None, **kwargs).settings()["allocation"] == rule  # the report records the rule used


def test_default_prune_from_65_percent_allocates_with_owl():
    model = tiny_model("llama", scale=3.0)
    report = prune(model, calib(4, 16), sparsity=0.7, max_deviation=0.1, progress=False, batch_size=2)
    assert report.settings["allocation"] == "owl" and report.to_dict()["allocation"]["rule"] == "owl"
    _check_realised(model, report, 0.7)


def test_uniform_is_unchanged():
    ids = calib(4, 16)
    a, b = tiny_model("llama"), tiny_model("llama")
    ra = prune(a, ids, method="sparsegpt", sparsity=0.6, progress=False)
    rb = prune(b, ids, method="sparsegpt", sparsity=0.6, allocation="uniform", progress=False)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb)
    assert "allocation" not in ra.to_dict() and "allocation" not in rb.to_dict()
    assert all(r.sparsity == uniform_count(r.shape[1], 0.6) / r.shape[1] for r in ra.records)


@pytest.mark.parametrize("kwargs,match", [
    (dict(allocation="owl", pattern="2:4"), r"needs an unstructured pattern; N:M \(2:4\)"),
    (dict(allocation="convex", sparsity=0.7, max_deviation=0.35), "max_deviation must keep"),
    (dict(allocation="owl", max_deviation=-0.1), "max_deviation must keep"),
    (dict(allocation="owl", owl_threshold=0), "owl_threshold must be > 0"),
    (dict(allocation="owl", owl_threshold="5"), "owl_threshold must be a number"),
    (dict(allocation="outliers"), "allocation must be one of auto, uniform, owl, convex"),
    (dict(allocation="owl", owl_windows=0), "owl_windows must be a positive int"),
    (dict(allocation="owl", owl_windows=2.5), "owl_windows must be a positive int"),
])
def test_bad_allocation_settings_are_one_line_errors(kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        PruneConfig(**kwargs)
    assert "\n" not in str(e.value)


def test_cli_allocation_flag_report_and_plot(tmp_path, capsys):
    folder = tmp_path / "llama"
    tiny_model("llama", scale=3.0).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    calib_file, out = write_text(tmp_path / "calib.txt"), tmp_path / "out"
    argv = ["prune", str(folder), "--nsamples", "2", "--seqlen", "16", "--calib", str(calib_file), "--eval-tokens", "0",
            "--method", "magnitude", "--no-progress", "--sparsity", "0.6", "--allocation", "owl",
            "--max-deviation", "0.1", "--out", str(out)]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["allocation"] == "owl" and report["settings"]["max_deviation"] == 0.1
    assert [b["block"] for b in report["allocation"]["blocks"]] == [0, 1]
    assert main(["plot", str(out), "--out", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "allocation.png").is_file()
    capsys.readouterr()
    bad = [a for a in argv[:-1] if a not in ("--sparsity", "0.6")]
    assert main([*bad, str(tmp_path / "bad"), "--pattern", "2:4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search("needs an unstructured pattern", err), err
