"""Classification losses."""

import jax
import optax


def cross_entropy(logits_BxK: jax.Array, labels_B: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy against integer labels, optionally label-smoothed.

  With smoothing e the target is (1 - e) * one_hot + e / K, as in
  torch.nn.CrossEntropyLoss(label_smoothing=e).
  """
  if not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxK, labels_B)
  num_classes = logits_BxK.shape[-1]
  targets_BxK = optax.smooth_labels(jax.nn.one_hot(labels_B, num_classes, dtype=logits_BxK.dtype), label_smoothing)
  return optax.softmax_cross_entropy(logits_BxK, targets_BxK)
