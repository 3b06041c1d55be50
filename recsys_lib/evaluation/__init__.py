"""Evaluation: how good a candidate model is, measured the way it will serve.

metrics     ranking metrics in plain numpy: the reference every other implementation must match
protocols   the split as catalogue indices, the warm and cold-item protocols, the baselines' runs
report      ``EvaluationReport``, the typed record evaluate writes and the gate reads
Tests: tests/unit/recsys_lib/evaluation/.
"""
