"""Errors that mean "the input (or the output) is wrong": retrying cannot fix them, so the
Airflow DAG fails such a task at once instead of retrying it. Import-light on purpose: the DAG
names these classes at parse time.
"""


class NotRetryable(Exception):
    """Base of errors that a retry of the same task cannot fix."""


class SchemaError(NotRetryable, ValueError):
    """A raw file lacks a required column, or a required input is missing."""


class DataValidationError(NotRetryable, ValueError):
    """Too many rows of a raw file were rejected; the run stops before anything is written."""


class PublishRefused(NotRetryable, RuntimeError):
    """A table check or the quality gate failed; the live tables were left as they are."""
