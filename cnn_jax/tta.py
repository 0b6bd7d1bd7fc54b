"""Test-time augmentation: average the logits over flipped and translated copies."""

from typing import Callable

import jax
import jax.numpy as jnp

TTA_MODES = ('none', 'flip', 'flip_translate')


def _flip_average(logits_fn: Callable[[jax.Array], jax.Array], images_BxHxWxC: jax.Array) -> jax.Array:
  return 0.5 * logits_fn(images_BxHxWxC) + 0.5 * logits_fn(images_BxHxWxC[:, :, ::-1])


def tta_logits(logits_fn: Callable[[jax.Array], jax.Array], images_BxHxWxC: jax.Array, mode: str) -> jax.Array:
  """Logits of `logits_fn` averaged over test-time augmentations of the images.

  - `none`: the images alone (1 forward pass);
  - `flip`: the mean over the images and their mirror images (2 passes);
  - `flip_translate`: half the `flip` logits plus half the mean of `flip` over
    two copies shifted by one pixel, up-left and down-right, with reflect
    padding (6 passes), as airbench's tta_level=2.
  """
  if mode == 'none':
    return logits_fn(images_BxHxWxC)
  if mode == 'flip':
    return _flip_average(logits_fn, images_BxHxWxC)
  if mode == 'flip_translate':
    _, height, width, _ = images_BxHxWxC.shape
    padded = jnp.pad(images_BxHxWxC, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='reflect')
    shifted = [padded[:, :height, :width], padded[:, 2:height + 2, 2:width + 2]]
    translated = 0.5 * (_flip_average(logits_fn, shifted[0]) + _flip_average(logits_fn, shifted[1]))
    return 0.5 * _flip_average(logits_fn, images_BxHxWxC) + 0.5 * translated
  raise ValueError(f'Unknown test-time augmentation {mode!r}. Valid: {", ".join(TTA_MODES)}.')
