"""The exported model file (``archsearch study export-model``): format, writer, checked loader.

One file holds everything a ``screen`` candidate needs to label new images, or a ``pairs``
candidate to call pairs of images same or different: the architecture (JSON), the filters
of every layer, the fitted linear readout (``W``, ``b``, the feature standardisation
``mean`` / ``std``, the column -> class map and the class names) and the input contract
(image size and colour the dataset gave the model; the model's own resize / rescale is in
the architecture, see :func:`search_space.model.preprocess`). A pairs model's readout
takes the comparison features (:func:`workers.pairs.pair_features` of the two images'
features, kinds in ``meta["pair_features"]``) and its classes are ``different`` (0) and
``same`` (1).

Layout: a ``torch.save`` archive of plain containers and tensors only, so
``torch.load(path, weights_only=True)`` reads it anywhere, with no archsearch class::

    {"format": "archsearch-model", "version": 1, "sha256": "<hex>",
     "meta": {...JSON: arch, protocol, readout kind / l2, class_names, input, provenance},
     "weights": {"layers.0.fbcorr.weight": tensor, ...},   # the FeatureExtractor's state
     "readout": {"W": (d, C) , "b": (C,), "mean": (d,), "std": (d,), "classes": (C,) int64}}

Version 1 is a screen model; version 2 (the same layout) a pairs model, with
``meta["protocol"] == "pairs"`` and ``meta["pair_features"]``: a reader of version 1 only
refuses it by its version instead of misreading it.

``sha256`` is over the canonical content (:func:`content_digest`): the tag and version,
the meta as sorted compact JSON, then every tensor's group, name, dtype, shape and bytes in
sorted order. It detects a file changed after export (integrity); it is not a signature:
anyone can write a file with a matching digest. Safety comes from ``weights_only`` (torch's
restricted unpickler builds tensors and plain containers, nothing else).

:func:`load_model` is the documented loader. Before torch unpickles anything it checks,
without executing the pickle, that the file is a torch zip archive whose pickle starts
with our tag (``pickletools`` reads the opcodes only); then it loads with
``weights_only=True``, checks the version, the structure and the digest, and builds an
:class:`ExportedModel`. Every refusal is a :class:`ModelFileError` with a one-line reason.
"""

from __future__ import annotations

import hashlib
import json
import pickletools
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from search_space.arch import Architecture, InfeasibleArchitecture, walk
from search_space.model import FeatureExtractor, build_model

from .readout import LinearClassifier
from .stages import extract_features

FORMAT = "archsearch-model"
VERSION = 1  # a screen model
PAIRS_VERSION = 2  # a pairs model (see the module docstring)
VERSIONS = (VERSION, PAIRS_VERSION)
PROTOCOL_VERSIONS = {"screen": VERSION, "pairs": PAIRS_VERSION}
# A pairs model's readout columns: pairs.py labels a same pair 1, a different one 0.
PAIR_CLASSES = ("different", "same")
# The pickle of a model file holds names and small metadata only (tensor bytes are separate
# zip members): a larger one is not ours.
MAX_PICKLE_BYTES = 16 << 20
READOUT_KEYS = ("W", "b", "mean", "std", "classes")
PREDICT_BATCH = 64

__all__ = [
    "FORMAT",
    "PAIR_CLASSES",
    "VERSION",
    "ExportedModel",
    "ModelFileError",
    "content_digest",
    "load_model",
    "save_model",
]


class ModelFileError(ValueError):
    """A model file that is not ours, is damaged or was changed after export."""


