"""Label smoothing in cnn_jax.losses."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_jax import losses


def test_no_smoothing_is_plain_cross_entropy():
  logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]])
  labels = jnp.array([0, 1])
  np.testing.assert_allclose(
      losses.cross_entropy(logits, labels), optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def test_smoothing_matches_the_torch_formula():
  logits = jnp.array([[2.0, 0.5, -1.0, 0.3], [0.0, 0.1, 3.0, -2.0]])
  labels = jnp.array([0, 3])
  eps = 0.2
  log_probs = jax.nn.log_softmax(logits)
  # torch: (1 - eps) * nll + eps * mean over classes of -log p.
  expected = -(1 - eps) * log_probs[jnp.arange(2), labels] - eps * log_probs.mean(-1)
  np.testing.assert_allclose(losses.cross_entropy(logits, labels, eps), expected, rtol=1e-6)


def test_smoothed_loss_is_minimal_at_the_smoothed_target():
  eps, k = 0.3, 5
  target = np.full(k, eps / k)
  target[2] += 1 - eps
  best = jnp.log(jnp.asarray(target))[None]  # Logits whose softmax is the smoothed target.
  sharper = best.at[0, 2].add(1.0)
  label = jnp.array([2])
  assert float(losses.cross_entropy(best, label, eps)[0]) < float(losses.cross_entropy(sharper, label, eps)[0])
  grad = jax.grad(lambda l: losses.cross_entropy(l, label, eps).sum())(best)
  np.testing.assert_allclose(grad, 0.0, atol=1e-6)
  assert float(losses.cross_entropy(best, label, eps)[0]) == pytest.approx(-(target * np.log(target)).sum(), rel=1e-5)
