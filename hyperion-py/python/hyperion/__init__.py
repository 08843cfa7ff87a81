"""Hyperion: model weights layer by layer, within a hard memory budget.

Two ways in:

``hyperion.load_file(path, framework="np")``
    Every tensor of a ``.tmai``, safetensors (one file, or the
    ``model.safetensors.index.json`` of a sharded model) or GGUF file, as a
    dict of numpy arrays (``"np"``) or torch tensors (``"pt"``): a drop-in
    for ``safetensors.numpy.load_file`` / ``safetensors.torch.load_file``,
    read with io_uring and ``O_DIRECT`` into memory the arrays use directly.

``hyperion.open(path, budget=...)``
    A ``Model`` that reads layers (the tensors of one block) when they are
    asked for, caches them within ``budget`` bytes, reads ahead, and serves
    threads and asyncio::

        with hyperion.open("model.safetensors", budget=2 << 30) as model:
            for i, layer in model.stream():          # or: async for
                q = layer["model.layers.0.self_attn.q_proj.weight"]
            weights = await model.layer_async(3)

Arrays share the layer's memory (no copy) and keep it alive: they stay valid
after the layer is released or evicted and after the model is closed.
Errors are ``hyperion.HyperionError`` subclasses (see ``hyperion._errors``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from . import _arrays, _errors, _native
from ._errors import *  # noqa: F403  (the exceptions; listed once, in _errors.__all__)
from ._errors import InvalidArgumentError
from ._native import Layer, LayerStream, Model, TensorBuffer

# A Layer is a read-only mapping of tensor names to arrays.
Mapping.register(Layer)


class TensorDict(dict):
    """What ``load_file`` returns: a plain ``dict`` of name to array, plus
    ``dtypes``, each tensor's type as the file names it (``"F32"``,
    ``"BF16"``, ``"Q4_K"`` …): the side table for tensors numpy (or torch)
    has no type for, which come as raw bits or bytes."""

    dtypes: dict[str, str]


def load_file(
    path: str | os.PathLike,
    framework: str = "np",
    *,
    names: Iterable[str] | None = None,
    budget: int | None = None,
    backend: str = "auto",
) -> TensorDict:
    """Loads every tensor of a model file into memory.

    A drop-in for ``safetensors.numpy.load_file`` (``framework="np"``) and
    ``safetensors.torch.load_file`` (``framework="pt"``): the same names,
    dtypes, shapes and bytes. Also reads ``.tmai``, sharded safetensors (pass
    the ``model.safetensors.index.json`` or its directory) and GGUF.

    Args:
        path: the model file.
        framework: ``"np"`` for numpy arrays, ``"pt"`` for torch tensors.
        names: load only these tensors (the layers that hold them are read
            whole). ``TensorNotFoundError`` if one is not in the file.
        budget: the most bytes of memory the load may take; by default what
            the tensors need. ``BudgetError`` if they need more.
        backend: ``"auto"`` (io_uring, else pread; ``O_DIRECT``), ``"pread"``,
            ``"io_uring"`` or ``"mmap"`` (read-only views of the file).

    Returns:
        A ``TensorDict`` (a ``dict``) of name to array; its ``dtypes`` names
        each tensor's type in the file. Types numpy lacks come as raw bits:
        BF16 as ``uint16``, F8 as ``uint8``; GGML quantized tensors as
        ``uint8`` blocks with the last dimension in bytes (as gguf-py's
        reader gives them). With ``"pt"``, BF16 is ``torch.bfloat16`` and F8
        the matching ``torch.float8_*``.

    The arrays are writable and share the memory Hyperion read the file
    into (no copy); the GIL is released while the file is read.

    Raises:
        HyperionError: ``FormatError`` for a file that is not a valid model,
            ``HyperionIOError`` when it cannot be read, ``BudgetError``,
            ``TensorNotFoundError``, ``ChecksumError`` (``.tmai``).
    """
    convert = _arrays.converter(framework)
    wanted = None if names is None else list(names)
    if wanted is not None and any(not isinstance(n, str) for n in wanted):
        raise InvalidArgumentError("names: expected an iterable of tensor names (str)")
    layers = _native.load_layers(os.fspath(path), convert, wanted, budget, backend)
    out = TensorDict()
    out.dtypes = {}
    keep = None if wanted is None else set(wanted)
    for layer in layers:
        for name, dtype in layer.dtypes:
            if keep is None or name in keep:
                out[name] = layer[name]
                out.dtypes[name] = dtype
    return out


def open(  # noqa: A001 (hyperion.open, as the package's entry point)
    path: str | os.PathLike,
    *,
    budget: int | None = None,
    prefetch_threads: int = 2,
    adaptive: bool = True,
    backend: str = "auto",
    verify: bool = True,
    framework: str = "np",
    direct_io: bool = True,
    memory_wait: float = 1.0,
) -> Model:
    """Opens a model for layer-by-layer loading; reads only its metadata.

    Args:
        path: a ``.tmai``, safetensors (one file, or the
            ``model.safetensors.index.json`` of a sharded model, or its
            directory) or GGUF file.
        budget: the most bytes of layers held in memory at once (cached, held
            by your arrays, or being read); never exceeded. Default: a
            quarter of RAM, clamped to 256 MiB–16 GiB.
        prefetch_threads: the most read-ahead reads in flight at once; 0
            disables ``prefetch`` and read-ahead.
        adaptive: evict by a scan-resistant adaptive policy (True) or least
            recently used (False), among layers of the lowest priority.
        backend: ``"auto"`` (io_uring where the kernel allows, else pread),
            ``"io_uring"``, ``"pread"`` or ``"mmap"`` (a file truncated under
            it can kill the process with SIGBUS).
        verify: check ``.tmai`` layers against their checksums.
        framework: layers give numpy arrays (``"np"``) or torch tensors
            (``"pt"``).
        direct_io: read with ``O_DIRECT`` (bypassing the page cache).
        memory_wait: seconds a read waits for held layers to free memory
            before it raises ``BudgetError``.

    Returns:
        A ``Model``; use it as a context manager or call ``close()``.

    A layer's arrays are read-only views of the cached bytes: they keep the
    layer's memory alive (so it counts against the budget) until they go.
    """
    convert = _arrays.converter(framework)
    return _native.open_model(
        os.fspath(path),
        convert,
        budget,
        prefetch_threads,
        adaptive,
        backend,
        verify,
        direct_io,
        memory_wait,
    )


__all__ = [
    "load_file",
    "open",
    "Model",
    "Layer",
    "LayerStream",
    "TensorBuffer",
    "TensorDict",
]
__all__ += _errors.__all__
