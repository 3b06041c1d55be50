"""Every error the pipeline raises on purpose, in one place.

``NotRetryable`` errors mean "the input, the settings or the output is wrong": retrying the same
task cannot fix them, so the Airflow DAG fails such a task at once instead of retrying it, and the
command line prints the message without a traceback. Anything else (a store or a server that
cannot be reached, a worker that died) is retried. Import-light on purpose: the DAG names these
classes at parse time.
Tests: tests/dags/test_dag_integrity.py (the retry policy), and the tests of each raiser.
"""


class NotRetryable(Exception):
    """Base of errors that a retry of the same task cannot fix."""


class SettingsError(NotRetryable, ValueError):
    """A settings file or override names an unknown key or holds a value of the wrong type."""


class SchemaError(NotRetryable, ValueError):
    """A raw file lacks a required column, or a required input is missing."""


class DataValidationError(NotRetryable, ValueError):
    """Too many rows of a raw file were rejected; the run stops before anything is written."""


class MissingInput(NotRetryable, LookupError):
    """What a stage reads does not exist: the stage that writes it has not run for this ds
    (the message names that stage)."""


class StorageError(NotRetryable, LookupError):
    """An object or table that should exist in a store does not."""


class NothingPublished(NotRetryable, LookupError):
    """The published store has no version yet."""


class NotInVersion(NotRetryable, LookupError):
    """None of the ids a reader asked about is in the published version."""


class PublishRefused(NotRetryable, RuntimeError):
    """A table check or the quality gate failed; the live tables were left as they are."""


class RollbackRefused(NotRetryable, RuntimeError):
    """The version asked for cannot be made live (unknown, the oldest kept, or damaged)."""
