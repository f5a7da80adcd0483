"""Built-in search spaces: GET /api/v1/spaces[/{name}]."""

from __future__ import annotations

from fastapi import APIRouter

from protocol.wire import SpaceList, SpaceOut, SpaceSummary
from search_space import DEFAULT_SPACE, get_space, list_spaces

from ..deps import Reader
from ..errors import ErrorBody, NotFound

router = APIRouter(
    prefix="/api/v1/spaces",
    tags=["spaces"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)


@router.get("", response_model=SpaceList)
def spaces(_: Reader) -> SpaceList:
    return SpaceList(
        spaces=[
            SpaceSummary(name=s.name, description=s.description, default=s.name == DEFAULT_SPACE)
            for s in list_spaces()
        ]
    )


@router.get("/{name}", response_model=SpaceOut, responses={404: {"model": ErrorBody}})
def space(name: str, _: Reader) -> SpaceOut:
    try:
        s = get_space(name)
    except KeyError:
        raise NotFound(f"no built-in space {name!r}", field="name") from None
    return SpaceOut(
        name=name, description=s.description, document=s.to_dict(), labels=sorted(s.labels)
    )
