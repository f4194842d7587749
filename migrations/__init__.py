"""Alembic migrations for Parley's PostgreSQL schema."""
