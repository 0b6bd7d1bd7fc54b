"""Optax optimizers and learning-rate schedules built from the config.

The optimizer is SGD with momentum (optionally Nesterov) and weight decay, per
parameter group. `config.optimizer.param_groups` is a sequence of dicts
matched in order against each parameter's path ('group1/norm1/bias'); the
first whose `pattern` (a regular expression, `re.search`) matches sets:

- `lr_scale` (default 1.0): multiplies the learning rate; 0 freezes the
  parameters (no update, no optimizer state);
- `weight_decay` (default True): False excludes the group from weight decay;
- `train_epochs` (default 0, meaning all): the group's learning rate drops to
  0 after this many epochs.

Unmatched parameters form the default group (scale 1, decayed, always trained).
"""

import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ('constant', 'cosine', 'linear', 'one_cycle')
WEIGHT_DECAY_MODES = ('coupled', 'decoupled')
_GROUP_KEYS = frozenset({'pattern', 'lr_scale', 'weight_decay', 'train_epochs'})
DEFAULT_GROUP = 'default'


def one_cycle_schedule(
    base_lr: float, total_steps: int, start: float, peak_at: float, end: float
) -> optax.Schedule:
  """Piecewise linear: base_lr * start at step 0, base_lr at peak_at * total_steps, base_lr * end at the last step.

  The "triangle" of airbench and the one-cycle schedule of the DAWNBench
  ResNet-9 (start 0, end 0).
  """
  peak_step = int(peak_at * total_steps)
  steps = jnp.array([0.0, float(peak_step), float(total_steps)])
  factors = jnp.array([start, 1.0, end])

  def schedule(count):
    return base_lr * jnp.interp(count, steps, factors)

  return schedule


def create_learning_rate_schedule(
    config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.Schedule:
  """Linear warmup over `warmup_epochs`, then `schedule` until the last step.

  `one_cycle` has its own rising phase and takes no warmup.
  """
  opt = config.optimizer
  total_steps = config.num_epochs * steps_per_epoch
  warmup_steps = int(opt.warmup_epochs * steps_per_epoch)
  base_lr = opt.learning_rate
  decay_steps = max(total_steps - warmup_steps, 1)

  name = opt.schedule
  if name == 'one_cycle':
    if warmup_steps:
      raise ValueError(
          f'schedule=one_cycle rises from one_cycle_start on its own; set warmup_epochs=0 '
          f'(got {opt.warmup_epochs}).'
      )
    return one_cycle_schedule(base_lr, total_steps, opt.one_cycle_start, opt.one_cycle_peak_at, opt.one_cycle_end)
  if name == 'constant':
    main = optax.constant_schedule(base_lr)
  elif name == 'cosine':
    main = optax.cosine_decay_schedule(base_lr, decay_steps)
  elif name == 'linear':
    main = optax.linear_schedule(base_lr, 0.0, decay_steps)
  else:
    raise ValueError(
        f'Unknown learning-rate schedule {name!r}. Valid: {", ".join(SCHEDULES)}.'
    )
  if warmup_steps == 0:
    return main
  warmup = optax.linear_schedule(0.0, base_lr, warmup_steps)
  return optax.join_schedules([warmup, main], [warmup_steps])


def _group_name(index: int) -> str:
  return f'group{index}'


def check_param_groups(groups: Sequence[Any]) -> list[dict[str, Any]]:
  """Validate the group dicts and fill in defaults; raises ValueError naming the bad group."""
  checked = []
  for index, group in enumerate(groups):
    group = dict(group)
    unknown = set(group) - _GROUP_KEYS
    if 'pattern' not in group or unknown:
      raise ValueError(
          f'optimizer.param_groups[{index}] = {group}: every group needs a `pattern` and takes only '
          f'{", ".join(sorted(_GROUP_KEYS))}' + (f'; unknown: {", ".join(sorted(unknown))}.' if unknown else '.')
      )
    group.setdefault('lr_scale', 1.0)
    group.setdefault('weight_decay', True)
    group.setdefault('train_epochs', 0)
    if group['lr_scale'] < 0:
      raise ValueError(f'optimizer.param_groups[{index}].lr_scale must be >= 0, got {group["lr_scale"]}.')
    checked.append(group)
  return checked


def param_group_labels(params: Any, groups: Sequence[dict[str, Any]]) -> Any:
  """A pytree like `params` holding each parameter's group name ('group<i>' or 'default')."""
  compiled = [re.compile(group['pattern']) for group in groups]

  def label(path, _):
    name = '/'.join(str(getattr(key, 'key', getattr(key, 'name', key))) for key in path)
    for index, pattern in enumerate(compiled):
      if pattern.search(name):
        return _group_name(index)
    return DEFAULT_GROUP

  return jax.tree_util.tree_map_with_path(label, params)


def _sgd(
    schedule: optax.Schedule,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    active: Callable[[jax.Array], jax.Array] | None = None,
) -> optax.GradientTransformation:
  """torch.optim.SGD: g + weight_decay * p, momentum (optionally Nesterov), times -lr."""
  parts = []
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay))
  if momentum:
    parts.append(optax.trace(decay=momentum, nesterov=nesterov))
  if active is None:
    parts.append(optax.scale_by_learning_rate(schedule))
  else:
    parts.append(optax.scale_by_learning_rate(lambda count: schedule(count) * active(count)))
  return optax.chain(*parts)