# -- the in-memory model --------------------------------------------------------------
@dataclass
class ExportedModel:
    """A loaded (or freshly exported) model: features, then the linear readout.

    ``image_size`` ``(H, W)`` and ``color`` (``"gray"`` / ``"rgb"``) are the images the
    dataset loader gave the model; :meth:`predict` takes exactly those. ``meta`` is the
    file's JSON metadata (architecture, readout kind and ``l2``, provenance: study, trial,
    ``test_value``, dataset URI and fingerprint). ``protocol`` ``"screen"`` labels images
    (:meth:`predict`); ``"pairs"`` compares two (:meth:`predict_pairs`), its readout on
    the ``pair_features`` of the two feature rows, classes :data:`PAIR_CLASSES`.
    """

    arch: Architecture
    model: FeatureExtractor
    readout: LinearClassifier
    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    color: str
    meta: dict[str, Any]
    protocol: str = "screen"
    pair_features: tuple[str, ...] = ()

    @property
    def channels(self) -> int:
        return 3 if self.color == "rgb" else 1

    def check_images(self, images: np.ndarray) -> np.ndarray:
        """``images`` as uint8 ``(N, C, H, W)`` (a ``(N, H, W)`` gray batch gets C = 1).

        Raises ``ValueError`` naming the expected shape for a wrong rank, channel count or
        size, and for a dtype other than uint8 (the loaders' pixels): no silent resize or
        colour conversion here (:mod:`workers.predict` offers that explicitly).
        """
        x = np.asarray(images)
        if x.ndim == 3:
            x = x[:, None]
        want = (self.channels, *self.image_size)
        if x.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W) or (N, H, W), got {x.shape}")
        if x.dtype != np.uint8:
            raise ValueError(f"images must be uint8 pixels (0..255), got {x.dtype}")
        if x.shape[1] != want[0]:
            raise ValueError(
                f"images have {x.shape[1]} channel(s); this model takes {want[0]} ({self.color})"
            )
        if tuple(x.shape[2:]) != want[1:]:
            raise ValueError(
                f"images are {x.shape[2]}x{x.shape[3]} pixels; this model takes "
                f"{want[1]}x{want[2]} (the size of its dataset's images)"
            )
        return x

    def features(self, images: np.ndarray) -> torch.Tensor:
        """The feature matrix ``(N, n_features)`` float32, computed as the evaluation does
        (:func:`workers.stages.extract_features`)."""
        x = self.check_images(images)
        device = self.readout.W.device
        feats, _, _ = extract_features(
            self.model,
            x,
            np.arange(len(x)),
            device=device,
            batch_size=PREDICT_BATCH,
        )
        return feats

    def _require(self, protocol: str) -> None:
        if self.protocol != protocol:
            what = "labels single images" if self.protocol == "screen" else "compares pairs"
            raise ValueError(f"this is a {self.protocol} model: it {what}")

    def decision(self, images: np.ndarray) -> torch.Tensor:
        """Readout scores ``(N, n_classes)``; column ``j`` is ``class_names[classes[j]]``.
        Screen models only (``ValueError`` for a pairs model)."""
        self._require("screen")
        return self.readout.decision(self.features(images))

    def predict_indices(self, images: np.ndarray) -> np.ndarray:
        """Class indices ``(N,)`` int64 (into :attr:`class_names`). Screen models only."""
        self._require("screen")
        return self.readout.predict(self.features(images)).cpu().numpy()

    def predict(self, images: np.ndarray) -> list[str]:
        """One class name per image. Screen models only."""
        return [self.class_names[int(i)] for i in self.predict_indices(images)]

    def pair_decision(self, first: np.ndarray, second: np.ndarray) -> torch.Tensor:
        """Readout scores ``(N, 2)`` of the pairs ``(first[i], second[i])``, as the pairs
        protocol computes them (features of both images, then their comparison features).
        Pairs models only; ``ValueError`` for unequal counts or a wrong image shape."""
        self._require("pairs")
        from .pairs import pair_features

        if len(first) != len(second):
            raise ValueError(f"{len(first)} first images but {len(second)} second ones")
        f1, f2 = self.features(first), self.features(second)
        return self.readout.decision(pair_features(f1, f2, self.pair_features))

    def predict_pairs(self, first: np.ndarray, second: np.ndarray) -> tuple[list[str], np.ndarray]:
        """``(labels, scores)``: ``same`` / ``different`` per pair and the score, the
        ``same`` column's readout value minus the ``different`` one's (> 0: same; the
        label is the larger column, as the protocol's accuracy counts it)."""
        d = self.pair_decision(first, second)
        labels = [self.class_names[int(i)] for i in self.readout.classes[d.argmax(dim=1)]]
        col = {int(c): j for j, c in enumerate(self.readout.classes.tolist())}
        same = PAIR_CLASSES.index("same")
        other = PAIR_CLASSES.index("different")
        scores = (d[:, col[same]] - d[:, col[other]]).detach().to("cpu").double().numpy()
        return labels, scores


