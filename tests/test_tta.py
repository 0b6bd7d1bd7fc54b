"""Test-time augmentation."""

import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import tta


def images(batch=2, size=6):
  return jnp.asarray(np.random.default_rng(0).normal(size=(batch, size, size, 3)), jnp.float32)


def column_weighted(x_BxHxWxC):
  """A 'model' that sees left from right: logits depend on the column positions."""
  weights = jnp.arange(x_BxHxWxC.shape[2], dtype=jnp.float32)
  return jnp.einsum('bhwc,w->bc', x_BxHxWxC, weights)


def test_none_is_one_plain_pass():
  x = images()
  np.testing.assert_allclose(tta.tta_logits(column_weighted, x, 'none'), column_weighted(x))


def test_flip_averages_the_image_and_its_mirror():
  x = images()
  expected = 0.5 * column_weighted(x) + 0.5 * column_weighted(x[:, :, ::-1])
  np.testing.assert_allclose(tta.tta_logits(column_weighted, x, 'flip'), expected, rtol=1e-6)
  # A flip-averaged model is itself mirror-invariant.
  np.testing.assert_allclose(tta.tta_logits(column_weighted, x[:, :, ::-1], 'flip'), expected, rtol=1e-5)


def test_flip_translate_uses_six_passes_with_one_pixel_reflect_shifts():
  x = images()
  seen = []

  def recording(batch):
    seen.append(np.asarray(batch))
    return column_weighted(batch)

  logits = tta.tta_logits(recording, x, 'flip_translate')
  assert len(seen) == 6
  padded = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)), mode='reflect')
  up_left, down_right = padded[:, :6, :6], padded[:, 2:, 2:]
  assert any(np.array_equal(s, up_left) for s in seen)
  assert any(np.array_equal(s, down_right[:, :, ::-1]) for s in seen)

  def flip_mean(b):
    return 0.5 * column_weighted(b) + 0.5 * column_weighted(b[:, :, ::-1])

  expected = 0.5 * flip_mean(x) + 0.25 * flip_mean(jnp.asarray(up_left)) + 0.25 * flip_mean(jnp.asarray(down_right))
  np.testing.assert_allclose(logits, expected, rtol=1e-5)


def test_unknown_mode_lists_valid_ones():
  with pytest.raises(ValueError, match='Valid: none, flip, flip_translate'):
    tta.tta_logits(column_weighted, images(), 'crop10')
