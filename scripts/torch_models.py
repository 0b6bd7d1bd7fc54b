"""PyTorch versions of cnn_jax's models, for side-by-side benchmarks (scripts/benchmark.py).

Only the networks: the benchmark trains them with torch.optim.SGD and the
config's learning rate, momentum, Nesterov, weight decay and label smoothing.
"""

import torch
from torch import nn
from torch.nn import functional as F


class SimpleCNN(nn.Module):
  """The classic PyTorch CIFAR-10 tutorial network, as cnn_jax's simple_cnn."""

  def __init__(self, num_classes: int = 10):
    super().__init__()
    self.conv1, self.conv2 = nn.Conv2d(3, 6, 5), nn.Conv2d(6, 16, 5)
    self.fc1, self.fc2, self.fc3 = nn.Linear(16 * 5 * 5, 120), nn.Linear(120, 84), nn.Linear(84, num_classes)

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.conv1(x)), 2)
    x = F.max_pool2d(F.relu(self.conv2(x)), 2)
    x = torch.flatten(x, 1)
    return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def airbench94(num_classes: int = 10) -> nn.Module:
  """The network of the public airbench94.py (whitening conv, three conv groups), as cnn_jax's airbench."""

  def conv(cin, cout, kernel_size=3, padding='same', bias=False):
    return nn.Conv2d(cin, cout, kernel_size=kernel_size, padding=padding, bias=bias)

  def batch_norm(features):
    norm = nn.BatchNorm2d(features, eps=1e-12, momentum=0.4)
    norm.weight.requires_grad = False
    return norm

  def group(cin, cout):
    return nn.Sequential(conv(cin, cout), nn.MaxPool2d(2), batch_norm(cout), nn.GELU(),
                         conv(cout, cout), batch_norm(cout), nn.GELU())

  class Scale(nn.Module):
    def forward(self, x):
      return x / 9

  return nn.Sequential(conv(3, 24, 2, padding=0, bias=True), nn.GELU(), group(24, 64), group(64, 256),
                       group(256, 256), nn.MaxPool2d(3), nn.Flatten(), nn.Linear(256, num_classes, bias=False),
                       Scale())


MODELS = {'simple_cnn': SimpleCNN, 'airbench': airbench94}


def create(name: str, num_classes: int) -> nn.Module:
  if name not in MODELS:
    raise ValueError(f'No PyTorch version of {name!r}. Have: {", ".join(sorted(MODELS))}.')
  return MODELS[name](num_classes)
