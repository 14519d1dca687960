"""A causal LM whose decoder blocks stay in their safetensors shards until their turn comes.

:class:`ShardedModel` opens a Hugging Face folder (or a GGUF file, through its cached
safetensors conversion, :func:`fistaopt.llm.loading.convert_gguf`) without
materialising the model:

- the skeleton is built from the config under ``accelerate.init_empty_weights``: every
  parameter on the ``meta`` device (shapes only), buffers real (rotary tables);
- the non-block tensors (embeddings, final norm, ``lm_head``, ...) are read onto the
  CPU, and the model's tied weights are tied again (``tie_weights``);
- :meth:`ShardedModel.load` reads the tensors of one decoder block from the shards
  (``safetensors.safe_open``; the file of each tensor comes from the index json's
  ``weight_map``, or is the single ``model.safetensors``), and :meth:`ShardedModel.release`
  puts them back on ``meta``.

``resident_block_params()`` counts the block parameters that are materialised now (by
looking at every block), ``peak_resident_block_params`` the most seen after a load.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fistaopt.llm.model import find_blocks

logger = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
SUPPORTED = (f"a Hugging Face folder with {SINGLE_FILE} or {INDEX_FILE} and its shards, "
             f"or a GGUF file (converted once to such a folder)")


def safetensors_folder(path_or_name: str | os.PathLike[str] | None, *, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The local safetensors folder of a model source (``None``: the default GGUF).

    A ``.gguf`` file is converted once (cached); a hub id must be in the local cache.
    Raises ``ValueError`` (one line) for a folder without safetensors weights.
    """
    from fistaopt.llm.loading import convert_gguf, default_model_path, resolve_model_source

    source = resolve_model_source(default_model_path() if path_or_name is None else path_or_name)
    if isinstance(source, str):  # a hub id in the local Hugging Face cache
        from huggingface_hub import snapshot_download

        source = Path(snapshot_download(source, local_files_only=True))
    if source.suffix.lower() == ".gguf":
        source = convert_gguf(source, cache_dir=cache_dir)
    check_safetensors(source)
    return source


def check_safetensors(folder: Path) -> None:
    """Raise ``ValueError`` (one line) unless ``folder`` holds safetensors weights (a GGUF file passes)."""
    if folder.suffix.lower() == ".gguf" or (folder / INDEX_FILE).is_file() or (folder / SINGLE_FILE).is_file():
        return
    found = sorted(p.name for p in folder.glob("*.bin")) or ["no weight files"]
    raise ValueError(f"low-memory mode needs safetensors weights; {folder} has {', '.join(found[:3])} "
                     f"(supported: {SUPPORTED})")