# -- content, digest, writer ----------------------------------------------------------
def _canonical_json(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=True
    ).encode()


def content_digest(
    meta: dict[str, Any], tensors: dict[str, dict[str, torch.Tensor]], version: int = VERSION
) -> str:
    """sha256 hex of the canonical content: tag, version, the meta (sorted compact JSON),
    then per tensor (groups and names sorted) its group, name, dtype, shape and bytes."""
    h = hashlib.sha256(f"{FORMAT}\0{version}\0".encode())
    h.update(_canonical_json(meta))
    for group in sorted(tensors):
        for name in sorted(tensors[group]):
            t = tensors[group][name].detach().to("cpu").contiguous()
            h.update(_canonical_json([group, name, str(t.dtype), list(t.shape)]))
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def _content(model: ExportedModel) -> dict[str, Any]:
    weights = {k: v.detach().to("cpu").contiguous() for k, v in model.model.state_dict().items()}
    r = model.readout
    readout = {k: getattr(r, k).detach().to("cpu").contiguous() for k in ("W", "b", "mean", "std")}
    readout["classes"] = r.classes.detach().to("cpu").long().contiguous()
    meta = dict(model.meta)
    meta.update(
        arch=model.arch.to_dict(),
        protocol=model.protocol,
        readout_kind=r.kind,
        l2=r.l2,
        class_names=list(model.class_names),
        input={"height": model.image_size[0], "width": model.image_size[1], "color": model.color},
    )
    if model.protocol == "pairs":
        meta["pair_features"] = list(model.pair_features)
    version = PROTOCOL_VERSIONS[model.protocol]
    tensors = {"weights": weights, "readout": readout}
    # "format" first: load_model reads it from the pickle's opening opcodes.
    return {
        "format": FORMAT,
        "version": version,
        "sha256": content_digest(meta, tensors, version),
        "meta": meta,
        **tensors,
    }


def save_model(model: ExportedModel, path: str | Path) -> str:
    """Write ``model`` to ``path`` (``torch.save``, plain containers and tensors only);
    returns the content digest. Written to a temporary file, then renamed into place."""
    path = Path(path)
    content = _content(model)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(content, tmp)
    tmp.replace(path)
    return str(content["sha256"])


# -- the checked loader ---------------------------------------------------------------
def _precheck(path: Path) -> None:
    """Refuse a file that is not a torch zip archive starting with our tag, reading the
    pickle's opcodes without executing any (``pickletools.genops``)."""
    what = f"{path} is not an archsearch model file"
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{what} (not a torch zip archive)")
    try:
        with zipfile.ZipFile(path) as zf:
            pickles = [i for i in zf.infolist() if i.filename.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise ModelFileError(f"{what} (no single data.pkl in the archive)")
            if pickles[0].file_size > MAX_PICKLE_BYTES:
                raise ModelFileError(f"{what} (its pickle is {pickles[0].file_size} bytes)")
            data = zf.read(pickles[0])
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelFileError(f"{what} (a damaged archive: {exc})") from None
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if isinstance(arg, str) and "UNICODE" in op.name:
                strings.append(arg)
            if len(strings) >= 2:
                break
    except Exception as exc:  # a malformed opcode stream: genops raises ValueError & co
        raise ModelFileError(f"{what} (a malformed pickle: {exc})") from None
    if strings != ["format", FORMAT]:
        raise ModelFileError(f"{what} (no {FORMAT!r} tag)")


def _tensor(group: dict[str, Any], name: str, where: str) -> torch.Tensor:
    t = group.get(name)
    if not isinstance(t, torch.Tensor):
        raise ModelFileError(f"{where}: {name} is missing or not a tensor")
    return t


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> ExportedModel:
    """Load and check a model file written by :func:`save_model`.

    Steps: the pre-check (a torch zip archive whose pickle opens with our tag, read
    without unpickling), ``torch.load(weights_only=True)``, the version, the structure
    and the sha256 digest over the canonical content; then the model is rebuilt from the
    architecture with the stored filters (``load_state_dict(strict=True)``) on ``device``.
    Raises :class:`ModelFileError` (one line: not ours, damaged, a newer version, tampered
    with) and nothing else for a bad file.
    """
    path = Path(path)
    _precheck(path)
    where = f"{path}"
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{where}: cannot be read safely: {first}") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise ModelFileError(f"{where} is not an archsearch model file")
    version = content.get("version")
    if version not in VERSIONS or isinstance(version, bool):
        raise ModelFileError(
            f"{where}: model file version {version!r}; this archsearch reads versions "
            f"{', '.join(map(str, VERSIONS))}"
        )
    meta, weights, readout = content.get("meta"), content.get("weights"), content.get("readout")
    if not (isinstance(meta, dict) and isinstance(weights, dict) and isinstance(readout, dict)):
        raise ModelFileError(f"{where}: meta, weights and readout must be dictionaries")
    tensors = {"weights": weights, "readout": readout}
    for group, items in tensors.items():
        if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in items.items()):
            raise ModelFileError(f"{where}: {group} must map names to tensors")
    try:
        digest = content_digest(meta, tensors, int(version))
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{where}: metadata is not plain JSON: {exc}") from None
    if digest != content.get("sha256"):
        raise ModelFileError(
            f"{where}: checksum mismatch: the file was changed after export (or is damaged)"
        )
    return _build(meta, weights, readout, where, torch.device(device), int(version))


