"""Inference at lower precision: weights cast to bfloat16 or float16, or Linear layers quantised to int8.

int8 uses torchao (the optional extra `quant`): its quantize_(model, Int8WeightOnlyConfig()) stores each
nn.Linear weight as int8 with one float scale per output row and dequantises inside the matmul. torchao is
PyTorch's maintained quantisation library; torch.ao.quantization.quantize_dynamic, the older eager-mode API,
is marked deprecated in torch 2.13 (its DEPRECATION_WARNING points to torchao). Weight-only rather than
dynamic activation quantisation (Int8DynamicActivationInt8WeightConfig): generation is one token at a time,
so the matmuls are matrix-vector products bound by reading the weights, and quantising a 1-row activation on
every call costs more than it saves: on this project's 2-core CPU (baby preset, one thread) weight-only
generated 126 tokens/s against float32's 86, the dynamic config 8.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gptcore.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

# torch is imported inside the functions: the CLI's parser reads PRECISIONS without loading torch.
PRECISIONS = ("float32", "bfloat16", "float16", "int8")
INSTALL_QUANT = "pip install 'gptcore-tune[quant]' (or: pip install torchao)"


def _torchao_quantize():
    """torchao's quantize_ and its int8 weight-only config; a UserError saying how to install it if missing."""
    # torchao logs a warning for each optional CUDA kernel library it cannot load, and torch one for an
    # enum torchao registers: noise on a CPU machine, not a problem. Errors still show.
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError:
        raise UserError(f"--precision int8 needs torchao, which is not installed: {INSTALL_QUANT}") from None
    return quantize_, Int8WeightOnlyConfig


def _probe(precision: str, device: torch.device) -> None:
    """Run the model's kinds of operations (matmul, LayerNorm, softmax, attention) at `precision` on `device`."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    x = torch.linspace(-1, 1, 32, device=device).view(2, 16)
    if precision == "int8":
        quantize_, config = _torchao_quantize()
        layer = nn.Linear(16, 8).to(device)
        quantize_(layer, config())
        y = layer(x)
    else:
        x = x.to(getattr(torch, precision))
        y = F.layer_norm(x @ x.T, (2,)).softmax(-1)
        q = x.view(1, 1, 2, 16)
        y = y.sum() + F.scaled_dot_product_attention(q, q, q, is_causal=True).sum()
    if not torch.isfinite(y.float()).all():
        raise RuntimeError("non-finite result")


def check_precision(precision: str, device: torch.device | str) -> None:
    """Refuse (UserError) a precision this device cannot run: found by trying a tiny operation in it."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision}: expected one of {', '.join(PRECISIONS)}")
    if precision == "float32":
        return
    import torch

    device = torch.device(device)
    try:
        _probe(precision, device)
    except (RuntimeError, NotImplementedError, TypeError, AssertionError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"--precision {precision}: not supported on this {device.type} device ({detail}); "
                        f"use float32") from None


def at_precision(model: nn.Module, precision: str, device: torch.device | str) -> nn.Module:
    """The model (changed in place) with its weights at `precision` on `device`; refused if the device can't."""
    import torch

    check_precision(precision, device)
    model = model.to(device)
    if precision == "int8":
        quantize_, config = _torchao_quantize()
        quantize_(model, config())  # every nn.Linear (the embeddings stay float32: lookups, not matmuls)
    else:
        model = model.to(getattr(torch, precision))
    return model.eval()


def _leaves(t: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors holding a (possibly quantised, wrapper-subclass) tensor's data."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if not is_traceable_wrapper_subclass(t):
        return [t]
    names, _ = t.__tensor_flatten__()
    return [leaf for name in names for leaf in _leaves(getattr(t, name))]


def weights_bytes(model: nn.Module) -> int:
    """Bytes the weights occupy as stored: the storages behind the state_dict, each counted once.

    A quantised weight counts its int8 data and its scales (the tensors it is made of), and a storage shared by
    two entries (tied weights) counts once.
    """
    seen: set[tuple[torch.device, int]] = set()
    total = 0
    for tensor in model.state_dict().values():
        for leaf in _leaves(tensor):
            storage = leaf.untyped_storage()
            key = (leaf.device, storage.data_ptr())
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
    return total