def weight_map(folder: Path) -> dict[str, str]:
    """Tensor name -> shard file name of a safetensors folder."""
    index = folder / INDEX_FILE
    if index.is_file():
        return dict(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
    from safetensors import safe_open

    with safe_open(str(folder / SINGLE_FILE), framework="pt", device="cpu") as f:
        return {name: SINGLE_FILE for name in f.keys()}


#: safetensors' names of the floating dtypes fistaopt reads and writes.
SAFETENSORS_FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def stored_dtype(folder: Path) -> torch.dtype:
    """The floating dtype of a safetensors folder's weights: the one most of its elements are stored in.

    Read from the shards' headers (no tensor is loaded).  Raises ``ValueError`` (one line)
    for a dtype outside float64/32, bfloat16, float16 (e.g. float8).
    """
    from safetensors import safe_open

    files = weight_map(folder)
    counts: dict[str, int] = {}
    for file in sorted(set(files.values())):
        with safe_open(str(folder / file), framework="pt", device="cpu") as f:
            for name in (n for n in f.keys() if files.get(n) == file):
                part = f.get_slice(name)
                kind = part.get_dtype()
                if kind.startswith(("F", "BF")):
                    counts[kind] = counts.get(kind, 0) + math.prod(part.get_shape())
    if not counts:
        raise ValueError(f"{folder}: the safetensors weights hold no floating-point tensor")
    kind = max(sorted(counts), key=counts.__getitem__)
    if kind not in SAFETENSORS_FLOAT_DTYPES:
        raise ValueError(f"{folder}: weights stored as {kind} cannot be written back as such; "
                         f"choose a save dtype (float32, bfloat16 or float16)")
    return SAFETENSORS_FLOAT_DTYPES[kind]


def source_dtype(source: str | os.PathLike[str] | None) -> torch.dtype:
    """The floating dtype a model source stores its weights in (what ``save_dtype="source"`` writes).

    A safetensors folder: :func:`stored_dtype`; a GGUF file (``None``: the default one):
    float32, the dtype of its conversion (not run here); a folder with other weight files:
    its config's ``dtype``, float32 when it names none.
    """
    if source is None or str(source).lower().endswith(".gguf"):
        return torch.float32
    try:
        folder = safetensors_folder(source)
    except ValueError:  # no safetensors weights (check_safetensors)
        folder = None
    if folder is not None:
        return stored_dtype(folder)
    from transformers import AutoConfig

    named = getattr(AutoConfig.from_pretrained(source), "dtype", None)
    if isinstance(named, str):
        named = getattr(torch, named, None)
    return named if named in SAFETENSORS_FLOAT_DTYPES.values() else torch.float32


def set_tensor(root: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace parameter or buffer ``name`` of ``root`` by ``value`` (a parameter stays a parameter)."""
    module_name, _, attr = name.rpartition(".")
    module = root.get_submodule(module_name)
    if attr in module._parameters:
        old = module._parameters[attr]
        module._parameters[attr] = nn.Parameter(value, requires_grad=bool(old is not None and old.requires_grad))
    elif attr in module._buffers:
        module._buffers[attr] = value
    else:
        raise KeyError(f"{name} is neither a parameter nor a buffer of the model")


def build_skeleton(folder: Path, dtype: torch.dtype) -> nn.Module:
    """The model of ``folder``'s config with every parameter on ``meta`` (buffers real), in eval mode."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


class ShardedModel:
    """A model skeleton with its non-block weights, reading decoder blocks from shards on demand."""

    def __init__(self, folder: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32) -> None:
        self.folder = Path(folder)
        self.dtype = dtype
        self.files = weight_map(self.folder)
        self.model = build_skeleton(self.folder, dtype)
        self.blocks_name, self.blocks = find_blocks(self.model)
        self.peak_resident_block_params = 0
        self._load_non_block()

    def block_prefix(self, index: int) -> str:
        return f"{self.blocks_name}.{index}."

    def block_names(self, index: int) -> list[str]:
        """Qualified names of block ``index``'s tensors in the checkpoint (parameters and persistent buffers)."""
        return [self.block_prefix(index) + k for k in self.blocks[index].state_dict()]

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The tensors ``names`` from the shards, in ``dtype`` (floating ones), on the CPU."""
        from safetensors import safe_open

        missing = [n for n in names if n not in self.files]
        if missing:
            raise ValueError(f"{self.folder}: tensor {missing[0]} is not in the safetensors weights "
                             f"({len(missing)} missing; names must be those save_pretrained writes)")
        out: dict[str, torch.Tensor] = {}
        for file in sorted({self.files[n] for n in names}):
            with safe_open(str(self.folder / file), framework="pt", device="cpu") as f:
                for n in (n for n in names if self.files[n] == file):
                    t = f.get_tensor(n)
                    out[n] = t.to(self.dtype) if t.is_floating_point() else t
        return out

    def read_block(self, index: int) -> dict[str, torch.Tensor]:
        """Block ``index``'s tensors from the shards, named relative to the block."""
        k = len(self.block_prefix(index))
        return {n[k:]: t for n, t in self.read(self.block_names(index)).items()}

    def load(self, index: int) -> None:
        """Materialise block ``index`` on the CPU from the shards."""
        for name, t in self.read_block(index).items():
            set_tensor(self.blocks[index], name, t)
        self.peak_resident_block_params = max(self.peak_resident_block_params, self.resident_block_params())

    def release(self, index: int) -> None:
        """Put block ``index``'s tensors back on ``meta`` (shapes kept, memory freed)."""
        block = self.blocks[index]
        for name, t in block.state_dict(keep_vars=True).items():
            set_tensor(block, name, torch.empty_like(t, device="meta"))

    def resident_block_params(self) -> int:
        """Number of block parameters (elements) materialised now, over all blocks."""
        return sum(p.numel() for p in self.blocks.parameters() if p.device.type != "meta")

    def non_block_state(self) -> dict[str, torch.Tensor]:
        """The model's tensors outside the blocks, each stored once (a tied weight under its first name)."""
        prefix, seen, out = self.blocks_name + ".", set(), {}
        for name, t in self.model.state_dict().items():
            if name.startswith(prefix) or t.data_ptr() in seen:
                continue
            seen.add(t.data_ptr())
            out[name] = t
        return out

    def _load_non_block(self) -> None:
        prefix = self.blocks_name + "."
        wanted = [n for n in self.model.state_dict() if not n.startswith(prefix)]
        for name, t in self.read([n for n in wanted if n in self.files]).items():
            set_tensor(self.model, name, t)
        self.model.tie_weights()
        left = [n for n, t in self.model.state_dict().items() if not n.startswith(prefix) and t.device.type == "meta"]
        if left:
            raise ValueError(f"{self.folder}: tensor {left[0]} is not in the safetensors weights and is not tied")
        logger.info("opened %s: %d blocks left in %d shard file(s)", self.folder, len(self.blocks),
                    len(set(self.files.values())))


__all__ = ["ShardedModel", "safetensors_folder", "check_safetensors", "weight_map", "stored_dtype",
           "source_dtype", "set_tensor", "build_skeleton", "SUPPORTED"]
