"""Progress lines: rate and ETA while a loop runs, one summary at its end, nothing for short loops."""

import logging

from recsys_lib.logs import Progress

log = logging.getLogger("progress-test")


def test_progress_logs_rate_and_eta_then_a_summary(caplog):
    caplog.set_level(logging.INFO, "progress-test")
    progress = Progress(log, "encode", total=300, unit="documents", every_s=0.0)
    for _ in range(3):
        progress.advance(100)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("encode: 100/300 documents (33%), ") and " documents/s, ETA " in lines[0]
    assert lines[-1].startswith("encode: 300 documents in ") and lines[-1].endswith(" documents/s")
    assert len(lines) == 3


def test_a_loop_shorter_than_the_interval_logs_nothing(caplog):
    caplog.set_level(logging.INFO, "progress-test")
    progress = Progress(log, "rank users", total=10, unit="users", every_s=60.0)
    for _ in range(10):
        progress.advance()
    assert not caplog.records
    assert progress.line().startswith("rank users: 10 users in ")
