"""Hyperion's exceptions.

Every failure of Hyperion is a ``HyperionError``; its message names the file
and, where there is one, the layer or tensor, and says what is wrong. The
subclasses also derive from the built-in exception they refine, so code that
catches ``ValueError``, ``OSError``, ``IndexError``, ``KeyError`` or
``MemoryError`` catches them too::

    HyperionError
    ├── FormatError (ValueError)          the file is not a valid model
    ├── HyperionIOError (OSError)         a read or open failed
    │   └── TruncatedError                the file ended before a layer did
    ├── ChecksumError                     a layer's bytes differ from its checksum
    ├── BudgetError (MemoryError)         the budget cannot hold what was asked
    ├── LayerIndexError (IndexError)      no such layer
    ├── TensorNotFoundError (KeyError)    no such tensor
    ├── ClosedError                       the model was closed
    ├── InvalidArgumentError (ValueError) a bad argument or configuration
    ├── PrefetchDisabledError             prefetch() on a model opened without it
    └── BackendUnavailableError           the I/O engine asked for cannot run here
"""


class HyperionError(Exception):
    """Base class of every error Hyperion raises."""


class FormatError(HyperionError, ValueError):
    """The file is not a valid .tmai, safetensors or GGUF model; the message
    says which item of the file is wrong."""


class HyperionIOError(HyperionError, OSError):
    """An operating-system call failed (open, read, map …)."""


class TruncatedError(HyperionIOError):
    """The file ended before a layer's bytes did (it was truncated after the
    model was opened)."""


class ChecksumError(HyperionError):
    """A layer's bytes do not match the checksum recorded in the file."""


class BudgetError(HyperionError, MemoryError):
    """The memory budget cannot hold what was asked: one layer larger than
    the whole budget, held layers filling it for longer than the memory
    wait, or ``load_file`` asked for more than its ``budget``."""


class LayerIndexError(HyperionError, IndexError):
    """A layer index out of range (negative, or past the last layer)."""


class TensorNotFoundError(HyperionError, KeyError):
    """No tensor of the model (or of the layer) has this name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ClosedError(HyperionError):
    """The model was closed."""


class InvalidArgumentError(HyperionError, ValueError):
    """An argument or configuration value is invalid."""


class PrefetchDisabledError(HyperionError):
    """``prefetch`` was called on a model opened with ``prefetch_threads=0``."""


class BackendUnavailableError(HyperionError):
    """The I/O engine asked for cannot be used here (io_uring refused by the
    kernel, for example)."""


# Every class above, in the order defined: what ``hyperion`` re-exports
# (``from ._errors import *``), so a new error is listed by defining it here.
__all__ = [
    name
    for name, value in list(globals().items())
    if isinstance(value, type) and issubclass(value, HyperionError)
]

# Shown as hyperion.BudgetError (where users import them from), not
# hyperion._errors.BudgetError.
for _name in __all__:
    globals()[_name].__module__ = "hyperion"
del _name
