"""The coordinator's look at a dataset's files has a time budget: a huge tree is not an
error (the workers check it), and it never stalls study creation for long."""

from __future__ import annotations

import time

from PIL import Image

from search_space.dataset_uri import DatasetURIError, check_dataset_location


def _tree(root, classes: int = 3, per_class: int = 4) -> None:
    for split in ("train", "test"):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.new("L", (4, 4)).save(d / f"{i}.png")


def test_a_walk_past_its_budget_is_a_message_not_an_error(tmp_path):
    _tree(tmp_path)
    uri = f"imagefolder:{tmp_path}"
    assert check_dataset_location(uri, budget_seconds=10) is None
    message = check_dataset_location(uri, budget_seconds=0)
    assert message is not None and "layout not checked" in message and "0 s" in message


def test_the_budget_bounds_a_walk_of_a_whole_file_system():
    started = time.monotonic()
    try:
        message = check_dataset_location("imagefolder:/", budget_seconds=0.3)
    except DatasetURIError:  # / was walked within the budget and is no image tree
        message = "judged"
    took = time.monotonic() - started
    assert took < 2.0, f"{took:.2f} s"
    assert message == "judged" or "layout not checked" in message
