"""Reading a data pickle or a checkpoint never runs code from it (``docs/security.md``).

A pickle is a program: each ``GLOBAL`` opcode imports a callable and ``REDUCE`` calls it, so a downloaded
``.pkl`` or ``.ckpt`` can run ``os.system`` while it is being read. Two loaders replace every unrestricted one:

* :func:`load_data_pickle` for the released dataset pickles (MMSA ``{aligned,unaligned}_50.pkl``, MulT
  ``*_data(_noalign).pkl``, the six UR-FUNNY v2 pickles, Python-2 pickles read with ``latin1``):
  :class:`RestrictedUnpickler` resolves only the globals in :data:`ALLOWED_GLOBALS` -- numpy's own array /
  scalar / dtype reconstructors (under their numpy 1.x ``numpy.core`` and 2.x ``numpy._core`` names), a few
  built-in container and number types, and ``_codecs.encode`` with the latin-1 codec (how protocol-2 pickles
  store bytes). Anything else is refused *before* it is imported or called: a one-line
  :class:`~mmfusion.errors.DataError` naming the file and the global.
* :func:`load_checkpoint` for Lightning checkpoints and EMMA's DAE file: ``torch.load(weights_only=True)``
  (tensors, plain containers, numbers, strings only; our checkpoints hold nothing else, so no extra
  ``add_safe_globals``). A checkpoint that needs more is refused with one line naming the globals it asks for.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from mmfusion.errors import DataError

SECURITY_DOC = "docs/security.md"


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes`` (``encode(text, 'latin1')``): any other codec
    is refused (a codec is looked up by name, i.e. imported)."""
    if str(encoding).lower().replace("_", "-") not in _LATIN1:
        raise pickle.UnpicklingError(f"_codecs.encode with codec {encoding!r} (only latin-1 is allowed)")
    return codecs.encode(obj, "latin-1", errors)


_LATIN1 = {"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"}


def _numpy_objects() -> dict[str, Any]:
    """numpy's pickle reconstructors in the running numpy, found from what numpy itself pickles (so the same
    objects are returned whether a file names the 1.x ``numpy.core`` or the 2.x ``numpy._core`` module)."""
    reconstruct = np.ndarray((0,)).__reduce__()[0]
    scalar = np.float64(0.0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    return {"_reconstruct": reconstruct, "scalar": scalar, "_frombuffer": frombuffer}


_NP = _numpy_objects()

#: (module, name) -> object: the only globals a data pickle may name. Module names are given as the file
#: names them after Python-2 names are mapped (``__builtin__`` -> ``builtins``, ``copy_reg`` -> ``copyreg``).
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    # numpy arrays: ndarray.__reduce__ (protocols 0-4, and non-contiguous / object arrays under 5)
    ("numpy.core.multiarray", "_reconstruct"): _NP["_reconstruct"],  # numpy 1.x
    ("numpy._core.multiarray", "_reconstruct"): _NP["_reconstruct"],  # numpy 2.x
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # numpy arrays under protocol 5 (contiguous): numeric._frombuffer(buffer, dtype, shape, order)
    ("numpy.core.numeric", "_frombuffer"): _NP["_frombuffer"],
    ("numpy._core.numeric", "_frombuffer"): _NP["_frombuffer"],
    # numpy scalars (np.float64 labels, ...): multiarray.scalar(dtype, bytes)
    ("numpy.core.multiarray", "scalar"): _NP["scalar"],
    ("numpy._core.multiarray", "scalar"): _NP["scalar"],
    # built-ins that protocols < 4 (or all protocols) write as globals; dict/list/tuple/str/bytes/int/float/bool/
    # None have their own opcodes and need no global
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "bytes"): bytes,  # protocols < 3 write b"" as bytes()
    ("collections", "OrderedDict"): collections.OrderedDict,
    # protocol 0-2 pickles written by Python 3 store bytes as _codecs.encode(str, 'latin1')
    ("_codecs", "encode"): _latin1_encode,
}


class RefusedGlobal(pickle.UnpicklingError):
    """A data pickle names a global outside :data:`ALLOWED_GLOBALS` (nothing was imported or called)."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only :data:`ALLOWED_GLOBALS` (``find_class`` is the single place where
    the C unpickler turns a name into an object: ``GLOBAL``, ``STACK_GLOBAL``, ``INST``, the copyreg extension
    codes)."""

    def find_class(self, module: str, name: str) -> Any:
        # Python-2 names mapped as pickle itself maps them (``__builtin__.set`` -> ``builtins.set``)
        key = _compat_pickle.NAME_MAPPING.get(
            (module, name), (_compat_pickle.IMPORT_MAPPING.get(module, module), name)
        )
        if key not in ALLOWED_GLOBALS:
            raise RefusedGlobal(module, name)
        return ALLOWED_GLOBALS[key]

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not part of a data pickle")


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def refused_message(path: str | Path, qualname: str) -> str:
    return (
        f"{path}: refused to load: the pickle names the global {qualname!r}, which a dataset file never needs "
        f"(allowed: numpy arrays/scalars/dtypes, built-in containers, strings, numbers; see {SECURITY_DOC})"
    )


