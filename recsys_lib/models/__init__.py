"""The two-tower recommender (torch + transformers).

* ``encoder``: resolving and loading the pretrained text encoder (bundled MiniLM, a local path,
  or a hub name).
* ``two_tower``: the model (item tower = fine-tuned encoder over item documents; user tower =
  recency-aware attention pooling over the user's history item vectors), its loss, its
  safetensors checkpoint format and batched inference.
* ``examples``: (history -> next item) training examples and the validation set.
* ``train_task``: the training objective; ``forward(batch)`` returns the losses.
* ``training``: the loop and its named parts (optimiser, schedule, sampler, early stopping),
  warm-starting from the champion, the run fingerprint.
Tests: tests/unit/recsys_lib/models/ (tiny random encoders).
"""
