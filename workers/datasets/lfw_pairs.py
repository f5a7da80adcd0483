"""The parser of LFW's pairs files (pairsDevTrain.txt, pairsDevTest.txt, pairs.txt).

``_parse_pairs_file`` turns one file into ``_PairLine`` records (two ``(person name, image
number)`` references, same / different, and the ``file:line`` they came from), one list per
fold. It reads only the named file and checks the format; whether the named people and
images exist is checked by :mod:`workers.datasets.lfw`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .core import DatasetError


@dataclass(frozen=True)
class _PairLine:
    a: tuple[str, int]
    b: tuple[str, int]
    same: bool
    where: str  # "pairs.txt:17"


def _parse_pairs_file(uri: str, file: Path, *, view2: bool) -> list[list[_PairLine]]:
    """LFW's pairs format -> one list of pairs per fold (View 1 files have one fold).

    Header: ``N`` (pairsDev*) or ``FOLDS N`` (pairs.txt); then per fold N "same" lines
    ``name n1 n2`` followed by N "different" lines ``name1 n1 name2 n2``. Blank lines are
    skipped; a wrong token count, a bad number or a missing / extra line -> DatasetError
    naming the file and line.
    """
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{uri}: cannot read {file}: {exc}") from exc
    lines = [(i + 1, ln.split()) for i, ln in enumerate(text.splitlines()) if ln.strip()]
    if not lines:
        raise DatasetError(f"{uri}: {file} is empty")
    hline, header = lines[0]
    want = 2 if view2 else 1
    if len(header) != want or not all(t.isdigit() for t in header):
        form = "FOLDS N" if view2 else "N"
        raise DatasetError(f"{uri}: {file.name}:{hline}: header must be {form!r}, got {header}")
    folds, n = (int(header[0]), int(header[1])) if view2 else (1, int(header[0]))
    body = lines[1:]
    if len(body) != folds * 2 * n:
        raise DatasetError(
            f"{uri}: {file.name}: header says {folds} fold(s) x (2 x {n}) = {folds * 2 * n} "
            f"pair lines, found {len(body)}"
        )
    out: list[list[_PairLine]] = []
    for f in range(folds):
        block = body[f * 2 * n : (f + 1) * 2 * n]
        pairs = []
        for k, (lineno, tok) in enumerate(block):
            same = k < n
            where = f"{file.name}:{lineno}"
            if same and len(tok) != 3:
                raise DatasetError(f"{uri}: {where}: a 'same' line must be 'name n1 n2', got {tok}")
            if not same and len(tok) != 4:
                raise DatasetError(
                    f"{uri}: {where}: a 'different' line must be 'name1 n1 name2 n2', got {tok}"
                )
            names_nums = (
                [(tok[0], tok[1]), (tok[0], tok[2])]
                if same
                else [
                    (tok[0], tok[1]),
                    (tok[2], tok[3]),
                ]
            )
            refs = []
            for name, num in names_nums:
                if not num.isdigit() or int(num) < 1:
                    raise DatasetError(f"{uri}: {where}: image number {num!r} is not >= 1")
                if name.startswith(".") or "/" in name or "\\" in name:
                    raise DatasetError(f"{uri}: {where}: {name!r} is not a person folder name")
                refs.append((name, int(num)))
            pairs.append(_PairLine(a=refs[0], b=refs[1], same=same, where=where))
        out.append(pairs)
    return out
