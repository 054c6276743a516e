"""Postgres access: the embedded server, engines, models and migrations."""
