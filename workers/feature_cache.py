"""A worker's cache of extracted screen features, so that an ASHA promotion pays only for
the images its rung adds.

A screen candidate's features depend on its architecture (less the readout), the images
and the feature cap, never on the readout or on which split an image is in. Under a
``train_per_class`` schedule a promoted trial is the same architecture on the same
validation images plus a larger, nested fit subset (:func:`workers.stages.cap_per_class`),
and its final re-uses most of the non-test images; without this cache every rung
extracted them all again, and the validation split alone made a rung-0 trial cost ~30% of
a full one.

:class:`FeatureCache` maps a :class:`FeatureKey` (architecture with the readout reset,
dataset fingerprint, ``max_features``, device) to the rows extracted so far, by image
index, held on the host (a GPU's memory stays for models). It is bounded in bytes and
evicts the least recently used architecture first. One cache belongs to one worker
(:class:`workers.daemon.WorkerDaemon` owns one and passes it to
:func:`workers.evaluators.evaluate` and :func:`workers.screen_group.screen_group` for
scheduled screen studies); it is thread-safe. A
row is stored only after :func:`workers.stages.check_finite` passed on it.

Rows come back bit-identical to the ones stored, so they equal a fresh extraction as far
as two extractions agree: bitwise at the same batch sizes, else within float32 rounding
(see :mod:`workers.screen_group`).
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from search_space.arch import Architecture, Readout

if TYPE_CHECKING:
    import torch

__all__ = ["DEFAULT_FEATURE_CACHE_BYTES", "FeatureCache", "FeatureKey"]

# A worker's default: ~100 rung-0 trials of a 10,000-feature pinto-cox candidate on 750
# images, or a handful of full CIFAR-size matrices. Under --max-memory the daemon gives
# the cache at most a quarter of the budget.
DEFAULT_FEATURE_CACHE_BYTES = 2 << 30


@dataclass(frozen=True)
class FeatureKey:
    """What a screen feature row depends on. Build it with :meth:`of`."""

    arch: Architecture
    data: str
    max_features: int
    device: str

    @classmethod
    def of(
        cls, arch: Architecture, fingerprint: str, max_features: int, device: torch.device
    ) -> FeatureKey:
        """The key of ``arch``'s features on the data with ``fingerprint``: the readout
        and training settings are reset, since the filters do not depend on them."""
        import torch  # the daemon imports this module before it needs torch

        bare = dataclasses.replace(arch, readout=Readout(), train=None)
        return cls(bare, fingerprint, int(max_features), str(torch.device(device)))


@dataclass
class _Rows:
    index: np.ndarray  # sorted, unique image indices
    feats: torch.Tensor  # (len(index), n_features) float32 on the host

    @property
    def nbytes(self) -> int:
        return self.feats.numel() * self.feats.element_size() + self.index.nbytes


class FeatureCache:
    """Feature rows by (:class:`FeatureKey`, image index), at most ``capacity`` bytes.

    ``capacity`` 0 disables it: :meth:`lookup` finds nothing and :meth:`store` keeps
    nothing. Raises ``ValueError`` for a negative capacity."""

    def __init__(self, capacity: int = DEFAULT_FEATURE_CACHE_BYTES) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[FeatureKey, _Rows] = OrderedDict()
        self._bytes = 0
        self._capacity = 0
        self.hits = 0  # rows served, over the cache's life
        self.misses = 0  # rows asked for and not held
        self.resize(capacity)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        return self._bytes

    def resize(self, capacity: int) -> None:
        """Set the byte bound, evicting the least recently used entries past it."""
        if capacity < 0:
            raise ValueError(f"the feature cache size must be >= 0 bytes, got {capacity}")
        with self._lock:
            self._capacity = int(capacity)
            self._evict(0)

    def clear(self) -> None:
        """Drop every entry (the daemon does when its memory budget runs short)."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def lookup(self, key: FeatureKey, index: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        """``(held, rows)``: ``held`` a bool mask over ``index``, ``rows`` the stored
        features of ``index[held]`` in that order (on the host; ``(0, 0)`` when none)."""
        import torch

        index = np.asarray(index, dtype=np.int64)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += len(index)
                return np.zeros(len(index), dtype=bool), torch.empty((0, 0))
            self._entries.move_to_end(key)
            pos = np.searchsorted(entry.index, index)
            pos_c = np.minimum(pos, len(entry.index) - 1)
            held = entry.index[pos_c] == index
            rows = entry.feats[torch.from_numpy(pos_c[held])]
            self.hits += int(held.sum())
            self.misses += int((~held).sum())
            return held, rows

    def holds(self, key: FeatureKey, index: np.ndarray) -> int:
        """How many of ``index`` are held (no copy; does not count as a use)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return 0
            return int(np.isin(np.asarray(index, dtype=np.int64), entry.index).sum())

    def store(self, key: FeatureKey, index: np.ndarray, feats: torch.Tensor) -> None:
        """Add the rows ``feats`` of images ``index`` (any device; copied to the host).
        Rows already held are kept as they are. Nothing is stored when the entry would
        not fit the capacity on its own."""
        import torch

        index = np.asarray(index, dtype=np.int64)
        if len(index) != len(feats):
            raise ValueError(f"{len(index)} indices for {len(feats)} feature rows")
        if self._capacity == 0 or len(index) == 0:
            return
        with self._lock:
            old = self._entries.get(key)
            if old is not None:
                fresh = ~np.isin(index, old.index)
                index, feats = index[fresh], feats[torch.from_numpy(fresh).to(feats.device)]
            add = len(index) * (feats.shape[1] * 4 + index.itemsize)
            size = add + (old.nbytes if old is not None else 0)
            if size > self._capacity or len(index) == 0:
                return
            rows = feats.detach().to("cpu", torch.float32)
            if old is not None:
                index = np.concatenate([old.index, index])
                rows = torch.cat([old.feats, rows])
                self._bytes -= old.nbytes
            order = np.argsort(index, kind="stable")
            entry = _Rows(index[order], rows[torch.from_numpy(order)].contiguous())
            self._entries[key] = entry
            self._entries.move_to_end(key)
            self._bytes += entry.nbytes
            self._evict(keep=1)

    def _evict(self, keep: int) -> None:
        """Drop least recently used entries until within capacity, sparing the ``keep``
        most recent (the one just stored fits on its own). Caller holds the lock."""
        while self._bytes > self._capacity and len(self._entries) > keep:
            _, entry = self._entries.popitem(last=False)
            self._bytes -= entry.nbytes
