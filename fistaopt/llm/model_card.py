"""A Hugging Face model card (``README.md``) and the report figure for a pruned model's folder.

    from fistaopt.llm.model_card import write_model_card, save_report_figure
    save_report_figure(out, report.to_dict())           # prune-report.png
    write_model_card(out, report.to_dict(), source=model_path)

The card is built from the prune report as a plain dict (``settings``, ``totals``,
``records``, and the run's context under ``extra``, or at the top level):

- YAML front matter: ``base_model`` (when it is a Hugging Face id), ``license``
  (inherited from the base model when known), ``library_name``, ``pipeline_tag``, and
  ``tags`` including ``pruned``, ``sparsity``, ``fistaopt``;
- the method and every setting, the achieved sparsity per operator type, perplexity
  and zero-shot scores before and after (``perplexity_before/after``,
  ``zero_shot_before/after``: the dicts of :func:`fistaopt.llm.evaluate.perplexity`'s
  ``to_dict`` and :func:`fistaopt.llm.zeroshot.zero_shot`), the calibration data, how
  to load the model, the versions and command line of the run.

The licence is read from the base model: ``general.license`` of a GGUF file, or the
``license:`` line of a local folder's own ``README.md``.  When neither says, the card
says that the licence is unknown instead of guessing one.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping

from fistaopt import _io

CARD_NAME = "README.md"
FIGURE_NAME = "prune-report.png"  # the name `fistaopt plot` gives it
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ---------------------------------------------------------------------- the base model
def license_of(source: str | os.PathLike[str] | None) -> str | None:
    """The licence a local base model declares, or None.

    ``source`` is a GGUF file (its ``general.license`` field) or a model folder (the
    ``license:`` key of the front matter of its ``README.md``); anything else gives None.
    """
    if source is None:
        return None
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        from gguf import GGUFReader

        field = GGUFReader(path).fields.get("general.license")
        value = field.contents() if field is not None else None
        return str(value) if value else None
    card = path / CARD_NAME
    if path.is_dir() and card.is_file():
        return _front_matter(card.read_text(encoding="utf-8", errors="replace")).get("license")
    return None


def _front_matter(text: str) -> dict[str, str]:
    """The scalar ``key: value`` lines of a model card's YAML front matter (lists are skipped)."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    out = {}
    for line in lines[1:]:
        if line.strip() == "---":
            break
        key, sep, value = line.partition(":")
        if sep and not line.startswith((" ", "-")) and value.strip():
            out[key.strip()] = value.strip().strip("'\"")
    return out


def hub_id(source: str | os.PathLike[str] | None) -> str | None:
    """``source`` when it is a Hugging Face id (``org/name``, not a local path), else None."""
    if source is None or Path(source).expanduser().exists():
        return None
    return str(source) if _HUB_ID.match(str(source)) else None


# ---------------------------------------------------------------------- report fields
def _context(report: Mapping[str, Any], key: str) -> Any:
    """``report["extra"][key]``, or ``report[key]`` (the report keeps run context in either)."""
    extra = report.get("extra")
    if isinstance(extra, Mapping) and extra.get(key) is not None:
        return extra[key]
    return report.get(key)


