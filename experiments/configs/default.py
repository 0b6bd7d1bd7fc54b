"""The PyTorch CIFAR-10 tutorial recipe: SimpleCNN, SGD lr 0.001 momentum 0.9.

Run (offline, from an image folder):
  python experiments/cifar.py --workdir=/tmp/simple_cnn \
    --config.data.source=image_folder \
    --config.data.data_dir=../shared/data/cifar10-jpeg

Every other config starts from this one and overrides fields, so every
setting is declared here with its meaning.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # The only seed: init, data order and augmentation derive from it.
  config.model = 'simple_cnn'  # A name in cnn_jax.models.MODELS.
  # Keyword arguments for the model's module (its fields), e.g. airbench's widths.
  config.model_options = ml_collections.ConfigDict()
  # Training images (normalized, epoch-0 order) whose statistics initialize
  # data-dependent layers: airbench's whitening convolution. Unused by other models.
  config.init_examples = 5000
  config.dtype = 'float32'  # Activation dtype: float32 or bfloat16.
  # On the CPU backend, models with CPU specializations (simple_cnn: banded-matmul
  # convolutions, cnn_jax/fast_cpu.py) use them; the same results to float32
  # rounding. Ignored on GPU and TPU. False runs XLA's plain convolutions.
  config.cpu_fast_path = True

  config.num_epochs = 10
  config.max_steps = -1  # Stop after this many steps when > 0 (smoke tests).
  config.batch_size = 64  # Global batch, split over all devices.
  config.eval_batch_size = 1000
  config.log_every_steps = 100  # Console progress line every N batches.
  # A progress bar with images/s and ETA replaces the lines when stdout is a
  # terminal; TensorBoard events and hyperparameters always go to the workdir.
  config.label_smoothing = 0.0  # Cross-entropy target (1 - e) * one_hot + e / K.
  # Test-time augmentation of one extra evaluation after training: none, flip,
  # or flip_translate (flips and 1-pixel shifts, 6 forward passes).
  config.tta = 'none'

  # Weight averaging (cnn_jax/ema.py): none, ema (evaluate an exponential moving
  # average of the weights) or lookahead (reset the weights to the average at
  # every update and at the end). The average includes BatchNorm statistics.
  config.weight_averaging = ml_collections.ConfigDict()
  config.weight_averaging.mode = 'none'
  config.weight_averaging.decay = 0.999  # Per step; compounded over every_steps.
  config.weight_averaging.every_steps = 1  # Update the average every N steps.
  # Decay at step t is decay**every_steps * (t / total_steps)**warmup_power.
  config.weight_averaging.warmup_power = 0.0

  # Optional Weights & Biases logging (pip install -e ".[wandb]"); never needed.
  config.wandb = ml_collections.ConfigDict()
  config.wandb.enabled = False
  config.wandb.project = 'cnn_jax'
  config.wandb.entity = ''  # Team or user; '' is your default entity.
  config.wandb.name = ''  # Run name; '' lets W&B choose one.
  config.wandb.mode = 'online'  # online, offline (upload later with `wandb sync`) or disabled.

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 0.001
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  config.optimizer.weight_decay = 0.0
  # coupled: weight_decay * p added to the gradient, as in torch.optim.SGD.
  # decoupled: a decay of weight_decay * p per step at the schedule's peak,
  # independent of the learning rate and of each group's lr_scale (cnn_jax/optim.py).
  config.optimizer.weight_decay_mode = 'coupled'
  # constant, cosine or linear decay to 0, or one_cycle (piecewise linear:
  # start -> 1 at peak_at of training -> end, as fractions of learning_rate).
  config.optimizer.schedule = 'constant'
  config.optimizer.warmup_epochs = 0.0  # Linear warmup from 0, in epochs (not with one_cycle).
  config.optimizer.one_cycle_start = 0.0
  config.optimizer.one_cycle_peak_at = 0.25
  config.optimizer.one_cycle_end = 0.0
  # Per-parameter-group settings, matched in order by regular expression on the
  # parameter path ('group1/norm1/bias'): dicts of pattern, lr_scale (0 freezes),
  # weight_decay (False excludes) and train_epochs (lr 0 afterwards); cnn_jax/optim.py.
  config.optimizer.param_groups = ()

  config.data = ml_collections.ConfigDict()
  # Where the images come from (README, "Data sources"): tfds, cifar_archive
  # (the original CIFAR python or binary archive, .tar.gz or extracted) or
  # image_folder (ROOT/{train,test}/<class>/<image>.png|jpg).
  config.data.source = 'tfds'
  # TFDS name (source=tfds); with cifar_archive, cifar10 or cifar100 picks the
  # archive in a folder that holds several.
  config.data.name = 'cifar10'
  # tfds: the TFDS data directory ('' is TFDS's default); cifar_archive: the
  # archive or a folder that holds it; image_folder: ROOT.
  config.data.data_dir = ''
  # Decoded image-folder arrays are cached here as .npz; '' turns caching off.
  config.data.cache_dir = '~/.cache/cnn_jax'
  config.data.download = False  # Let TFDS download when the data set is not prepared.
  config.data.train_split = 'train'
  config.data.test_split = 'test'
  config.data.image_size = 32  # Images of another size are resized to this, with a warning.
  # Use a fixed random subset of N examples when > 0 (the first N when
  # pipeline=tf_data streams from TFDS).
  config.data.train_limit = 0
  config.data.test_limit = 0
  # How batches reach the train step. in_memory: the uint8 images live on the
  # device and are batched and augmented inside jitted code, no per-batch host
  # work. tf_data: a tf.data pipeline batches and augments on the host and
  # streams TFDS data sets from disk, for data that does not fit on the device.
  config.data.pipeline = 'in_memory'
  config.data.shuffle_buffer = 50_000  # tf_data streaming from TFDS: shuffle buffer, in examples.
  # minus_one_to_one (x / 127.5 - 1) or standardize (per channel, with the
  # mean and std of the loaded training split).
  config.data.normalization = 'minus_one_to_one'
  config.data.crop_padding = 0  # Random crop after padding by this many pixels; 0 is off.
  config.data.crop_mode = 'reflect'  # Padding for the random crop: reflect or zeros.
  config.data.random_flip = False  # Random horizontal flip during training.
  # Instead of random_flip: flip each image in every other epoch (airbench).
  config.data.alternating_flip = False
  # Keep the last partial training batch (padded and masked), as PyTorch's
  # DataLoader does by default; set True to drop it.
  config.data.drop_remainder = False

  # Checkpoints: WORKDIR/checkpoints holds the latest `keep`, WORKDIR/best the best by
  # best_metric, WORKDIR/config.json this config. A run also saves when it ends and on
  # SIGTERM/SIGINT, and resumes exactly from the latest checkpoint when rerun.
  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 0  # Also save every N steps when > 0 (long epochs, preemptible machines).
  config.checkpoint.every_epoch = True  # Save at the end of every epoch.
  config.checkpoint.keep = 3  # Latest checkpoints kept in WORKDIR/checkpoints.
  config.checkpoint.best_metric = 'test_accuracy'  # An epoch metric: test_accuracy, test_loss, train_loss...
  config.checkpoint.best_mode = 'max'  # max or min of best_metric.
  config.checkpoint.async_save = True  # Write in a background thread; finished before the run exits.

  config.lock()
  return config
