"""What every subcommand shares: settings from the environment with the global flags on top, and the engine."""

from __future__ import annotations

import argparse
from typing import Any


def settings_for(args: argparse.Namespace) -> Any:
    """Settings from the environment, with the global flags on top."""
    from patentml.settings import Settings, set_settings

    settings = Settings.from_env(
        home=getattr(args, "home", None),
        database_url=getattr(args, "database_url", None),
        store_uri=getattr(args, "store_uri", None),
        log_level=getattr(args, "log_level", None),
    )
    set_settings(settings)
    return settings


def engine_for(args: argparse.Namespace, migrate: bool = True) -> Any:
    from patentml.db.engine import get_engine
    from patentml.db.migrate import ensure_schema

    engine = get_engine(settings_for(args))
    if migrate:
        ensure_schema(engine)
    return engine
