"""The two-tower recommender (torch + transformers).

* ``encoder``: resolving and loading the pretrained text encoder (bundled MiniLM, a local path,
  or a hub name).
* ``two_tower``: the model (item tower = fine-tuned encoder over item documents; user tower =
  recency-aware attention pooling over the user's history item vectors), its loss, and its
  safetensors checkpoint format.
* ``training``: building (history -> next item) examples and the fine-tuning loop.
Tests: tests/unit/test_two_tower.py, tests/unit/test_training.py (tiny random encoders).
"""
