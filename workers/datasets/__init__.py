"""Load the datasets named by URI (docs/design.md sections 4 and 8) into one in-memory form.

Every loader returns a :class:`Dataset`: ``x`` uint8 ``(N, C, H, W)`` (``C`` = 1 for
``color="gray"``, 3 for ``"rgb"``, every image the same ``H, W``), ``y`` int64 class
indices, ``is_test`` (the held-out split: the format's official one where it has one, else
a seeded stratified ``test_fraction``), the class names and a ``fingerprint``: a sha256 over
the shape, the pixels, the labels, the split, the class names (and the LFW pairs) that is
identical on every machine that decodes the same data the same way. The URI or path is not
part of it, so two workers that keep the data at different places agree.

Schemes (grammar in :mod:`search_space.dataset_uri`): ``builtin:mnist5k``,
``builtin:digits``, ``imagefolder:PATH`` (dir or .zip), ``npz:PATH``, ``idx:DIR``,
``cifar10:DIR``, ``lfw:DIR``. Files are untrusted input: npz is read without pickle, the
CIFAR-10 python batches through an unpickler that can build nothing but numpy arrays, and
every problem is a :class:`DatasetError` that names the URI, the path and what is wrong.

The search sees only the non-test images (:func:`search_split`); ``is_test`` is for the
final evaluation of the top-k trials. Arrays in a :class:`Dataset` are read-only, so a
:class:`DatasetCache` can hand the same object to every trial.

JPEG note: pixels (hence the fingerprint) of lossy formats depend on the decoder; workers
running the same Pillow build agree, a different libjpeg may differ by a few grey levels.

Package layout (imports only flow downwards; nothing here imports ``service`` or
``archsearch``):

* :mod:`.core`: :class:`Dataset`, :class:`Pairs`, :class:`DatasetError`, the splits, the
  caps, colour / size conversion and the fingerprint (imports no sibling);
* :mod:`.safe_pickle`: :func:`safe_unpickle`, the array-only unpickler;
* :mod:`.images`: image decoding shared by imagefolder and lfw;
* one module per format: :mod:`.builtin`, :mod:`.imagefolder`, :mod:`.npz`, :mod:`.idx`,
  :mod:`.cifar10`, :mod:`.lfw` (with its pairs-file parser in :mod:`.lfw_pairs`);
* :mod:`.load`: :func:`load_dataset` (the scheme dispatch) and :class:`DatasetCache`.
"""

from __future__ import annotations

from .core import Color, Dataset, DatasetError, MaxPerClass, Pairs, search_split
from .idx import MAX_IDX_BYTES
from .images import MAX_IMAGE_BYTES
from .load import DatasetCache, load_dataset
from .safe_pickle import safe_unpickle

__all__ = [
    "MAX_IDX_BYTES",
    "MAX_IMAGE_BYTES",
    "Color",
    "Dataset",
    "DatasetCache",
    "DatasetError",
    "MaxPerClass",
    "Pairs",
    "load_dataset",
    "safe_unpickle",
    "search_split",
]
