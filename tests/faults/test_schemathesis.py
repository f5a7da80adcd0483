"""Property-based API tests generated from our own OpenAPI document (schemathesis):
every route, with an admin token and without one. No 5xx, and every answer matches the
documented schema (status codes, content types, bodies).

Schemathesis' own pytest plugin does not run under this pytest, so each operation's
hypothesis strategy is driven here directly, one parametrised test per route.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from service.app import create_app
from service.config import Settings
from tests.helpers.coordinator import ADMIN_TOKEN, migrate

pytestmark = pytest.mark.slow

_DB = Path(tempfile.mkdtemp(prefix="archsearch-schemathesis-")) / "api.db"
_URL = f"sqlite:///{_DB}"
migrate(_URL)
_APP = create_app(Settings(database_url=_URL, admin_token=ADMIN_TOKEN), maintenance=False)
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", _APP)
OPERATIONS = {op.label: op for op in (r.ok() for r in SCHEMA.get_all_operations())}
# Our validation goes beyond what a JSON schema can say (a space document must compile, a
# preset must be a point of the study's space, a trial must exist): a schema-valid request
# may rightly get a 4xx, so "positive data acceptance" is not a property of this API.
EXCLUDED = [
    c
    for c in schemathesis.checks.CHECKS.get_all()
    if getattr(c, "__name__", "") == "positive_data_acceptance"
]


def test_every_route_is_in_the_document():
    assert len(OPERATIONS) >= 20
    assert "POST /api/v1/trials/{trial_id}/complete" in OPERATIONS


@pytest.mark.parametrize("label", sorted(OPERATIONS))
@pytest.mark.parametrize("authorised", [True, False], ids=["admin", "anonymous"])
def test_route_conforms_to_its_schema(label, authorised):
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"} if authorised else {}

    @given(case=OPERATIONS[label].as_strategy())
    @settings(
        max_examples=15,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def run(case):
        response = case.call_and_validate(headers=headers, excluded_checks=EXCLUDED)
        assert response.status_code < 500, response.text

    run()
