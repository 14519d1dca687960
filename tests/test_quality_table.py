"""benchmarks/quality_table.py renders a prune_quality JSON between the markers, and nothing else;
benchmarks/prune_quality.py plans its rows and summarises the seeds."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, _BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


qt = _load("quality_table")
pq = _load("prune_quality")
COMMAND = "python benchmarks/prune_quality.py --patterns '50%;2:4' --seeds 0,1,2 --jobs 2 --out r.json"


def run(method: str, pattern: str, seed: int, wt2: float, held: float, seconds: float) -> dict:
    return {"method": method, "pattern": pattern, "seed": seed, "ppl": {"wikitext2": wt2, "heldout": held},
            "prune_seconds": seconds}


def fixture() -> dict:
    """A small result as prune_quality writes it: dense, two methods, 50% with three seeds for sparsegpt."""
    runs = [run("dense", "-", 0, 29.93, 25.0, 0.0),
            run("sparsegpt", "50%", 0, 59.0, 50.0, 140.0), run("sparsegpt", "50%", 1, 60.0, 52.0, 142.0),
            run("sparsegpt", "50%", 2, 61.0, 51.0, 144.0),
            run("fista", "50%", 0, 55.31, 49.0, 569.0),
            run("sparsegpt", "2:4", 0, 122.65, 100.0, 150.0), run("fista", "2:4", 0, 99.71, 90.5, 545.0)]
    return {"protocol": {"command": COMMAND, "model": "tiny", "calibration": "32 x 512 tokens",
                         "evaluation": {"wikitext2": "first 32768 tokens", "heldout": "first 16384 tokens"},
                         "jobs": 2, "threads": 1, "cpu_count": 2, "blocks": "all",
                         "loadavg_start": [1.0, 1.0, 1.0], "loadavg_end": [2.0, 1.5, 1.2]},
            "rows": pq.group_rows(runs)}


def test_tables_hold_every_cell_the_spread_and_the_command():
    block = qt.render(fixture(), source="docs/results/r.json")
    wt2, held = block.split("Perplexity on ")[1:]
    assert "| method | 50% | 2:4 | prune s (50% / 2:4) |" in wt2
    assert "| dense | 29.93 | 29.93 | – |" in wt2
    assert "| sparsegpt | 60.00 ± 1.00 | 122.65 | 142 / 150 |" in wt2  # mean ± sample std of 59, 60, 61
    assert "| fista | **55.31** | **99.71** | 569 / 545 |" in wt2  # best pruned mean of each column in bold
    assert "| sparsegpt | 51.00 ± 1.00 | 100.00 | 142 / 150 |" in held
    assert "| fista | **49.00** | **90.50** | 569 / 545 |" in held
    assert "calibration seeds 0, 1, 2 for sparsegpt@50%" in block
    assert COMMAND in block and "quality_table.py docs/results/r.json README.md docs/pruning.md" in block
    assert "load average (1/5/15 min) 1.0→2.0, 1.0→1.5, 1.0→1.2" in block


def test_a_missing_cell_is_a_dash():
    result = fixture()
    result["rows"] = [r for r in result["rows"] if not (r["method"] == "fista" and r["pattern"] == "2:4")]
    assert "| fista | **55.31** | – | 569 / – |" in qt.render(result)


def test_main_rewrites_only_the_block_of_every_file(tmp_path):
    result = tmp_path / "r.json"
    result.write_text(json.dumps(fixture()))
    docs = []
    for name in ("README.md", "pruning.md"):
        doc = tmp_path / name
        doc.write_text(f"# {name}\nbefore\n\n{qt.START}\n| old | table |\n{qt.END}\n\nafter\n")
        docs.append(doc)
    assert qt.main([str(result), *map(str, docs)]) == 0
    for doc in docs:
        text = doc.read_text()
        assert text.startswith(f"# {doc.name}\nbefore\n\n{qt.START}\n") and text.endswith(f"{qt.END}\n\nafter\n")
        assert "| old | table |" not in text and "| fista | **55.31** |" in text
    once = docs[0].read_text()
    assert f"quality_table.py {result} {docs[0]} {docs[1]}\n" in once  # the command rewrites these files
    qt.main([str(result), *map(str, docs)])
    assert docs[0].read_text() == once  # regenerating is idempotent


def test_a_named_table_has_its_own_markers(tmp_path):
    """``--name 70`` rewrites the ``quality-table-70`` block and leaves the main table alone."""
    result, doc = tmp_path / "r.json", tmp_path / "README.md"
    result.write_text(json.dumps(fixture()))
    start, end = qt.markers("70")
    assert (start, end) == ("<!-- quality-table-70:start -->", "<!-- quality-table-70:end -->")
    doc.write_text(f"{qt.START}\nmain\n{qt.END}\n{start}\nold\n{end}\n")
    assert qt.main([str(result), str(doc), "--name", "70"]) == 0
    text = doc.read_text()
    assert f"{qt.START}\nmain\n{qt.END}\n" in text and "old" not in text
    assert f"{doc} --name 70\n" in text  # the reproducing command names the file and the block
    assert "quality_table.py RESULT.json README.md docs/pruning.md\n" in qt.render(fixture())  # the default files
    with pytest.raises(SystemExit):
        qt.main([str(result), str(doc), "--name", "a b"])


def test_markers_must_be_there_once_and_in_order(tmp_path):
    with pytest.raises(ValueError, match="once each; found 0 and 0"):
        qt.replace_block("no markers", "x", "README.md")
    with pytest.raises(ValueError, match="comes before"):
        qt.replace_block(f"{qt.END}\n{qt.START}\n", "x")
    result, good, bad = tmp_path / "r.json", tmp_path / "good.md", tmp_path / "bad.md"
    result.write_text(json.dumps(fixture()))
    good.write_text(f"{qt.START}\nold\n{qt.END}\n")
    bad.write_text("nothing\n")
    with pytest.raises(ValueError, match="bad.md must hold"):
        qt.main([str(result), str(good), str(bad)])
    assert good.read_text() == f"{qt.START}\nold\n{qt.END}\n"  # nothing written when one file is wrong


# ------------------------------------------------------------------ prune_quality: rows, seeds, patterns
def test_a_method_option_overrides_the_row_pattern():
    from fistaopt.study.specs import Spec

    spec = Spec.parse("sparsegpt[pattern=unstructured-layer]")
    settings = {**pq.pattern_args("50%"), **pq.method_settings(spec)}
    assert settings == {"pattern": "unstructured-layer", "sparsity": 0.5, **pq.BASELINE_PROTOCOL}
    assert pq.method_settings(Spec.parse("fista")) == {}


def test_seeded_rows_run_every_seed_and_the_rest_the_first():
    methods, patterns = ["sparsegpt", "wanda", "fista[warm_start=wanda]"], ["50%", "2:4"]
    seeded = pq.parse_seeded_rows(None, methods, patterns)
    assert seeded == {("sparsegpt", "50%")}  # the default names fista@50%, absent from this run
    tasks = pq.plan_tasks(methods, patterns, [3, 1], seeded, dense=True)
    assert [(t.method, t.pattern, t.seed) for t in tasks] == [
        ("dense", "-", 3), ("sparsegpt", "50%", 3), ("sparsegpt", "50%", 1), ("wanda", "50%", 3),
        ("fista[warm_start=wanda]", "50%", 3), ("sparsegpt", "2:4", 3), ("wanda", "2:4", 3),
        ("fista[warm_start=wanda]", "2:4", 3)]
    assert pq.parse_seeded_rows("fista[warm_start=wanda]@2:4", methods, patterns) == {("fista[warm_start=wanda]", "2:4")}
    with pytest.raises(ValueError, match="names no row"):
        pq.parse_seeded_rows("fista@70%", methods, patterns)
    with pytest.raises(ValueError, match="must be METHOD@PATTERN"):
        pq.parse_seeded_rows("sparsegpt", methods, patterns)
    with pytest.raises(ValueError, match="rows are ';'-separated"):
        pq.parse_seeded_rows("sparsegpt@50%,wanda@50%", methods, patterns)


def test_bad_rows_are_one_line_errors(capsys):
    """A bad --seeded-rows (or --methods, --seeds, --patterns) stops before any work with one line."""
    assert pq.main(["--patterns", "50%", "--methods", "sparsegpt", "--seeded-rows", "sparsegpt@50%,fista@50%"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prune_quality.py: error: --seeded-rows entry") and "\n" not in err
    assert pq.main(["--patterns", "50", "--methods", "sparsegpt"]) == 2
    assert "pattern" in capsys.readouterr().err


def test_spread_and_bad_seeds_and_patterns():
    assert pq.spread([1.0, 2.0, 6.0]) == {"mean": 3.0, "std": pytest.approx(2.6457513), "min": 1.0, "max": 6.0, "n": 3}
    assert pq.spread([4.0])["std"] is None
    assert pq.parse_seeds("0, 2,1") == [0, 2, 1]
    for bad in ("", "0,0", "a", "-1"):
        with pytest.raises(ValueError, match="--seeds"):
            pq.parse_seeds(bad)
    assert pq.pattern_args("70%") == {"pattern": "unstructured", "sparsity": 0.7}
    assert pq.pattern_args("2:4") == {"pattern": "2:4"}
    for bad in ("50", "0%", "100%", "4:2", "x:y"):
        with pytest.raises(ValueError, match="pattern"):
            pq.pattern_args(bad)


def test_methods_restricted_to_patterns():
    """``SPEC@P1,P2`` in --methods runs that method at those patterns only."""
    patterns = ["50%", "2:4", "70%"]
    methods, only = pq.parse_methods("sparsegpt;fista[allocation=owl,max_deviation=0.1]@70%,50%", patterns)
    assert methods == ["sparsegpt", "fista[allocation=owl,max_deviation=0.1]"]
    assert only == {"fista[allocation=owl,max_deviation=0.1]": {"70%", "50%"}}
    tasks = pq.plan_tasks(methods, patterns, [0], set(), dense=False, only=only)
    assert [(t.method, t.pattern) for t in tasks] == [
        ("sparsegpt", "50%"), ("fista[allocation=owl,max_deviation=0.1]", "50%"), ("sparsegpt", "2:4"),
        ("sparsegpt", "70%"), ("fista[allocation=owl,max_deviation=0.1]", "70%")]
    with pytest.raises(ValueError, match="not in --patterns"):
        pq.parse_methods("fista@60%", patterns)


# ------------------------------------------------------------------ llm-compressor reference rows
lc = _load("llmcompressor_rows")


def test_llmcompressor_rows_map_patterns_and_refuse_in_one_line(monkeypatch):
    """Its pattern arguments, and a row that cannot run here refused before any work."""
    from fistaopt.study.specs import Spec

    assert lc.mask_structure(pq.pattern_args("70%")) == (0.7, "0:0")
    assert lc.mask_structure(pq.pattern_args("2:4")) == (0.5, "2:4")
    assert lc.is_external("llmcompressor-wanda") and not lc.is_external("wanda")
    rows = [(Spec.parse("sparsegpt"), pq.pattern_args("50%")), (Spec.parse("fista"), pq.pattern_args("2:4"))]
    lc.check(rows)  # no llm-compressor row: nothing to import
    with pytest.raises(ValueError, match="rows are llmcompressor-sparsegpt, llmcompressor-wanda"):
        lc.check([(Spec.parse("llmcompressor-magnitude"), pq.pattern_args("50%"))])
    monkeypatch.setattr(lc, "installed", lambda: False)
    with pytest.raises(ValueError, match="'llmcompressor-wanda' needs llmcompressor in this environment"):
        lc.check([*rows, (Spec.parse("llmcompressor-wanda"), pq.pattern_args("50%"))])


def test_an_llmcompressor_row_without_it_stops_the_command_in_one_line(capsys, monkeypatch):
    monkeypatch.setattr(lc, "installed", lambda: False)
    monkeypatch.setitem(sys.modules, "llmcompressor_rows", lc)  # what prune_quality's sibling() imports
    assert pq.main(["--patterns", "50%", "--methods", "sparsegpt;llmcompressor-sparsegpt"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prune_quality.py: error: method 'llmcompressor-sparsegpt' needs llmcompressor") and "\n" not in err
    assert pq.main(["--patterns", "50%", "--methods", "llmcompressor-wanda", "--blocks", "0-1"]) == 2


def test_a_failed_row_is_recorded_and_the_others_kept(capsys, monkeypatch, tmp_path):
    """A row that raises becomes an ``error`` entry under ``failed``; the run's other rows, its
    JSON and its tables are written, and the command exits 1 naming the row."""
    task = pq.Task("fista", "50%", 0)

    def raises(t):
        raise RuntimeError("solver\nblew up")

    monkeypatch.setattr(pq, "prune_and_score", raises)
    failed = pq.run_task(task)
    assert failed == {"method": "fista", "pattern": "50%", "seed": 0, "error": "RuntimeError: solver blew up",
                      "pid": failed["pid"]}
    ok = run("sparsegpt", "50%", 0, 58.5, 35.7, 240.0)
    assert [r["method"] for r in pq.group_rows([ok, failed])] == ["sparsegpt"]

    import fistaopt.llm

    monkeypatch.setattr(fistaopt.llm, "load_model", lambda name: (object(), object()))
    monkeypatch.setattr(pq, "prepare", lambda args, tok, seeds: {
        "bos_id": None, "texts": {"wikitext2": pq.torch.zeros(4), "heldout": pq.torch.zeros(2)}})
    monkeypatch.setattr(pq, "run_tasks", lambda tasks, setup, jobs, model: iter([ok, failed]))
    out = tmp_path / "r.json"
    assert pq.main(["--patterns", "50%", "--methods", "sparsegpt;fista", "--seeds", "0", "--skip-dense",
                    "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "prune_quality.py: row fista at 50%, seed 0 failed: RuntimeError: solver blew up" in err
    result = json.loads(out.read_text())
    assert [r["method"] for r in result["rows"]] == ["sparsegpt"] and result["failed"] == [failed]
    assert "| sparsegpt | **58.50** |" in out.with_suffix(".md").read_text()


def test_out_never_overwrites_a_markdown_file_it_did_not_write(tmp_path, capsys):
    """The tables go next to --out with .md: a file there that is not such tables stops the
    command before any work, untouched; an --out ending in .md (the JSON and tables at one path) too."""
    notes = tmp_path / "r.md"
    notes.write_text("# my notes\n")
    for out in (tmp_path / "r.json", tmp_path / "r.md"):
        with pytest.raises(SystemExit):
            pq.parse_args(["--out", str(out)])
        assert "--out" in capsys.readouterr().err
    assert notes.read_text() == "# my notes\n"
    notes.write_text(qt.render(fixture()))  # tables of an earlier run are rewritten
    assert qt.render(fixture()).startswith(pq.TABLE_START)
    assert pq.parse_args(["--out", str(tmp_path / "r.json")]).out == str(tmp_path / "r.json")


def test_device_is_checked_before_any_work(capsys, monkeypatch):
    """--device names a torch device this machine has: a typo or a missing GPU is one line at
    parse time; llm-compressor rows (CPU only) refuse a device."""
    assert pq.parse_args([]).device == "cpu"
    with pytest.raises(SystemExit):
        pq.parse_args(["--device", "gpu0"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith("error: --device gpu0: Invalid device string: 'gpu0'")
    if not pq.torch.cuda.is_available():
        with pytest.raises(SystemExit):
            pq.parse_args(["--device", "cuda"])
        assert "--device cuda: not available on this machine" in capsys.readouterr().err
    monkeypatch.setattr(pq, "_device_available", lambda device: True)
    assert pq.parse_args(["--device", "cuda"]).device == "cuda"
    monkeypatch.setattr(lc, "installed", lambda: True)
    monkeypatch.setitem(sys.modules, "llmcompressor_rows", lc)
    assert pq.main(["--patterns", "50%", "--methods", "llmcompressor-wanda", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "prune_quality.py: error: --device does not apply to llm-compressor rows: they run on the CPU"
