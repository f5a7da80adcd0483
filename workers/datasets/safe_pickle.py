"""A restricted unpickler for the CIFAR-10 python batches: it builds numpy arrays and nothing else.

:func:`safe_unpickle` is the only entry point. What it allows, exactly:

* the opcodes that build containers (dict, list, tuple) and scalars (int, float, str,
  bytes, bool, None): these never call anything;
* seven globals, each mapped by ``_ALLOWED_GLOBALS`` to a guard rather than the real object:
  ``numpy.ndarray`` (an inert, non-callable token), ``numpy.core.multiarray._reconstruct``
  and ``numpy._core.multiarray._reconstruct`` (only ``(ndarray, (0,), b'b')``: the empty
  array that BUILD then fills), ``numpy.dtype`` (only a plain numeric type string
  ``[biuf][1248]``: no object dtype, so BUILD can fill arrays with raw bytes only),
  ``numpy.core.numeric._frombuffer`` and ``numpy._core.numeric._frombuffer`` (protocol 5:
  only in-band bytes, a numeric dtype, a non-negative shape, order C or F), and
  ``_codecs.encode`` (only ``(str, 'latin1')``, how Python 3 pickles ``bytes`` under
  protocols 0-2).

Why nothing else runs: a pickle can call code only through the globals it names (GLOBAL /
STACK_GLOBAL / INST / OBJ / the EXT* registry all go through ``find_class``) or through
persistent ids (``persistent_load``). ``find_class`` answers only the guards above and
raises :class:`~workers.datasets.core.DatasetError` for every other name (every ``os`` /
``builtins`` / ``subprocess`` name included) before anything is called; ``persistent_load``
always raises. REDUCE / NEWOBJ / BUILD can therefore only reach the guards, which check
their arguments before doing anything. Any other failure (truncated or malformed data) is
also reported as a :class:`~workers.datasets.core.DatasetError`.
"""

from __future__ import annotations

import io
import pickle
import re
from typing import Any

import numpy as np

from .core import DatasetError

_NDARRAY_TOKEN = object()  # what the pickle gets for ``numpy.ndarray``: not callable
_real_reconstruct = np.empty(0).__reduce__()[0]  # numpy's _reconstruct, whatever its module


def _guard_reconstruct(subtype: object, shape: object, typecode: object) -> np.ndarray:
    """numpy's ``_reconstruct(ndarray, (0,), b'b')``: the empty array that BUILD fills."""
    if subtype is not _NDARRAY_TOKEN or shape != (0,) or typecode not in (b"b", "b"):
        raise DatasetError("refused pickle: unexpected _reconstruct arguments")
    return _real_reconstruct(np.ndarray, (0,), b"b")


def _guard_dtype(spec: object, align: object = False, copy: object = False) -> np.dtype:
    """``numpy.dtype(spec, align, copy)`` for a plain numeric type string only."""
    if isinstance(spec, bytes):
        spec = spec.decode("ascii", "replace")
    if not (isinstance(spec, str) and re.fullmatch(r"[biuf][1248]", spec)):
        raise DatasetError(f"refused pickle: dtype {spec!r} (only numeric dtypes are allowed)")
    return np.dtype(spec)


def _guard_frombuffer(buf: object, dtype: object, shape: object, order: object) -> np.ndarray:
    """numpy's protocol-5 ``_frombuffer(buffer, dtype, shape, order)``, for in-band bytes."""
    if not isinstance(buf, bytes | bytearray | pickle.PickleBuffer):
        raise DatasetError("refused pickle: _frombuffer without an in-band byte buffer")
    if not (isinstance(dtype, np.dtype) and dtype.kind in "biuf"):
        raise DatasetError("refused pickle: _frombuffer with a non-numeric dtype")
    if not (isinstance(shape, tuple) and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise DatasetError("refused pickle: _frombuffer with a bad shape")
    if order not in ("C", "F"):
        raise DatasetError("refused pickle: _frombuffer with a bad order")
    return np.frombuffer(bytes(buf), dtype=dtype).reshape(shape, order=order)


def _guard_codecs_encode(text: object, encoding: object = "utf-8") -> bytes:
    """How Python 3 pickles ``bytes`` under protocols 0-2: ``_codecs.encode(str, 'latin1')``."""
    if not (isinstance(text, str) and encoding == "latin1"):
        raise DatasetError("refused pickle: _codecs.encode other than (str, 'latin1')")
    return text.encode("latin1")


_ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy.core.multiarray", "_reconstruct"): _guard_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _guard_reconstruct,
    ("numpy", "ndarray"): _NDARRAY_TOKEN,
    ("numpy", "dtype"): _guard_dtype,
    ("numpy.core.numeric", "_frombuffer"): _guard_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _guard_frombuffer,
    ("_codecs", "encode"): _guard_codecs_encode,
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR-10 batch format and refuses everything else.

    Why this is safe: a pickle can run code only through callables it names as globals
    (GLOBAL / STACK_GLOBAL / INST / OBJ / the EXT* registry all go through ``find_class``)
    or through persistent ids (``persistent_load``). Here ``find_class`` returns none of
    the real objects, only the guards above: ``numpy.ndarray`` becomes an inert token
    (not callable), ``_reconstruct`` only makes the empty array numpy's own pickles start
    from, ``dtype`` only accepts plain numeric type strings (no object dtype, so BUILD can
    fill arrays with raw bytes only), ``_frombuffer`` only wraps in-band bytes, and
    ``_codecs.encode`` only turns a str into latin-1 bytes. Everything else, including
    every ``os`` / ``builtins`` / ``subprocess`` name, raises :class:`DatasetError` before
    anything is called. Containers (dict, list, tuple) and scalars are built by opcodes,
    not by calling anything.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DatasetError(
                f"refused pickle: it asks for {module}.{name}; only numpy arrays are allowed"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise DatasetError("refused pickle: persistent ids are not allowed")


def safe_unpickle(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`_ArrayOnlyUnpickler` (``encoding="bytes"``, as the
    Python 2 CIFAR-10 batches need). Raises :class:`DatasetError` for anything refused or
    malformed; never runs code named by the pickle."""
    try:
        return _ArrayOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except DatasetError:
        raise
    except Exception as exc:  # UnpicklingError, EOFError, TypeError, ValueError, ...
        raise DatasetError(f"malformed pickle: {type(exc).__name__}: {exc}") from exc
