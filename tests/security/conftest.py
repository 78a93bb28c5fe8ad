"""Security tests reuse the integration fixtures: zoo exports and real server processes."""

from integration.conftest import exported  # noqa: F401 - re-exported fixture