def unpickle_bytes(data: bytes, encoding: str = "ASCII") -> Any:
    """Restricted unpickling of ``data`` (raises :class:`RefusedGlobal` or ``pickle``'s own errors)."""
    return RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()


def load_data_pickle(path: str | Path, missing_hint: str = "") -> Any:
    """A dataset pickle through :class:`RestrictedUnpickler`; Python-2 pickles are retried with ``latin1``.

    Args:
        path: the ``.pkl`` / ``.pickle`` file.
        missing_hint: appended to the file-not-found message (where to get the file).

    Raises:
        DataError: one line: file missing, a refused global (naming it), or not a readable pickle.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{p}: file not found" + (f"; {missing_hint}" if missing_hint else ""))
    with open(p, "rb") as f:  # streamed: no second copy of a multi-GB file in memory
        for encoding in ("ASCII", "latin1"):
            try:
                return RestrictedUnpickler(f, encoding=encoding).load()
            except RefusedGlobal as e:
                raise DataError(refused_message(p, e.qualname)) from None
            except UnicodeDecodeError:  # Python-2 str holding binary data: read again as latin1
                if encoding == "latin1":
                    raise DataError(f"{p}: not a readable pickle (undecodable strings)") from None
                f.seek(0)
            except Exception as e:  # noqa: BLE001 - any other unpickling failure is a bad file
                raise DataError(
                    f"{p}: not a readable pickle ({type(e).__name__}: {_one_line(e, 160)})"
                ) from None
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------------------------
# checkpoints

_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([A-Za-z_][\w.]*)")


def _unsafe_globals(path: Path) -> list[str]:
    """The globals a zip checkpoint's pickle names that ``weights_only`` refuses (read without executing)."""
    import torch

    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - legacy (non-zip) files: fall back to the error message
        return []


def load_checkpoint(
    path: str | Path, what: str = "checkpoint", map_location: Any = "cpu", mmap: bool = False
) -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors.

    Args:
        path: a ``.ckpt`` / ``.pt`` file written by ``torch.save`` (Lightning checkpoints, EMMA's DAE file).
        what: how the message names the file's role (``ckpt_path``, ``stage.base_ckpt``, ...).
        map_location: passed to ``torch.load``.
        mmap: map the tensor storages instead of reading them (a cheap check of a large file; zip format only).

    Raises:
        DataError: one line: file missing, refused globals (named), or truncated / not a torch file.
    """
    import torch

    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{what}: file not found: {p}")
    try:
        return torch.load(
            p, map_location=map_location, weights_only=True, mmap=mmap and zipfile.is_zipfile(p)
        )
    except pickle.UnpicklingError as e:
        names = sorted(set(_unsafe_globals(p) or _GLOBAL_IN_MESSAGE.findall(str(e))))
        if names:
            raise DataError(
                f"{p}: refused to load ({what}): it needs {', '.join(names)}; an mmfusion checkpoint "
                f"holds only tensors, containers, numbers and strings (read with "
                f"torch.load(weights_only=True); see {SECURITY_DOC})"
            ) from None
        raise DataError(
            f"{p}: not a readable {what}: corrupt or not written by torch.save ({_torch_reason(e)})"
        ) from None
    except Exception as e:  # noqa: BLE001 - truncated zip, not a torch file, ...
        raise DataError(
            f"{p}: not a readable {what}: truncated or not written by torch.save ({_torch_reason(e)})"
        ) from None


def _torch_reason(e: Exception) -> str:
    """The informative part of a ``torch.load`` error, on one short line."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    text = text.split("Check the documentation of torch.load")[0]
    text = text.split(". This is an internal")[0]
    return _one_line(f"{type(e).__name__}: {text.strip()}", 160)


def check_checkpoint(path: str | Path | None, what: str = "ckpt_path") -> None:
    """Refuse a hostile, truncated or foreign checkpoint with one line before anything is built (the pickle is
    parsed with ``weights_only=True``, the tensors are only memory-mapped). ``None`` (no checkpoint) passes."""
    if path:
        load_checkpoint(path, what, mmap=True)