def sparsity_by_operator(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Achieved sparsity per operator type (``self_attn.q_proj``, ``mlp.down_proj``, ...).

    Returns one row per operator name, in first-seen order: ``operator``, ``layers``
    (how many blocks), ``params``, ``sparsity`` (zeros / params over those layers),
    ``mean_rel_error`` (None when no layer has one).
    """
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for record in report.get("records") or []:
        if isinstance(record, Mapping) and record.get("name") is not None and record.get("shape"):
            groups[str(record["name"])].append(record)
    rows = []
    for name, records in groups.items():
        sizes = [int(r["shape"][0]) * int(r["shape"][1]) for r in records]
        zeros = sum(float(r.get("sparsity", 0.0)) * n for r, n in zip(records, sizes))
        errors = [float(r["rel_error"]) for r in records if r.get("rel_error") is not None]
        rows.append({
            "operator": name, "layers": len(records), "params": sum(sizes),
            "sparsity": zeros / sum(sizes) if sum(sizes) else 0.0,
            "mean_rel_error": sum(errors) / len(errors) if errors else None,
        })
    return rows


# ---------------------------------------------------------------------- card sections
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list, tuple)):
        return "`" + json.dumps(value, default=str) + "`"
    return "`None`" if value is None else str(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _front(base_model: str | None, license: str | None, settings: Mapping[str, Any]) -> list[str]:
    pattern = str(settings.get("pattern", "unstructured"))
    tags = ["pruned", "sparsity", "fistaopt", f"{pattern}-sparsity" if ":" in pattern else "unstructured-sparsity"]
    lines = ["---"]
    if base_model:
        lines.append(f"base_model: {json.dumps(base_model)}")
    if license:
        lines.append(f"license: {json.dumps(license)}")
    lines += ["library_name: transformers", "pipeline_tag: text-generation", "tags:"]
    lines += [f"- {json.dumps(t)}" for t in tags]
    return lines + ["---", ""]


def _summary(report: Mapping[str, Any], source: str | None, base_model: str | None) -> list[str]:
    settings, totals = report.get("settings", {}), report.get("totals", {})
    base = base_model or source or "the base model"
    title = base if base_model or source is None or not Path(source).expanduser().exists() else Path(source).name
    pattern = settings.get("pattern", "unstructured")
    target = f"{pattern} sparsity" if ":" in str(pattern) else f"{_fmt(settings.get('sparsity'))} {pattern} sparsity"
    lines = [
        f"# {title} pruned with fistaopt ({settings.get('method', '?')}, {target})", "",
        f"`{base}` with the linear layers of its decoder blocks pruned by "
        "fistaopt (layer-wise ℓ1 reconstruction, FISTAPruner).",
    ]
    if totals.get("sparsity") is not None:
        lines.append(
            f"Achieved sparsity {totals['sparsity']:.4f} over {totals.get('n_params', '?')} weights in "
            f"{totals.get('n_operators', '?')} operators of {totals.get('n_blocks', '?')} blocks; embeddings, "
            f"norms and the LM head are dense."
        )
    lines += [
        "", "The weights are stored dense, zeros included: the files are as large as the base model's and "
        "dense kernels run no faster. A 2:4 model can run on 2:4 sparse kernels (NVIDIA Ampere or newer); "
        "see fistaopt's docs/deploy.md.", "",
    ]
    return lines


def _method_section(report: Mapping[str, Any]) -> list[str]:
    settings = report.get("settings", {})
    rows = [[f"`{k}`", _fmt(v)] for k, v in settings.items()]
    return ["## Method and settings", ""] + _table(["setting", "value"], rows) + [""]


def _sparsity_section(report: Mapping[str, Any]) -> list[str]:
    rows = [
        [f"`{r['operator']}`", str(r["layers"]), str(r["params"]), f"{r['sparsity']:.4f}", _fmt(r["mean_rel_error"])]
        for r in sparsity_by_operator(report)
    ]
    if not rows:
        return []
    header = ["operator", "layers", "weights", "sparsity", "mean rel. reconstruction error"]
    return ["## Achieved sparsity per operator type", ""] + _table(header, rows) + [""]


def _evaluation_section(report: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    before, after = _context(report, "perplexity_before"), _context(report, "perplexity_after")
    if before or after:
        rows = []
        for label, ppl in (("before pruning", before), ("after pruning", after)):
            if isinstance(ppl, Mapping):
                rows.append([label, f"{float(ppl['ppl']):.3f}", str(ppl.get("n_tokens", "?")), str(ppl.get("seqlen", "?"))])
        evaluation = _context(report, "evaluation")
        text = evaluation.get("text") if isinstance(evaluation, Mapping) else None
        lines += ["### Perplexity", ""] + _table(["model", "perplexity", "tokens", "window"], rows)
        lines += (["", f"Evaluation text: {text}."] if text else []) + [""]
    zs_before, zs_after = _context(report, "zero_shot_before"), _context(report, "zero_shot_after")
    if zs_before or zs_after:
        lines += ["### Zero-shot (lm-evaluation-harness)", ""] + _zero_shot_table(zs_before, zs_after) + [""]
    return (["## Evaluation", ""] + lines) if lines else []


def _zero_shot_table(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> list[str]:
    def cell(scores: Mapping[str, Any] | None, task: str, metric: str) -> str:
        row = (scores or {}).get("tasks", {}).get(task, {})
        if row.get(metric) is None:
            return "–"
        err = row.get(f"{metric}_stderr")
        return f"{row[metric]:.4f}" + (f" ± {err:.4f}" if err is not None else "")

    tasks = list(dict.fromkeys([*(before or {}).get("tasks", {}), *(after or {}).get("tasks", {})]))
    rows = []
    for task in tasks:
        for metric in ("acc", "acc_norm"):
            if cell(before, task, metric) != "–" or cell(after, task, metric) != "–":
                rows.append([task, metric, cell(before, task, metric), cell(after, task, metric)])
    versions = {s.get("lm_eval_version") for s in (before, after) if s}
    note = f"Zero-shot, lm-eval {', '.join(sorted(map(str, versions)))}; ± is the standard error."
    return _table(["task", "metric", "before", "after"], rows) + ["", note]


def _calibration_section(report: Mapping[str, Any]) -> list[str]:
    settings, calibration = report.get("settings", {}), _context(report, "calibration")
    info = dict(calibration) if isinstance(calibration, Mapping) else {}
    for key in ("nsamples", "seqlen"):
        info.setdefault(key, settings.get(key))
    rows = [[k, _fmt(v)] for k, v in info.items() if v is not None]
    return ["## Calibration data", ""] + _table(["", ""], rows) + [""] if rows else []


def _usage_section(load_from: str, figure: bool) -> list[str]:
    lines = [
        "## How to load", "", "A normal Hugging Face folder (safetensors); no fistaopt needed to use it:", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'model = AutoModelForCausalLM.from_pretrained("{load_from}")  # or its hub id once uploaded',
        f'tokenizer = AutoTokenizer.from_pretrained("{load_from}")', "```", "",
        "Fine-tuning or quantizing it keeps the zeros only if the masks are kept: "
        "see fistaopt's docs/deploy.md.", "",
    ]
    if figure:
        lines += ["## Prune report", "", f"![relative reconstruction error and λ per operator]({FIGURE_NAME})", ""]
    return lines


def _provenance_section(report: Mapping[str, Any], license: str | None) -> list[str]:
    lines = []
    versions, argv = _context(report, "versions"), _context(report, "argv")
    if isinstance(versions, Mapping):
        lines += ["## Reproducibility", "", "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + "."]
        if argv:
            lines += ["", "```", "fistaopt " + " ".join(map(str, argv)), "```"]
        lines.append("")
    said = f"`{license}`, inherited from the base model." if license else (
        "unknown: the base model declares none that fistaopt could read; check its licence before redistributing."
    )
    return lines + ["## Licence", "", f"Licence: {said}", ""]


# ---------------------------------------------------------------------- entry points
def model_card(
    report: Mapping[str, Any],
    *,
    load_from: str | os.PathLike[str] = ".",
    source: str | os.PathLike[str] | None = None,
    base_model: str | None = None,
    license: str | None = None,
    figure: bool = False,
) -> str:
    """The model card text (see the module docstring for ``report`` and the inference rules).

    ``load_from`` is the path the "How to load" snippet shows; ``figure`` links
    :data:`FIGURE_NAME`; the other arguments are those of :func:`write_model_card`.
    """
    if not isinstance(report, Mapping):
        raise TypeError(f"report must be a dict (PruneReport.to_dict()), got {type(report).__name__}")
    source = source if source is not None else _context(report, "model")
    source_text = None if source is None else str(source)
    base_model = base_model or hub_id(source_text)
    license = license or license_of(source_text)
    settings = report.get("settings")
    settings = settings if isinstance(settings, Mapping) else {}
    parts = [
        _front(base_model, license, settings), _summary(report, source_text, base_model), _method_section(report),
        _sparsity_section(report), _evaluation_section(report), _calibration_section(report),
        _usage_section(str(load_from), figure), _provenance_section(report, license),
    ]
    return "\n".join(line for part in parts for line in part)


def save_report_figure(folder: str | os.PathLike[str], report: Mapping[str, Any]) -> Path | None:
    """Save the prune-report figure (as ``fistaopt plot``) as ``folder/prune-report.png``.

    Returns the path, or None when the report has no per-operator records to draw.
    """
    from fistaopt.plots import operator_records, plot_prune_report, save_figure

    if not operator_records(report):
        return None
    return save_figure(plot_prune_report(report), Path(folder) / FIGURE_NAME)


def write_model_card(
    folder: str | os.PathLike[str],
    report: Mapping[str, Any],
    *,
    source: str | os.PathLike[str] | None = None,
    base_model: str | None = None,
    license: str | None = None,
    load_from: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``folder/README.md`` (atomically) for the pruned model saved in ``folder``.

    Args:
        folder: the saved model's folder (it must exist).
        report: the prune report as a plain dict (``PruneReport.to_dict()``).
        source: where the base model was loaded from (folder, GGUF file or hub id);
            default: the report's ``model`` entry.  Used for the licence and the title.
        base_model: the base model's Hugging Face id for the front matter (default:
            ``source`` when it is one).
        license: overrides the licence read from ``source``.
        load_from: the path the card's loading snippet shows (default: ``folder``; give
            the final path when ``folder`` is a temporary folder published later).

    The card links ``prune-report.png`` when that file is in ``folder``
    (:func:`save_report_figure`).  Returns the card's path.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"model folder {str(folder)!r} does not exist")
    text = model_card(report, load_from=folder if load_from is None else load_from, source=source,
                      base_model=base_model, license=license, figure=(folder / FIGURE_NAME).is_file())
    return _io.write_text(folder / CARD_NAME, text)
