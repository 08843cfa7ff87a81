"""Hyperion: model weights layer by layer, within a hard memory budget.

Two ways in:

``hyperion.load_file(path, framework="np")``
    Every tensor of a ``.tmai``, safetensors (one file, or the
    ``model.safetensors.index.json`` of a sharded model) or GGUF file, as a
    dict of numpy arrays (``"np"``) or torch tensors (``"pt"``): a drop-in
    for ``safetensors.numpy.load_file`` / ``safetensors.torch.load_file``:
    the arrays are the page cache's own pages (private, copy on write, under
    a read lease), or with ``share_page_cache=False`` buffers read with
    io_uring and ``O_DIRECT``; no copy either way.

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
from ._native import BufferPool, Layer, LayerStream, Model, TensorBuffer

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
    share_page_cache: bool = True,
    buffer_pool: BufferPool | None = None,
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
        share_page_cache: the arrays are the page cache's own pages, as
            safetensors' torch tensors are (a private mapping of the file:
            a write copies the page and never reaches the file), read
            through the page cache when not cached. No fresh memory is
            zeroed, and warm loads copy nothing. The file is mapped only
            under a read lease: another process that truncates it or opens
            it for writing waits until Hyperion has copied the pages your
            arrays use (the same bytes) and let go, so the arrays never
            fault (SIGBUS). Where no lease can be had (the file open for
            writing elsewhere, another user's file, NFS / FUSE / overlayfs),
            and past ``lease-break-time`` x 128 MiB/s of shared bytes, the
            layers are read with ``backend`` as with ``False``. The arrays
            are writable either way. Default ``True``: no fresh memory to
            zero, so cold loads ran 2.9-5.5x and warm ones over 100x faster
            than with ``False`` on the machine of docs/python.md's figures.
        buffer_pool: a ``BufferPool`` shared with other loads and models:
            the memory of layers read into buffers (not shared from the
            page cache) goes to it when the arrays go, and this load takes
            buffers from it before it allocates new memory.

    Returns:
        A ``TensorDict`` (a ``dict``) of name to array; its ``dtypes`` names
        each tensor's type in the file. Types numpy lacks come as raw bits:
        BF16 as ``uint16``, F8 as ``uint8``; GGML quantized tensors as
        ``uint8`` blocks with the last dimension in bytes (as gguf-py's
        reader gives them). With ``"pt"``, BF16 is ``torch.bfloat16`` and F8
        the matching ``torch.float8_*``.

    The arrays are writable and share the memory the file is in (no copy);
    the GIL is released while the file is read.

    Raises:
        HyperionError: ``FormatError`` for a file that is not a valid model,
            ``HyperionIOError`` when it cannot be read, ``BudgetError``,
            ``TensorNotFoundError``, ``ChecksumError`` (``.tmai``).
    """
    convert = _arrays.converter(framework)
    wanted = None if names is None else list(names)
    if wanted is not None and any(not isinstance(n, str) for n in wanted):
        raise InvalidArgumentError("names: expected an iterable of tensor names (str)")
    layers = _native.load_layers(
        os.fspath(path), convert, wanted, budget, backend, bool(share_page_cache), _pool(buffer_pool)
    )
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
    share_page_cache: bool = False,
    buffer_pool: BufferPool | None = None,
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
        share_page_cache: layers are views of the page cache's own pages
            (read into it first when not cached) instead of copies: no copy
            and no fresh memory, the pages still counted against
            ``budget``. The file is mapped only under a read lease, so a
            process truncating or rewriting it waits until the pages your
            arrays use are copied out (same bytes, never SIGBUS); where no
            lease can be had, layers are read as without it.
            ``stats()["page_cache_shared_bytes"]`` counts what was shared
            and ``Layer.mapped`` says which layers are. Default ``False``:
            it leaves the model in the page cache and makes writers of the
            file wait.
        buffer_pool: a ``BufferPool`` shared by the models a process opens
            one after another: when this model closes (or the last array
            over one of its layers goes after that) its layer buffers go to
            the pool, up to the pool's ``max_bytes``, and its reads take
            buffers from the pool before they allocate new memory, whose
            first touch is slow. Default ``None``: ``close`` gives all the
            memory back.

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
        bool(share_page_cache),
        _pool(buffer_pool),
    )


def _pool(pool):
    if pool is not None and not isinstance(pool, BufferPool):
        raise InvalidArgumentError(f"buffer_pool: expected a hyperion.BufferPool, not {type(pool).__name__}")
    return pool


__all__ = [
    "load_file",
    "open",
    "BufferPool",
    "Model",
    "Layer",
    "LayerStream",
    "TensorBuffer",
    "TensorDict",
]
__all__ += _errors.__all__
