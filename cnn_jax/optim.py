"""Optax optimizers and learning-rate schedules built from the config."""

import ml_collections
import optax

SCHEDULES = ('constant', 'cosine', 'linear')


def create_learning_rate_schedule(
    config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.Schedule:
  """Linear warmup over `warmup_epochs`, then `schedule` until the last step."""
  total_steps = config.num_epochs * steps_per_epoch
  warmup_steps = int(config.optimizer.warmup_epochs * steps_per_epoch)
  base_lr = config.optimizer.learning_rate
  decay_steps = max(total_steps - warmup_steps, 1)

  name = config.optimizer.schedule
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


def create_optimizer(
    config: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
  """SGD with momentum, optional Nesterov, and optional L2 weight decay.

  Weight decay is added to the gradient before momentum, as in
  torch.optim.SGD(weight_decay=...).
  """
  opt = config.optimizer
  parts = []
  if opt.weight_decay:
    parts.append(optax.add_decayed_weights(opt.weight_decay))
  parts.append(
      optax.sgd(schedule, momentum=opt.momentum or None, nesterov=opt.nesterov)
  )
  return optax.chain(*parts)
