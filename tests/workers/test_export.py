"""Export and predict (issue 16, part 3): the model file, its checked loader, and parity
with the trial's test score through the real system (coordinator over HTTP, a worker
daemon thread, real data, the CLI)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from archsearch.cli import app
from client import Client
from tests.helpers.archs import export_arch, one_layer_space
from tests.helpers.coordinator import ADMIN_TOKEN
from tests.helpers.data import CIFAR10_MINI_ZIP
from tests.helpers.model_files import rewrite_model_file
from tests.helpers.waiting import wait_finished
from tests.helpers.worker import worker_thread
from workers.datasets import load_dataset
from workers.evaluators import evaluate
from workers.export import ExportError, choose_trial, fit_screen
from workers.model_file import FORMAT, ExportedModel, ModelFileError, load_model, save_model
from workers.predict import PredictInputError, image_paths, read_images


@pytest.fixture(scope="module")
def digits():
    return load_dataset("builtin:digits", color="gray", seed=0)


@pytest.fixture(scope="module")
def digits_model(digits, tmp_path_factory) -> tuple[Path, float]:
    """A digits model written to a file, with the final screen score of the same arch."""
    arch = export_arch(16)
    model, clf, acc = fit_screen(
        arch, digits, kind="ridge", seed=0, device=torch.device("cpu"), max_features=10**6
    )
    path = tmp_path_factory.mktemp("model") / "digits.pt"
    exported = ExportedModel(arch, model, clf, digits.classes, (8, 8), "gray", {"note": "t"})
    save_model(exported, path)
    return path, acc


# -- the file -------------------------------------------------------------------------
def test_the_file_loads_with_plain_torch_weights_only(digits_model):
    path, _ = digits_model
    content = torch.load(path, weights_only=True)
    assert content["format"] == FORMAT and content["version"] == 1
    assert set(content) == {"format", "version", "sha256", "meta", "weights", "readout"}
    assert content["meta"]["class_names"] == [str(i) for i in range(10)]
    assert content["meta"]["arch"]["seed"] == 7
    assert content["readout"]["W"].shape[1] == 10
    assert content["weights"]["layers.0.fbcorr.weight"].shape == (8, 1, 3, 3)


def test_loaded_model_scores_what_the_final_screen_evaluation_scored(digits, digits_model):
    path, acc = digits_model
    final = evaluate("screen", export_arch(16), digits, final=True, seed=0)
    assert acc == final.value
    loaded = load_model(path)
    test = digits.is_test
    pred = loaded.predict_indices(digits.x[test])
    assert int((pred == digits.y[test]).sum()) == round(final.value * test.sum())
    assert loaded.predict(digits.x[test][:3]) == [digits.classes[i] for i in pred[:3]]


def test_a_scheduled_studys_export_refits_as_its_capped_final(digits):
    """With a train_per_class schedule the finals fit on at most ``max`` images per class
    (daemon._rung_budget); the export re-fits on the same rows, so it scores the same."""
    from protocol.wire import StudyOut
    from workers.export import final_train_per_class

    base = {
        "id": 1, "name": "s", "dataset": "builtin:digits", "dataset_fingerprint": None,
        "space_name": None, "evaluator": "screen", "evaluator_options": {},
        "algorithm": "tpe", "algorithm_options": {}, "state": "finished", "max_trials": 1,
        "max_parallel": 1, "top_k": 1, "seed": 0, "created_at": "2026-01-01T00:00:00Z",
        "space": {}, "counts": {}, "best_value": None, "infeasible_rate": None,
    }  # fmt: skip
    schedule = {"kind": "asha", "resource": "train_per_class", "min": 5, "max": 20, "eta": 3}
    scheduled = StudyOut.model_validate({**base, "schedule": schedule})
    assert final_train_per_class(scheduled) == 20
    assert final_train_per_class(StudyOut.model_validate(base)) is None
    arch = export_arch(16)
    final = evaluate("screen", arch, digits, final=True, seed=0, train_per_class=20)
    full = evaluate("screen", arch, digits, final=True, seed=0)
    assert final.metrics["n_fit"] == 200 < full.metrics["n_fit"]
    _, _, acc = fit_screen(
        arch, digits, kind="ridge", seed=0, device=torch.device("cpu"), max_features=10**6,
        train_per_class=20,
    )  # fmt: skip
    assert acc == final.value != full.value


def test_wrong_size_or_channels_in_python_is_a_clear_error(digits_model):
    loaded = load_model(digits_model[0])
    with pytest.raises(ValueError, match="9x8 pixels; this model takes 8x8"):
        loaded.predict(np.zeros((1, 1, 9, 8), np.uint8))
    with pytest.raises(ValueError, match=r"3 channel\(s\); this model takes 1 \(gray\)"):
        loaded.predict(np.zeros((1, 3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        loaded.predict(np.zeros((1, 1, 8, 8), np.float32))


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c["readout"]["W"].mul_(1.001),
        lambda c: c["weights"]["layers.0.fbcorr.weight"].neg_(),
        lambda c: c["meta"]["class_names"].reverse(),
        lambda c: c["meta"].update(l2=1.0),
    ],
    ids=["readout", "filters", "class-names", "meta"],
)
def test_a_tampered_file_is_refused(digits_model, tmp_path, change):
    bad = tmp_path / "bad.pt"
    rewrite_model_file(digits_model[0], bad, change)
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        load_model(bad)


def test_a_newer_version_is_refused_by_name(digits_model, tmp_path):
    bad = tmp_path / "v3.pt"
    rewrite_model_file(digits_model[0], bad, lambda c: c.update(version=3))
    with pytest.raises(ModelFileError, match="version 3; this archsearch reads versions 1, 2"):
        load_model(bad)


class Boom:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, ("raise SystemExit('unpickled!')",))


def _no_torch_load(monkeypatch):  # type: ignore[no-untyped-def]
    def refuse(*a, **k):  # type: ignore[no-untyped-def]
        raise AssertionError("torch.load was called on a file that is not ours")

    monkeypatch.setattr(torch, "load", refuse)


@pytest.mark.parametrize(
    "make",
    [
        lambda p: p.write_bytes(pickle.dumps(Boom())),
        lambda p: p.write_bytes(b"not a model at all"),
        lambda p: torch.save({"weights": torch.zeros(2)}, p),
        lambda p: torch.save({"format": "other", "x": Boom()}, p),
    ],
    ids=["plain-pickle", "bytes", "other-torch-file", "other-tag-with-payload"],
)
def test_a_file_that_is_not_ours_is_refused_before_any_unpickling(tmp_path, monkeypatch, make):
    path = tmp_path / "x.pt"
    make(path)
    _no_torch_load(monkeypatch)
    with pytest.raises(ModelFileError, match="is not an archsearch model file"):
        load_model(path)


def test_our_tag_with_a_hostile_payload_is_refused_by_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "version": 1, "evil": Boom()}, path)
    with pytest.raises(ModelFileError, match="cannot be read safely"):
        load_model(path)


def test_a_truncated_archive_is_refused(digits_model, tmp_path):
    data = digits_model[0].read_bytes()
    bad = tmp_path / "cut.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError):
        load_model(bad)


# -- images from files ----------------------------------------------------------------
def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def test_read_images_checks_size_and_channels_and_converts_on_request(tmp_path):
    gray = _png(tmp_path / "g.png", np.full((8, 8), 200, np.uint8))
    big = _png(tmp_path / "big.png", np.full((16, 16), 200, np.uint8))
    rgb = _png(tmp_path / "c.png", np.full((8, 8, 3), 200, np.uint8))
    (tmp_path / "junk.png").write_bytes(b"no image")
    out = read_images([gray], color="gray", size=(8, 8))
    assert out.shape == (1, 1, 8, 8) and out.dtype == np.uint8 and int(out.max()) == 200
    with pytest.raises(PredictInputError, match=r"big.png: 16x16 pixels; this model takes 8x8"):
        read_images([gray, big], color="gray", size=(8, 8))
    with pytest.raises(PredictInputError, match=r"c.png: 3 channel\(s\) \(mode RGB\)"):
        read_images([rgb], color="gray", size=(8, 8))
    with pytest.raises(PredictInputError, match=r"g.png: 1 channel\(s\)"):
        read_images([gray], color="rgb", size=(8, 8))
    assert read_images([big, rgb], color="gray", size=(8, 8), convert=True).shape == (2, 1, 8, 8)
    with pytest.raises(PredictInputError, match=r"junk\.png: cannot decode"):
        read_images([tmp_path / "junk.png"], color="gray", size=(8, 8))
    with pytest.raises(PredictInputError, match="no such file"):
        image_paths([tmp_path / "missing.png"])
    assert image_paths([tmp_path]) == sorted(tmp_path.glob("*.png"))


def test_choose_trial_refuses_what_cannot_be_exported():
    with pytest.raises(ExportError, match="no complete trial"):
        choose_trial([], None)
    with pytest.raises(ExportError, match="no trial number 3"):
        choose_trial([], 3)


# -- end to end: study -> export-model -> predict ---------------------------------------
def _run_study(live, token: str, tmp_path: Path, **study) -> int:  # type: ignore[no-untyped-def]
    """Create a one-trial screen study of the fixed one-layer space (top_k 1: the trial
    is re-scored on the test split) and run it to the end with a worker thread."""
    # One small layer: a feature map of 28 px mnist images in about a second on 2 cores.
    space = one_layer_space("one-layer", 28, 16, 5)
    with Client(live.base_url, ADMIN_TOKEN) as admin:
        sid = admin.create_study(
            name="export",
            space=space,
            algorithm="random",
            max_trials=1,
            max_parallel=1,
            top_k=1,
            **study,
        ).id
        with worker_thread(live.base_url, token, tmp_path / "w"):
            wait_finished(admin, sid, timeout=240)
    return sid


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(400)
@pytest.mark.parametrize(
    "dataset,options",
    [
        ("builtin:mnist5k", {"max_per_class": {"train": 100, "test": 40}}),
        (f"imagefolder:{CIFAR10_MINI_ZIP}", {}),
    ],
    ids=["mnist5k", "cifar10-mini"],
)
def test_exported_model_scores_the_trials_test_value_to_the_last_image(
    system, tmp_path, dataset, options
):
    live, token = system
    sid = _run_study(live, token, tmp_path, dataset=dataset, evaluator_options=options)
    with Client(live.base_url, ADMIN_TOKEN) as admin:
        trial = next(t for t in admin.trials(sid) if not t.is_final)
        study = admin.study(sid)
    assert trial.state == "COMPLETE" and trial.test_value is not None, trial.reason
    out = tmp_path / "model.pt"
    runner = CliRunner()
    args = ["--coordinator", live.base_url, "--token", ADMIN_TOKEN]
    result = runner.invoke(app, ["study", "export-model", str(sid), "-o", str(out), *args])
    assert result.exit_code == 0, result.output
    assert f"trial {trial.number}" in result.output

    loaded = load_model(out)
    assert loaded.meta["test_value"] == trial.test_value
    assert loaded.meta["dataset_fingerprint"] == study.dataset_fingerprint
    color = "rgb" if dataset.startswith("imagefolder") else "gray"
    ds = load_dataset(
        dataset, color=color, seed=study.seed, max_per_class=options.get("max_per_class")
    )
    test = np.flatnonzero(ds.is_test)
    pred = loaded.predict_indices(ds.x[test])
    correct = int((pred == ds.y[test]).sum())
    # To the last image: the same count of correct test images as the final evaluation.
    assert correct == round(trial.test_value * len(test)), (correct, trial.test_value)
    assert loaded.meta["export_test_value"] == trial.test_value

    # predict from image files, through the CLI, gives the same labels.
    pics = tmp_path / "pics"
    pics.mkdir()
    for k, i in enumerate(test[:12]):
        img = ds.x[i].transpose(1, 2, 0)
        _png(pics / f"{k:03d}.png", img[:, :, 0] if color == "gray" else img)
    result = runner.invoke(app, ["predict", str(out), str(pics), "--csv"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0] == "path,label"
    assert [line.split(",")[1] for line in lines[1:]] == [ds.classes[p] for p in pred[:12]]

    # The same trial as ONNX: onnxruntime labels the test images as the model file does.
    import onnxruntime as ort

    graph = tmp_path / "model.onnx"
    cmd = ["study", "export-model", str(sid), "-o", str(graph), "--format", "onnx", *args]
    result = runner.invoke(app, cmd)
    assert result.exit_code == 0, result.output
    assert "max relative difference to torch" in result.output
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    scores = session.run(["scores"], {"images": ds.x[test]})[0]
    assert (loaded.readout.classes.numpy()[scores.argmax(1)] == pred).all()


def test_predict_cli_refuses_bad_inputs_with_exit_1(tmp_path, digits_model):
    runner = CliRunner()
    result = runner.invoke(app, ["predict", str(digits_model[0]), str(tmp_path / "none.png")])
    assert result.exit_code == 1 and "no such file" in result.output
    (tmp_path / "x.pt").write_bytes(b"junk")
    result = runner.invoke(app, ["predict", str(tmp_path / "x.pt"), str(digits_model[0])])
    assert result.exit_code == 1 and "not an archsearch model file" in result.output
    wrong = _png(tmp_path / "w.png", np.zeros((9, 9), np.uint8))
    result = runner.invoke(app, ["predict", str(digits_model[0]), str(wrong)])
    assert result.exit_code == 1 and "9x9 pixels; this model takes 8x8" in result.output
    result = runner.invoke(app, ["predict", str(digits_model[0]), str(wrong), "--convert"])
    assert result.exit_code == 0 and result.output.startswith(f"{wrong}\t")


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_export_model_refuses_a_train_study(system):
    live, _ = system
    with Client(live.base_url, ADMIN_TOKEN) as admin:
        sid = admin.create_study(
            name="t", dataset="builtin:mnist5k", evaluator="train", max_trials=1
        ).id
    args = ["--coordinator", live.base_url, "--token", ADMIN_TOKEN]
    result = CliRunner().invoke(app, ["study", "export-model", str(sid), "-o", "m.pt", *args])
    assert result.exit_code == 1, result.output
    assert "uses the 'train' protocol; export supports screen, pairs" in result.output
