"""Pairs export and predict (issue 16, part 3): a pairs study's model is its View 1 model
(readout fitted on pairsDevTrain), which scores pairsDevTest exactly as the search
evaluation did, to the pair; ``predict --pairs FILE`` calls each pair same or different;
a tampered pairs file and a malformed pairs list are refused with a clear message.

Real faces: the LFW-layout tree built from the committed AT&T fixture
(tests/workers/lfw_fixture.py), loaded as the worker loads it (native 112x92, gray).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from archsearch.cli import app
from archsearch.launch import start_coordinator, stop_coordinator
from client import Client
from service.models import Role
from tests.helpers.archs import export_arch, one_layer_space
from tests.helpers.coordinator import ADMIN_TOKEN, make_token, migrate
from tests.helpers.data import ATT_FACES_MINI_ZIP
from tests.helpers.model_files import rewrite_model_file
from tests.helpers.waiting import wait_finished
from tests.helpers.worker import worker_thread
from tests.workers.lfw_fixture import build_lfw_tree
from workers.datasets import load_dataset
from workers.evaluators import evaluate
from workers.export import fit_pairs, fit_screen
from workers.model_file import PAIR_CLASSES, ExportedModel, ModelFileError, load_model, save_model
from workers.pairs import PAIR_FEATURES_SEARCH

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def lfw_root(tmp_path_factory) -> Path:
    return build_lfw_tree(
        ATT_FACES_MINI_ZIP, tmp_path_factory.mktemp("lfw") / "lfw", people=10, dev_train=100,
        dev_test=50, folds=2, per_fold=40,
    )  # fmt: skip


@pytest.fixture(scope="module")
def lfw(lfw_root):  # type: ignore[no-untyped-def]
    return load_dataset(f"lfw:{lfw_root}", color="gray", seed=0)


@pytest.fixture(scope="module")
def pairs_model(lfw, tmp_path_factory) -> tuple[Path, float, int]:
    """(model file, its View 1 accuracy, pairs scored), fitted as a search trial with
    study seed 0 would be."""
    arch = export_arch(32)
    model, clf, acc, n = fit_pairs(arch, lfw, kind="ridge", seed=0, device=CPU, max_features=10**6)
    size = (int(lfw.x.shape[2]), int(lfw.x.shape[3]))
    exported = ExportedModel(
        arch, model, clf, PAIR_CLASSES, size, "gray", {"t": 1}, "pairs", PAIR_FEATURES_SEARCH
    )
    path = tmp_path_factory.mktemp("model") / "pairs.pt"
    save_model(exported, path)
    return path, acc, n


def _dev_test(ds):  # type: ignore[no-untyped-def]
    p = ds.pairs
    return np.asarray(p.dev_test).reshape(-1, 2), np.asarray(p.dev_test_same, dtype=bool)


def test_the_pairs_model_scores_the_search_value_to_the_pair(lfw, pairs_model):
    path, acc, n = pairs_model
    search = evaluate("pairs", export_arch(32), lfw, seed=0)  # what a search trial reports
    assert acc == search.value and n == search.metrics["n_scored"] == 100
    loaded = load_model(path)
    assert loaded.protocol == "pairs" and loaded.class_names == PAIR_CLASSES
    assert torch.load(path, weights_only=True)["version"] == 2
    pairs, same = _dev_test(lfw)
    labels, scores = loaded.predict_pairs(lfw.x[pairs[:, 0]], lfw.x[pairs[:, 1]])
    called_same = np.array([label == "same" for label in labels])
    assert (called_same == (scores > 0)).all()  # the score's sign is the label
    assert int((called_same == same).sum()) == round(search.value * len(same))
    assert search.value > 0.6  # faces: chance is 0.5


def test_a_pairs_model_labels_no_single_image_and_vice_versa(lfw, pairs_model):
    loaded = load_model(pairs_model[0])
    with pytest.raises(ValueError, match="this is a pairs model: it compares pairs"):
        loaded.predict(lfw.x[:2])
    with pytest.raises(ValueError, match="2 first images but 1 second"):
        loaded.predict_pairs(lfw.x[:2], lfw.x[:1])


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c["readout"]["b"].add_(0.5),
        lambda c: c["meta"].update(pair_features=["absdiff"]),
        lambda c: c["meta"].update(protocol="screen"),
    ],
    ids=["readout", "pair-features", "protocol"],
)
def test_a_tampered_pairs_file_is_refused(pairs_model, tmp_path, change):
    bad = tmp_path / "bad.pt"
    rewrite_model_file(pairs_model[0], bad, change)
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        load_model(bad)


def test_a_pairs_model_with_a_screen_version_is_refused(pairs_model, tmp_path):
    """A hand-made file with a valid digest whose version says screen but meta says pairs:
    refused as inconsistent (a version-1 reader would misread it)."""
    from workers.model_file import content_digest

    def to_v1(c):  # type: ignore[no-untyped-def]
        c["version"] = 1
        tensors = {"weights": c["weights"], "readout": c["readout"]}
        c["sha256"] = content_digest(c["meta"], tensors, 1)

    bad = tmp_path / "v1.pt"
    rewrite_model_file(pairs_model[0], bad, to_v1)
    with pytest.raises(ModelFileError, match="protocol 'pairs' in a version 1 file"):
        load_model(bad)


def test_a_newer_version_names_the_versions_read(pairs_model, tmp_path):
    bad = tmp_path / "v3.pt"
    rewrite_model_file(pairs_model[0], bad, lambda c: c.update(version=3))
    with pytest.raises(ModelFileError, match="version 3; this archsearch reads versions 1, 2"):
        load_model(bad)


# -- predict --pairs through the CLI ------------------------------------------------------
def _pair_files(ds, pairs: np.ndarray, where: Path) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """Each pair's two images as PNG files (lossless: the dataset's pixels); relative names."""
    where.mkdir(parents=True, exist_ok=True)
    names = []
    for i, j in pairs:
        for k in (i, j):
            Image.fromarray(ds.x[k, 0]).save(where / f"{k:04d}.png")
        names.append((f"img/{i:04d}.png", f"img/{j:04d}.png"))
    return names


def test_predict_pairs_cli_prints_same_or_different_per_pair(lfw, pairs_model, tmp_path):
    path, acc, _ = pairs_model
    pairs, same = _dev_test(lfw)
    names = _pair_files(lfw, pairs, tmp_path / "img")
    listing = tmp_path / "pairs.txt"
    # Both line forms, a comment and a blank line.
    lines = ["# image1 image2", ""]
    lines += [f"{a} {b}" if n % 2 else f"{a},{b}" for n, (a, b) in enumerate(names)]
    listing.write_text("\n".join(lines) + "\n")
    runner = CliRunner()
    result = runner.invoke(app, ["predict", str(path), "--pairs", str(listing)])
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.output.strip().splitlines()]
    assert len(rows) == len(pairs)
    assert rows[0][0] == str(tmp_path / names[0][0]) and rows[0][1] == str(tmp_path / names[0][1])
    assert all(
        r[2] in ("same", "different") and (float(r[3]) > 0) == (r[2] == "same") for r in rows
    )
    correct = sum((r[2] == "same") == s for r, s in zip(rows, same, strict=True))
    assert correct == round(acc * len(same))  # the model file's View 1 score, via files
    result = runner.invoke(app, ["predict", str(path), "--pairs", str(listing), "--csv"])
    assert result.exit_code == 0, result.output
    csv_lines = result.output.strip().splitlines()
    assert csv_lines[0] == "image1,image2,label,score"
    assert [c.split(",")[2] for c in csv_lines[1:]] == [r[2] for r in rows]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("img/a.png img/a.png img/a.png\n", "pairs.txt:1: expected two image paths"),
        ("# only a comment\n", "no pairs in the file"),
        ("img/a.png\n", "pairs.txt:1: expected two image paths"),
        ("img/a.png,\n", "pairs.txt:1: expected two image paths"),
        ("img/a.png img/none.png\n", "pairs.txt:1: " + "{tmp}/img/none.png: no such image"),
        ("\n\nimg/a.png img/big.png\n", "big.png: 40x40 pixels; this model takes 112x92"),
    ],
    ids=["three-fields", "empty", "one-field", "empty-field", "missing-image", "wrong-size"],
)
def test_a_bad_pairs_file_is_a_clear_error(pairs_model, tmp_path, content, fragment):
    (tmp_path / "img").mkdir()
    Image.fromarray(np.zeros((112, 92), np.uint8)).save(tmp_path / "img" / "a.png")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "img" / "big.png")
    listing = tmp_path / "pairs.txt"
    listing.write_text(content)
    result = CliRunner().invoke(app, ["predict", str(pairs_model[0]), "--pairs", str(listing)])
    assert result.exit_code == 1, result.output
    assert fragment.format(tmp=tmp_path) in result.output


def test_predict_refuses_to_mix_pairs_and_single_images(pairs_model, tmp_path):
    digits = load_dataset("builtin:digits", color="gray", seed=0)
    arch = export_arch(16)
    model, clf, _ = fit_screen(arch, digits, kind="ridge", seed=0, device=CPU, max_features=10**6)
    screen = tmp_path / "screen.pt"
    save_model(ExportedModel(arch, model, clf, digits.classes, (8, 8), "gray", {}), screen)
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(img)
    listing = tmp_path / "p.txt"
    listing.write_text(f"{img} {img}\n")
    runner = CliRunner()
    result = runner.invoke(app, ["predict", str(screen), "--pairs", str(listing)])
    assert result.exit_code == 1 and "--pairs needs a model exported from a pairs study" in (
        result.output
    )
    result = runner.invoke(app, ["predict", str(pairs_model[0]), str(img)])
    assert result.exit_code == 1 and "is a pairs model: give the pairs with --pairs" in (
        result.output
    )


# -- end to end: a pairs study -> export-model -> predict --pairs --------------------------
@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_export_of_a_pairs_study_scores_the_trials_value_to_the_pair(
    sqlite_url, lfw_root, lfw, tmp_path
):
    migrate(sqlite_url)
    live = start_coordinator(sqlite_url, admin_token=ADMIN_TOKEN)
    try:
        token = make_token(sqlite_url, Role.WORKER)
        space = one_layer_space("one-layer", 32, 8, 3)
        with Client(live.base_url, ADMIN_TOKEN) as admin:
            sid = admin.create_study(
                name="pairs-export",
                dataset=f"lfw:{lfw_root}",
                space=space,
                evaluator="pairs",
                algorithm="random",
                max_trials=1,
                max_parallel=1,
                top_k=1,
            ).id
            with worker_thread(live.base_url, token, tmp_path / "w"):
                wait_finished(admin, sid, timeout=240)
            trial = next(t for t in admin.trials(sid) if not t.is_final)
            study = admin.study(sid)
        assert trial.state == "COMPLETE" and trial.test_value is not None, trial.reason
        out = tmp_path / "pairs.pt"
        args = ["--coordinator", live.base_url, "--token", ADMIN_TOKEN]
        runner = CliRunner()
        result = runner.invoke(app, ["study", "export-model", str(sid), "-o", str(out), *args])
        assert result.exit_code == 0, result.output
        assert "View 1 accuracy" in result.output
        onnx_out = tmp_path / "pairs.onnx"
        cmd = ["study", "export-model", str(sid), "-o", str(onnx_out), "--format", "onnx", *args]
        result = runner.invoke(app, cmd)
        assert result.exit_code == 1 and "ONNX export supports screen models only" in (
            result.output
        )
        assert not onnx_out.exists()
    finally:
        stop_coordinator(live)
    loaded = load_model(out)
    assert loaded.meta["export_view1_value"] == trial.value  # to the pair
    assert loaded.meta["dataset_fingerprint"] == study.dataset_fingerprint
    pairs, same = _dev_test(lfw)
    names = _pair_files(lfw, pairs, tmp_path / "img")
    listing = tmp_path / "pairs.txt"
    listing.write_text("".join(f"{a} {b}\n" for a, b in names))
    result = CliRunner().invoke(app, ["predict", str(out), "--pairs", str(listing), "--csv"])
    assert result.exit_code == 0, result.output
    called = [line.split(",")[2] == "same" for line in result.output.strip().splitlines()[1:]]
    assert sum(c == s for c, s in zip(called, same, strict=True)) == round(trial.value * len(same))
