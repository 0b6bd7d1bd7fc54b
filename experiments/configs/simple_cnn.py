"""The PyTorch CIFAR-10 tutorial recipe: SimpleCNN, SGD lr 0.001 momentum 0.9, batch 64.

The default config under its own name, for symmetry with the other recipes.

Run (offline, from the JPEG image folder):
  python experiments/cifar.py --config=experiments/configs/simple_cnn.py \
    --workdir=/tmp/runs/simple_cnn \
    --config.data.source=image_folder --config.data.data_dir=../shared/data/cifar10-jpeg

Expected test accuracy: about 52.7% after 10 epochs (measured on this JPEG copy;
the PyTorch tutorial script reaches about 50.5% on it).
Epochs: 10. Compute: 1.8 TFLOPs with the evaluations (scripts/compute_report.py).
Measured time: about 10 minutes on a shared 2-core AMD EPYC CPU.
"""

import ml_collections

from experiments.configs import default


def get_config() -> ml_collections.ConfigDict:
  return default.get_config()
