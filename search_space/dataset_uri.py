"""The dataset URI grammar shared by the coordinator (validation) and the workers (loading).

``builtin:mnist5k``, ``builtin:digits``, ``imagefolder:PATH`` (directory or .zip),
``npz:PATH``, ``idx:DIR``, ``cifar10:DIR``, ``lfw:DIR`` (DESIGN.md section 4). Pure: this
module checks the form of a URI, never the file system.
"""

from __future__ import annotations

from dataclasses import dataclass

BUILTINS = ("mnist5k", "digits")
PATH_SCHEMES = ("imagefolder", "npz", "idx", "cifar10", "lfw")
SCHEMES = ("builtin", *PATH_SCHEMES)
# Default channels the model sees for each scheme (the study may override: "color").
DEFAULT_COLOR = {
    "builtin": "gray",
    "idx": "gray",
    "lfw": "gray",
    "cifar10": "rgb",
    "imagefolder": "rgb",
    "npz": "gray",
}


class DatasetURIError(ValueError):
    """The URI is not of the grammar above; the message names the rule broken."""


@dataclass(frozen=True)
class DatasetURI:
    scheme: str
    target: str  # builtin name or path

    def __str__(self) -> str:
        return f"{self.scheme}:{self.target}"


def parse_dataset_uri(uri: str) -> DatasetURI:
    """Split and check ``uri``. Raises :class:`DatasetURIError` naming the rule."""
    scheme, sep, target = uri.partition(":")
    if not sep:
        raise DatasetURIError(
            f"dataset must be SCHEME:TARGET with SCHEME one of {list(SCHEMES)}, got {uri!r}"
        )
    if scheme not in SCHEMES:
        raise DatasetURIError(f"unknown dataset scheme {scheme!r}; known: {list(SCHEMES)}")
    if scheme == "builtin" and target not in BUILTINS:
        raise DatasetURIError(f"unknown builtin dataset {target!r}; known: {list(BUILTINS)}")
    if not target.strip():
        raise DatasetURIError(f"{scheme}: needs a path, e.g. {scheme}:/data/{scheme}")
    if "\x00" in target:
        raise DatasetURIError("dataset path must not contain NUL characters")
    return DatasetURI(scheme=scheme, target=target)
