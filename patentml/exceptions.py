"""Exception hierarchy: every error a user can meet says what went wrong and what to do."""

from __future__ import annotations


class PatentMLError(Exception):
    """Base class for all PatentML errors; the message is meant for a user."""


class ConfigError(PatentMLError):
    """A setting is missing or has an invalid value."""


class DatabaseError(PatentMLError):
    """The database could not be reached, started or migrated."""


class IngestError(PatentMLError):
    """A source could not be ingested as a whole (missing file, unknown format)."""


class SourceNotFoundError(IngestError):
    """A source path, folder or glob matched no file."""


class UnknownFormatError(IngestError):
    """The format of a source could not be detected."""


class DataError(PatentMLError):
    """The data in the database is not usable for the requested step (no splits, no labels)."""


class ModelError(PatentMLError):
    """A model could not be built, trained, or loaded."""


class ArtifactError(ModelError):
    """A model artifact is incomplete, corrupted or of an unknown version."""


class StoreError(PatentMLError):
    """The model store could not be read or written."""


class PromotionError(PatentMLError):
    """A promotion could not be decided or carried out."""


class DependencyError(PatentMLError):
    """An optional dependency (torch, transformers, scikit-learn, ...) is missing."""
