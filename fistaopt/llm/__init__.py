"""Everything that knows about transformers models: blocks, capture, the prune loop, baselines.

    from fistaopt import llm
    model, tok = llm.load_model()                       # default: SmolLM2-135M-Instruct
    calib = llm.calibration_tokens(tok, nsamples=64, seqlen=512)
    report = llm.prune(model, calib, sparsity=0.5, method="wanda")   # or llm.prune(model, calib, PruneConfig(...))
    llm.perplexity(model, llm.evaluation_tokens(tok), seqlen=512)
    llm.prune_from_pretrained("big-model/", calib, "out/", sparsity=0.5)   # one block in memory at a time
"""

from fistaopt.llm.baselines import magnitude, sparsegpt, wanda
from fistaopt.llm.data import calibration_tokens, evaluation_tokens
from fistaopt.llm.evaluate import PerplexityResult, perplexity
from fistaopt.llm.loading import load_model, save_pruned
from fistaopt.llm.low_memory import prune_from_pretrained
from fistaopt.llm.model import Operator, OperatorGroup, find_blocks, model_operators
from fistaopt.llm.config import PruneConfig
from fistaopt.llm.prune import prune
from fistaopt.llm.report import OperatorRecord, PruneReport
from fistaopt.llm.streamed_eval import perplexity_from_pretrained

__all__ = [
    "prune", "prune_from_pretrained", "PruneConfig", "PruneReport", "OperatorRecord",
    "magnitude", "wanda", "sparsegpt",
    "calibration_tokens", "evaluation_tokens",
    "perplexity", "perplexity_from_pretrained", "PerplexityResult",
    "load_model", "save_pruned",
    "Operator", "OperatorGroup", "find_blocks", "model_operators",
]
