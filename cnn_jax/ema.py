"""Weight averaging: an exponential moving average of the weights, or lookahead.

Both keep an average of the parameters and the BatchNorm statistics that is
updated every `every_steps` steps as

    average = decay * average + (1 - decay) * weights.

- `ema`: the weights train on undisturbed; evaluation uses the average.
- `lookahead`: after each update the weights are reset to the average (the
  slow weights), and at the last step too, so the trained model is the
  average (airbench's LookaheadState).

The decay at step t is `decay ** every_steps * (t / total_steps) ** warmup_power`:
with a power > 0 it starts near 0 (the average follows the weights) and grows
to its full value at the end of training.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

AVERAGING_MODES = ('none', 'ema', 'lookahead')


@dataclasses.dataclass(frozen=True)
class WeightAveraging:
  """How and when to average the weights; hashable so it can be a static jit argument."""

  mode: str = 'none'
  decay: float = 0.999  # Per step; compounded over every_steps.
  every_steps: int = 1
  warmup_power: float = 0.0
  total_steps: int = 1

  def __post_init__(self):
    if self.mode not in AVERAGING_MODES:
      raise ValueError(f'Unknown weight averaging {self.mode!r}. Valid: {", ".join(AVERAGING_MODES)}.')
    if self.every_steps < 1 or not 0.0 <= self.decay <= 1.0:
      raise ValueError(f'Weight averaging needs every_steps >= 1 and 0 <= decay <= 1, got {self}.')

  @property
  def enabled(self) -> bool:
    return self.mode != 'none'

  def decay_at(self, step: jax.Array) -> jax.Array:
    """The averaging decay at (1-based) `step`."""
    progress = jnp.minimum(step / self.total_steps, 1.0)
    return self.decay**self.every_steps * progress**self.warmup_power


def lerp(average: Any, values: Any, decay: jax.Array) -> Any:
  """decay * average + (1 - decay) * values, leaf by leaf."""
  return jax.tree.map(lambda a, v: (decay * a + (1.0 - decay) * v).astype(a.dtype), average, values)


def update(
    averaging: WeightAveraging, step: jax.Array, weights: dict[str, Any], average: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
  """Return (weights, average) after `step`, the number of steps taken so far.

  `weights` and `average` are trees of the same structure (here
  {'params': ..., 'batch_stats': ...}). Pure and jittable: off-schedule steps
  return both unchanged.
  """
  if not averaging.enabled:
    return weights, average
  on_schedule = step % averaging.every_steps == 0
  new_average = lerp(average, weights, averaging.decay_at(step))
  new_average = jax.tree.map(lambda n, a: jnp.where(on_schedule, n, a), new_average, average)
  if averaging.mode == 'ema':
    return weights, new_average
  # Lookahead: reset to the slow weights after each update and at the end.
  reset = on_schedule | (step >= averaging.total_steps)
  new_weights = jax.tree.map(lambda a, w: jnp.where(reset, a, w), new_average, weights)
  return new_weights, new_average
