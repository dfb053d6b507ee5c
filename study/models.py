"""The lecture's two LeNet-style CNNs and its weight initializations, unchanged.

Layers exactly as in the lecture: conv 3->6->16 (kernel 5), 2x2 max-pool, fc 400->120->84->10;
``CNNWithBN`` adds BatchNorm after each conv and each hidden fc layer.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class CNNWithBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # The same construction order as CNN: with the same init seed both draw the same
        # conv/fc weights (BatchNorm layers draw nothing), so BN on/off pairs start alike.
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.bn1 = nn.BatchNorm2d(6)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.bn3 = nn.BatchNorm1d(120)
        self.fc2 = nn.Linear(120, 84)
        self.bn4 = nn.BatchNorm1d(84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.pool(F.relu(self.bn2(self.conv2(x))))
        x = x.view(-1, 16 * 5 * 5)
        x = F.relu(self.bn3(self.fc1(x)))
        x = F.relu(self.bn4(self.fc2(x)))
        return self.fc3(x)


def init_weights_kaiming(m: nn.Module) -> None:
    """Lecture: kaiming_normal_ on Conv2d/Linear weights, biases filled with 0.01."""
    if type(m) in (nn.Conv2d, nn.Linear):
        nn.init.kaiming_normal_(m.weight)
        m.bias.data.fill_(0.01)


def init_weights_xavier(m: nn.Module) -> None:
    """Lecture: xavier_uniform_ on Conv2d/Linear weights, biases filled with 0.01."""
    if type(m) in (nn.Conv2d, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        m.bias.data.fill_(0.01)


INITS = {"default": None, "kaiming": init_weights_kaiming, "xavier": init_weights_xavier}


def build_model(*, bn: bool, init: str, init_seed: int) -> nn.Module:
    """Build CNN or CNNWithBN and initialize it from its own seed.

    The global RNG is forked, so building a model neither depends on nor changes the
    random state of anything else in the process.
    """
    if init not in INITS:
        raise ValueError(f"init={init!r} is not allowed; choose one of: {', '.join(INITS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = CNNWithBN() if bn else CNN()
        if INITS[init] is not None:
            model.apply(INITS[init])
    return model
