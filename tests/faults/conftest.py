"""The coordinator fixtures of tests/service, for the fault suite."""

from tests.service.conftest import api, api_factory, live  # noqa: F401