def create_optimizer(
    config: ml_collections.ConfigDict, schedule: optax.Schedule, steps_per_epoch: int = 0
) -> optax.GradientTransformation:
  """SGD with momentum, optional Nesterov and weight decay, per parameter group.

  `weight_decay_mode`:
  - `coupled`: weight_decay * p is added to the gradient before momentum, as in
    torch.optim.SGD(weight_decay=...), so the decay per step scales with the
    (group's) learning rate.
  - `decoupled`: the decay per step is weight_decay * p times the schedule's
    current fraction of its peak, the same in every group whatever its
    lr_scale and whatever the peak learning rate (airbench's "weight decay
    decoupled from the learning rate"). Like torch, it still passes through
    momentum.

  `steps_per_epoch` is needed only by groups with `train_epochs`.
  """
  opt = config.optimizer
  if opt.weight_decay_mode not in WEIGHT_DECAY_MODES:
    raise ValueError(
        f'Unknown weight_decay_mode {opt.weight_decay_mode!r}. Valid: {", ".join(WEIGHT_DECAY_MODES)}.'
    )
  groups = check_param_groups(opt.param_groups)

  def group_transform(lr_scale: float, decayed: bool, train_epochs: float) -> optax.GradientTransformation:
    if lr_scale == 0:
      return optax.set_to_zero()
    weight_decay = opt.weight_decay if decayed else 0.0
    if weight_decay and opt.weight_decay_mode == 'decoupled':
      weight_decay /= opt.learning_rate * lr_scale
    active = None
    if train_epochs:
      if steps_per_epoch <= 0:
        raise ValueError('A parameter group with train_epochs needs steps_per_epoch > 0.')
      last_step = int(train_epochs * steps_per_epoch)
      active = lambda count: (count < last_step).astype(jnp.float32)  # noqa: E731
    scaled = lambda count: lr_scale * schedule(count)  # noqa: E731
    return _sgd(scaled, opt.momentum, opt.nesterov, weight_decay, active)

  transforms = {DEFAULT_GROUP: group_transform(1.0, True, 0)}
  if not groups:
    return transforms[DEFAULT_GROUP]
  for index, group in enumerate(groups):
    transforms[_group_name(index)] = group_transform(
        group['lr_scale'], group['weight_decay'], group['train_epochs'])
  return optax.multi_transform(transforms, lambda params: param_group_labels(params, groups))
