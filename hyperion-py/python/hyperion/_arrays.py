"""Tensors from Hyperion's memory to numpy arrays and torch tensors.

A tensor reaches Python as a ``TensorBuffer`` that exports its bytes through
numpy's array interface; ``numpy.asarray`` turns it into an array over the
layer's memory, no copy, whose ``base`` keeps the layer alive.

numpy has no bfloat16 or 8-bit float types: those tensors come as their raw
bits (``uint16`` for BF16, ``uint8`` for the F8 types) in the tensor's shape.
Packed sub-byte floats (F4, F6) and GGML block-quantized types (Q4_K …) come
as ``uint8`` bytes with the innermost dimension counted in bytes, as gguf-py
gives them. ``TensorDict.dtypes`` and ``Layer.dtypes`` name each tensor's
real type. With ``framework="pt"`` every type torch has is given as that type
(``torch.bfloat16``, ``torch.float8_e4m3fn`` …) over the same memory.
"""

from __future__ import annotations

import warnings

import numpy as np


def to_numpy(buffer):
    """The tensor as a numpy array over the layer's memory."""
    return np.asarray(buffer)


_TORCH_TYPES = None


def _torch_types():
    global _TORCH_TYPES
    if _TORCH_TYPES is None:
        import torch

        names = {
            "F64": "float64",
            "F32": "float32",
            "F16": "float16",
            "BF16": "bfloat16",
            "I64": "int64",
            "I32": "int32",
            "I16": "int16",
            "I8": "int8",
            "U8": "uint8",
            "U16": "uint16",
            "U32": "uint32",
            "U64": "uint64",
            "BOOL": "bool",
            "C64": "complex64",
            "F8_E4M3": "float8_e4m3fn",
            "F8_E4M3FNUZ": "float8_e4m3fnuz",
            "F8_E5M2": "float8_e5m2",
            "F8_E5M2FNUZ": "float8_e5m2fnuz",
            "F8_E8M0": "float8_e8m0fnu",
        }
        _TORCH_TYPES = {k: getattr(torch, v) for k, v in names.items() if hasattr(torch, v)}
    return _TORCH_TYPES


def to_torch(buffer):
    """The tensor as a torch tensor over the layer's memory (a copy only
    when its bytes are not aligned for its type, which torch requires)."""
    import torch

    array = np.asarray(buffer)
    if not array.flags.aligned:
        array = array.copy()
    if array.flags.writeable:
        tensor = torch.from_numpy(array)
    else:
        # Read-only memory shared with the model's cache: torch warns that it
        # cannot mark a tensor read-only. Writing to such a tensor is an error.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            tensor = torch.from_numpy(array)
    dtype = _torch_types().get(buffer.dtype)
    if dtype is not None and dtype != tensor.dtype:
        tensor = tensor.view(dtype)
    return tensor


def converter(framework: str):
    """The function that turns a ``TensorBuffer`` into ``framework``'s array."""
    if framework in ("np", "numpy"):
        return to_numpy
    if framework in ("pt", "torch"):
        import torch  # noqa: F401  (fails here, not at the first tensor)

        return to_torch
    from ._errors import InvalidArgumentError

    raise InvalidArgumentError(f'framework={framework!r}: expected "np" or "pt"')
