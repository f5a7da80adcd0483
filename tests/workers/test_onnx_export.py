"""ONNX export (issue 16, part 3): the graph of a screen model run by onnxruntime matches
the torch model within 1e-4 on real images and predicts the same labels, for models
covering every op variant (lpool p = 1, 2, 10 and fractional, centred and plain lnorm,
lnorm0 on and off, resize, div255, RGB); the metadata names the columns; a graph that
disagrees with torch is not written."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from search_space.arch import Activation, Architecture, FBCorr, Layer, LNorm, LPool, Readout
from tests.helpers.data import CIFAR10_MINI_ZIP
from workers.datasets import load_dataset
from workers.export import fit_screen
from workers.model_file import ExportedModel
from workers.onnx_export import TOLERANCE, OnnxExportError, check_onnx, save_onnx, to_onnx_bytes

CPU = torch.device("cpu")


def _layer(n: int, fs: int, pool: tuple[int, float, int], norm: LNorm, lo: float, hi: float):  # type: ignore[no-untyped-def]
    size, order, stride = pool
    return Layer(
        fbcorr=FBCorr(n_filters=n, size=fs),
        activation=Activation(min_out=lo, max_out=hi),
        lpool=LPool(size=size, order=order, stride=stride),
        lnorm=norm,
    )


# Three architectures; between them every op variant of the model family.
ARCHS = {
    # FG11's L3 kind of layer: p = 10 with a centred lnorm, then a box-sum pool (p = 1).
    "lpool10-centred-lnorm": lambda: Architecture(
        input_size=32,
        input_channels=1,
        lnorm0=LNorm(size=5, remove_mean=True, stretch=10.0, threshold=1.0),
        layers=(
            _layer(16, 3, (3, 10.0, 2), LNorm(3, True, 0.1, 1.0), 0.0, math.inf),
            _layer(24, 3, (2, 1.0, 1), LNorm(3, False, 1.0, 0.1), -math.inf, 1.0),
        ),
        readout=Readout(kind="ridge", l2=None),
        seed=42,
    ),
    # p = 2 and a fractional p, no lnorm0, div255 input.
    "lpool2-fractional-div255": lambda: Architecture(
        input_size=28,
        input_channels=1,
        lnorm0=None,
        layers=(
            _layer(8, 5, (3, 2.0, 2), LNorm(3, False, 1.0, 1.0), -math.inf, math.inf),
            _layer(12, 3, (2, 0.7, 1), LNorm(3, True, 10.0, 0.1), 0.0, math.inf),
        ),
        readout=Readout(kind="logistic", l2=1.0),
        seed=3,
        preprocess="div255",
    ),
}


@pytest.fixture(scope="module")
def mnist():  # type: ignore[no-untyped-def]
    return load_dataset(
        "builtin:mnist5k", color="gray", seed=0, max_per_class={"train": 40, "test": 20}
    )


@pytest.fixture(scope="module")
def cifar():  # type: ignore[no-untyped-def]
    return load_dataset(f"imagefolder:{CIFAR10_MINI_ZIP}", color="rgb", seed=0)


def _export(arch: Architecture, ds) -> tuple[ExportedModel, float]:  # type: ignore[no-untyped-def]
    kind = arch.readout.kind
    model, clf, acc = fit_screen(arch, ds, kind=kind, seed=0, device=CPU, max_features=10**6)
    size = (int(ds.x.shape[2]), int(ds.x.shape[3]))
    color = "rgb" if ds.x.shape[1] == 3 else "gray"
    meta = {"study_id": 1, "trial_number": 4, "test_value": acc, "dataset": "x"}
    return ExportedModel(arch, model.eval(), clf, tuple(ds.classes), size, color, meta), acc


@pytest.fixture(scope="module")
def exported_mnist(mnist):  # type: ignore[no-untyped-def]
    """Each architecture of ARCHS fitted on the mnist subset once: (model, test accuracy)."""
    return {name: _export(make(), mnist) for name, make in ARCHS.items()}


def _ort_scores(path, images: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["scores"], {"images": images})[0]


def _parity(exported: ExportedModel, acc: float, ds, tmp_path) -> None:  # type: ignore[no-untyped-def]
    test = np.flatnonzero(ds.is_test)
    path = tmp_path / "model.onnx"
    diff = save_onnx(exported, path, check_images=ds.x[test])
    assert diff <= TOLERANCE
    got = _ort_scores(path, ds.x[test])
    want = exported.decision(ds.x[test]).numpy()
    scale = max(1.0, float(np.abs(want).max()))
    assert float(np.abs(got - want).max()) / scale <= TOLERANCE
    columns = json.loads(
        {p.key: p.value for p in onnx.load(str(path)).metadata_props}["class_names"]
    )
    labels = [columns[j] for j in got.argmax(1)]
    assert labels == exported.predict(ds.x[test])  # the same label for every image
    # ... hence the same test accuracy as the final screen evaluation, to the image.
    correct = sum(label == ds.classes[y] for label, y in zip(labels, ds.y[test], strict=True))
    assert correct == round(acc * len(test))


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_onnx_scores_match_torch_on_mnist(mnist, exported_mnist, tmp_path, name):
    exported, acc = exported_mnist[name]
    _parity(exported, acc, mnist, tmp_path)


@pytest.mark.parametrize("size", [40, 24], ids=["upsample", "downsample"])
def test_onnx_scores_match_torch_on_rgb_cifar_with_a_resize(cifar, tmp_path, size):
    """32 px RGB JPEGs resized inside the graph; box-sum pooling, centred lnorm0."""
    arch = Architecture(
        input_size=size,
        input_channels=3,
        lnorm0=LNorm(size=3, remove_mean=True, stretch=1.0, threshold=1.0),
        layers=(_layer(16, 5, (3, 1.0, 2), LNorm(5, False, 10.0, 1.0), 0.0, 1.0),),
        readout=Readout(kind="ridge", l2=None),
        seed=11,
    )
    exported, acc = _export(arch, cifar)
    _parity(exported, acc, cifar, tmp_path)


def test_the_graph_takes_any_batch_and_carries_its_metadata(mnist, exported_mnist, tmp_path):
    exported, _ = exported_mnist["lpool2-fractional-div255"]
    path = tmp_path / "m.onnx"
    save_onnx(exported, path)  # checked on seeded random pixels
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["format"] == "archsearch-onnx"
    assert json.loads(meta["class_names"]) == [str(i) for i in range(10)]
    assert json.loads(meta["input"]) == {"height": 28, "width": 28, "color": "gray"}
    assert json.loads(meta["arch"]) == exported.arch.to_dict()
    assert json.loads(meta["provenance"])["trial_number"] == 4
    for n in (1, 5):
        x = mnist.x[:n]
        assert _ort_scores(path, x).shape == (n, 10)
        assert _ort_scores(path, x).argmax(1).tolist() == exported.predict_indices(x).tolist()
    # The check runs onnxruntime in batches of CHECK_BATCH; every image is scored.
    _, got = check_onnx(path.read_bytes(), exported, mnist.x[:37])
    assert got.shape == (37, 10)
    assert np.allclose(got, _ort_scores(path, mnist.x[:37]), rtol=1e-5, atol=1e-6)


def test_a_graph_that_disagrees_with_torch_is_refused(mnist, exported_mnist):
    one, _ = exported_mnist["lpool2-fractional-div255"]
    two, _ = exported_mnist["lpool10-centred-lnorm"]  # same input and classes, other model
    with pytest.raises(OnnxExportError, match="differ from torch's by"):
        check_onnx(to_onnx_bytes(two), one, mnist.x[:32])


def test_without_the_extra_the_error_names_it(exported_mnist, tmp_path, monkeypatch):
    exported, _ = exported_mnist["lpool2-fractional-div255"]
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    with pytest.raises(ImportError, match=r"archsearch\[onnx\]"):
        save_onnx(exported, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
