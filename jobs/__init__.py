"""Runnable entry points, one per pipeline stage: ``python -m jobs.<stage> --ds YYYY-MM-DD``.

Each module has ``run(settings, ds, ...) -> dict`` (what Airflow tasks call; the dict holds URIs
and small summaries, never data) and ``main()`` for the command line / spark-submit.
"""
