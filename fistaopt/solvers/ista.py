"""ISTA: proximal gradient without momentum — the reference first-order method.

``W_k+1 = S_{λω/L}(W_k − (W_k H − G)/L) ⊙ mask``; O(1/k) on the objective, linear only
when ``H`` is well conditioned.  It is our baseline: on LLM statistics it often does
not converge in a practical budget, and then it says so (``converged=False``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fistaopt.solvers.fista import FISTA


@dataclass
class ISTA(FISTA):
    """Proximal gradient with fixed step ``1/L`` (no momentum, no restart).

    ``precondition`` defaults to False: plain ISTA is the textbook reference.
    """

    name: ClassVar[str] = "ista"
    momentum: ClassVar[bool] = False

    restart: bool = False
    precondition: bool = False
