"""Exported model files (workers.model_file) changed behind the loader's back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def rewrite_model_file(path: Path, out: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    """Write to ``out`` the content of the model file ``path`` as ``change`` leaves it
    (the digest is not recomputed unless ``change`` does it)."""
    content = torch.load(path, weights_only=True)
    change(content)
    torch.save(content, out)
