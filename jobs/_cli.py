"""The shared command line of every job: --ds, --profile, --config and --set overrides.

A user error (``recsys_lib.errors.NotRetryable``: bad input, bad settings, a missing earlier
stage, a refused publish) ends the process with its one-line message instead of a traceback
(``--verbose`` shows the traceback too).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
from typing import Any, Callable

from recsys_lib.errors import NotRetryable, SettingsError
from recsys_lib.settings import Settings, load_settings


def logical_date(value: str) -> str:
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a YYYY-MM-DD date: {value!r}") from None


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"--set expects section.key=value, got {pair!r}")
        overrides[key.strip()] = value.strip()
    return overrides


def job_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--ds", type=logical_date, required=True, help="logical date, YYYY-MM-DD")
    parser.add_argument("--profile", help="settings profile (default: $RECSYS_PROFILE or local)")
    parser.add_argument("--config", help="extra settings TOML file")
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override one setting; repeatable"
    )
    parser.add_argument("--verbose", action="store_true", help="print the traceback of a user error too")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    return load_settings(profile=args.profile, config_file=args.config, overrides=parse_overrides(args.set))


def run_job(description: str, run: Callable[..., dict[str, Any]], argv: list[str] | None = None) -> dict[str, Any]:
    """Parse the common arguments, run the stage and print its summary as JSON."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = job_parser(description)
    args = parser.parse_args(argv)
    try:
        result = run(settings_from_args(args), args.ds)
    except NotRetryable as e:
        if args.verbose:
            raise
        raise SystemExit(f"{parser.prog}: {e}") from None
    print(json.dumps(result, indent=2, default=str))
    return result
