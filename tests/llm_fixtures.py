"""Tiny random causal LMs and a character-level tokenizer for the fistaopt.llm tests."""

from __future__ import annotations

import string
from pathlib import Path

import torch

VOCAB = 128
ARCHS = ("llama", "opt", "gpt2", "gemma3", "qwen2")


def tiny_config(arch: str):
    import transformers as tf

    common = dict(vocab_size=VOCAB, num_hidden_layers=2, max_position_embeddings=128)
    if arch == "llama":  # GQA: 2 key/value heads for 4 query heads
        return tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, **common)
    if arch == "qwen2":
        return tf.Qwen2Config(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, **common)
    if arch == "mistral":
        return tf.MistralConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, **common)
    if arch == "gemma3":
        return tf.Gemma3TextConfig(
            hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
            sliding_window=8, **common,
        )
    if arch == "opt":
        return tf.OPTConfig(hidden_size=32, ffn_dim=64, num_attention_heads=4, word_embed_proj_dim=32, **common)
    if arch == "gpt2":
        return tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128, bos_token_id=0, eos_token_id=0)
    raise ValueError(arch)


def tiny_model(arch: str, seed: int = 0, scale: float = 1.0):
    """A tiny random model in eval mode; weights scaled up so activations are not ~0."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch), attn_implementation="eager")
    if scale != 1.0:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.ndim == 2:
                    p.mul_(scale)
    return model.eval()


def first_block(arch: str):
    """Block 0 of a tiny model, its operator groups, its calls and inputs (2 batches of 2 windows of 16 tokens)."""
    from fistaopt.llm import find_blocks
    from fistaopt.llm.capture import capture_block_inputs
    from fistaopt.llm.model import block_operators

    model = tiny_model(arch)
    inputs = capture_block_inputs(model, calib(nsamples=4, seqlen=16).split(2))
    block = find_blocks(model)[1][0]
    calls = [c[0] for c in inputs.calls]
    groups = block_operators(block, (inputs.hidden[0], *calls[0].args), calls[0].kwargs)
    return block, groups, calls, inputs.hidden


def calib(nsamples: int = 4, seqlen: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (nsamples, seqlen), generator=g)


CHARS = string.ascii_letters + string.digits + " .,;:!?'\"-()\n"


class Interrupt(Exception):
    """Raised by :func:`stop_after_block` to stop a prune as a crash would."""


def stop_after_block(index: int):
    """A ``prune`` callback that raises :class:`Interrupt` once block ``index`` is committed."""
    def callback(i, report):
        if i == index:
            raise Interrupt
    return callback


def char_tokenizer():
    """A character-level fast tokenizer with < 128 tokens (ids fit the tiny models)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0}
    for c in CHARS:
        vocab.setdefault(c, len(vocab))
    assert len(vocab) <= VOCAB
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


TEXT = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs!\n"
    "How vexingly quick daft zebras jump; sphinx of black quartz, judge my vow.\n"
) * 20


def write_text(path: Path, text: str = TEXT) -> Path:
    path.write_text(text)
    return path


def bos_char_tokenizer():
    """:func:`char_tokenizer` that, like Llama's, starts every encoding with a BOS token."""
    from tokenizers import processors

    tok = char_tokenizer()
    backend = tok.backend_tokenizer
    bos_id = backend.get_vocab_size()
    backend.add_special_tokens(["<s>"])
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos_id)])
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", bos_token="<s>")


def hide_lm_eval(monkeypatch) -> None:
    """Make ``import lm_eval`` fail as it does without the ``eval`` extra (for the rest of a test)."""
    import builtins
    import sys

    real_import = builtins.__import__

    def no_lm_eval(name, *args, **kwargs):
        if name == "lm_eval" or name.startswith("lm_eval."):
            raise ModuleNotFoundError("No module named 'lm_eval'", name="lm_eval")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lm_eval)
    monkeypatch.delitem(sys.modules, "lm_eval", raising=False)
