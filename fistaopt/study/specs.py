"""One syntax for a method or solver with options: ``NAME`` or ``NAME[key=value,...]``.

    Spec.parse("fista[restart=False,precondition=False]")   # studies: a solver
    Spec.parse("fista[warm_start=sparsegpt]")                 # benchmarks: a prune method
    split_specs("fista,admm[rho=1,alpha=1.5]")                # commas outside brackets

Values are Python literals where they parse (``1``, ``1.5``, ``True``, ``None``,
``(0.9, 0.6)``), otherwise strings.  The whole text is the spec's label.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

_SPEC = re.compile(r"([A-Za-z0-9_\-]+)(?:\[(.*)\])?")


def literal(text: str) -> Any:
    """``text`` as a Python literal (``true``/``false``/``none`` in any case), else the string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _split_top_level(text: str, opening: str, closing: str) -> list[str]:
    """Split ``text`` on the commas outside any pair of ``opening``/``closing`` characters."""
    out, depth, current = [], 0, ""
    for ch in text:
        depth += (ch in opening) - (ch in closing)
        if ch == "," and depth == 0:
            out.append(current)
            current = ""
        else:
            current += ch
    out.append(current)
    return out


def split_specs(text: str) -> list[str]:
    """Split ``"fista,admm[rho=1,alpha=1.5]"`` on the commas outside brackets."""
    return [s.strip() for s in _split_top_level(text, "[", "]") if s.strip()]


@dataclass(frozen=True)
class Spec:
    """A name with options: ``label`` (the text), ``name`` and ``options``."""

    label: str
    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: "str | Spec") -> "Spec":
        """Parse ``NAME`` or ``NAME[key=value,...]`` (a :class:`Spec` passes through)."""
        if isinstance(spec, Spec):
            return spec
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError(f"a method must be a non-empty name, got {spec!r}")
        text = spec.strip()
        m = _SPEC.fullmatch(text)
        if not m:
            name, at, options = text.partition("@")
            hint = f" (e.g. {name}[{options}])" if at else ""
            raise ValueError(f"cannot parse {text!r}; use NAME or NAME[option=value,...]{hint}")
        options: dict[str, Any] = {}
        for item in filter(str.strip, _split_top_level(m.group(2) or "", "([", ")]")):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"option {item.strip()!r} in {text!r} must be option=value")
            options[key.strip()] = literal(value.strip())
        return cls(text, m.group(1), options)