# The most filter weights a model file may hold (1 GiB of float32).
MAX_PARAMS = 1 << 28


def _build(
    meta: dict[str, Any],
    weights: dict[str, torch.Tensor],
    readout: dict[str, torch.Tensor],
    where: str,
    device: torch.device,
    version: int,
) -> ExportedModel:
    """The :class:`ExportedModel` of checked content; a file whose parts do not fit
    together (our digest, but hand-made) -> :class:`ModelFileError`."""
    from .pairs import PAIR_FEATURES_FINAL

    try:
        protocol = str(meta.get("protocol", "screen"))
        if PROTOCOL_VERSIONS.get(protocol) != version:
            raise ValueError(f"protocol {protocol!r} in a version {version} file")
        kinds = tuple(str(k) for k in meta.get("pair_features", ()))
        if (protocol == "pairs") != bool(kinds) or not set(kinds) <= set(PAIR_FEATURES_FINAL):
            raise ValueError(f"pair features {list(kinds)} for protocol {protocol!r}")
        arch = Architecture.from_dict(meta["arch"])
        # Sizes first: a hand-made file could otherwise ask for any allocation.
        rep = walk(arch)
        if rep.n_params > MAX_PARAMS or rep.n_features > 10**9:
            raise ValueError(f"{rep.n_params} filter weights, {rep.n_features} features")
        model = build_model(arch, max_features=10**9)
        model.load_state_dict(weights, strict=True)
        t = {k: _tensor(readout, k, where) for k in READOUT_KEYS}
        clf = LinearClassifier(
            kind=str(meta["readout_kind"]),
            W=t["W"],
            b=t["b"],
            mean=t["mean"],
            std=t["std"],
            classes=t["classes"].long(),
            l2=float(meta["l2"]),
        )
        names = tuple(str(n) for n in meta["class_names"])
        size = (int(meta["input"]["height"]), int(meta["input"]["width"]))
        color = str(meta["input"]["color"])
    except ModelFileError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, InfeasibleArchitecture) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{where}: inconsistent model file: {first}") from None
    d, c = clf.W.shape if clf.W.ndim == 2 else (-1, -1)
    if (
        d != model.n_features * max(1, len(kinds))
        or (protocol == "pairs" and names != PAIR_CLASSES)
        or clf.b.shape != (c,)
        or clf.mean.shape != (d,)
        or clf.std.shape != (d,)
        or clf.classes.shape != (c,)
        or color not in ("gray", "rgb")
        or (3 if color == "rgb" else 1) != arch.input_channels
        or (clf.classes.numel() and int(clf.classes.max()) >= len(names))
        or (clf.classes.numel() and int(clf.classes.min()) < 0)
    ):
        raise ModelFileError(f"{where}: inconsistent model file: shapes do not fit together")
    # Checked on the CPU; a device that is not there is the caller's error, not the file's.
    model = model.to(device).eval()
    for k in READOUT_KEYS:
        setattr(clf, k, getattr(clf, k).to(device))
    return ExportedModel(arch, model, clf, names, size, color, dict(meta), protocol, kinds)
