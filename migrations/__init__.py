"""Alembic migrations for the archsearch schema (see service/migrate.py)."""
