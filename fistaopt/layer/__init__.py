"""Prune one linear layer: :func:`prune_layer` (start → rounds (ℓ0-ADMM or ℓ1) → finish) and the masked refit.

    from fistaopt.layer import prune_layer
    result = prune_layer(problem, "2:4", warm_start=W_wanda)     # LayerResult
"""

from fistaopt.layer.options import LayerOptions, check_solver_options, split_options
from fistaopt.layer.prune import LayerResult, prune_layer
from fistaopt.layer.refit import Refit, masked_refit, refit, refit_mask

__all__ = ["LayerOptions", "LayerResult", "prune_layer", "refit", "Refit", "masked_refit", "refit_mask",
           "check_solver_options", "split_options"]
