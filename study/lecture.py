"""The lecture's own code, verbatim: the reference the study is checked and timed against.

Classes and functions below are copied from ``shared/reference/000_c7bc7edbb134d796.txt``
unchanged (bugs included), so that tests can compare :mod:`study.models` and
:mod:`study.optim` with them bit for bit, and benchmarks can time the lecture's own loop
(torchvision transforms per sample, ``DataLoader(batch_size=4, shuffle=True)``).
Nothing in the study's training path imports this module.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim


class ManualSGD:
    def __init__(self, params, lr):
        self.params = list(params)
        self.lr = lr

    def step(self):
        for param in self.params:
            if param.grad is not None:
                param.data -= self.lr * param.grad

    def zero_grad(self):
        for param in self.params:
            if param.grad is not None:
                param.grad.zero_()


class ManualAdam:
    def __init__(self, params, lr=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-8):
        self.params = list(params)
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    def step(self):
        self.t += 1
        for i, param in enumerate(self.params):
            if param.grad is not None:
                self.m[i] = self.beta1 * self.m[i] + (1 - self.beta1) * param.grad
                self.v[i] = self.beta2 * self.v[i] + (1 - self.beta2) * param.grad ** 2

                m_hat = self.m[i] / (1 - self.beta1 ** self.t)
                v_hat = self.v[i] / (1 - self.beta2 ** self.t)

                param.data -= self.lr * m_hat / (torch.sqrt(v_hat) + self.epsilon)

    def zero_grad(self):
        for param in self.params:
            if param.grad is not None:
                param.grad.zero_()


class CNN(nn.Module):
    def __init__(self):
        super(CNN, self).__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = self.fc3(x)
        return x


class CNNWithBN(nn.Module):
    def __init__(self):
        super(CNNWithBN, self).__init__()
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

    def forward(self, x):
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.pool(F.relu(self.bn2(self.conv2(x))))
        x = x.view(-1, 16 * 5 * 5)
        x = F.relu(self.bn3(self.fc1(x)))
        x = F.relu(self.bn4(self.fc2(x)))
        x = self.fc3(x)
        return x


def init_weights_kaiming(m):
    if type(m) == nn.Conv2d or type(m) == nn.Linear:  # noqa: E721 (verbatim)
        nn.init.kaiming_normal_(m.weight)
        m.bias.data.fill_(0.01)


def init_weights_xavier(m):
    if type(m) == nn.Conv2d or type(m) == nn.Linear:  # noqa: E721 (verbatim)
        nn.init.xavier_uniform_(m.weight)
        m.bias.data.fill_(0.01)


# --- The lecture's data pipeline and loop, parameterized by cell (for benchmarks) ------------

LR = 0.001  # lecture
BATCH_SIZE = 4  # lecture


def transform():
    import torchvision.transforms as transforms

    return transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])


def trainset(data_dir: str | Path, *, train: bool = True):
    """The lecture's training (or test) set over ``data_dir`` (either layout), transformed per sample."""
    import torchvision

    from .data import detect_layout

    layout, src = detect_layout(Path(data_dir))
    if layout == "torchvision":
        return torchvision.datasets.CIFAR10(root=str(src.parent), train=train, download=False, transform=transform())
    return torchvision.datasets.ImageFolder(str(src / ("train" if train else "test")), transform=transform())


def make_optimizer(name: str, params):
    """The optimizer the lecture builds for ``name`` (lr 0.001, default betas and eps)."""
    return {"manual_sgd": lambda: ManualSGD(params, lr=LR), "sgd": lambda: optim.SGD(params, lr=LR),
            "manual_adam": lambda: ManualAdam(params, lr=LR), "adam": lambda: optim.Adam(params, lr=LR)}[name]()


def make_model(*, bn: bool, init: str):
    model = CNNWithBN() if bn else CNN()
    if init == "kaiming":
        model.apply(init_weights_kaiming)
    elif init == "xavier":
        model.apply(init_weights_xavier)
    return model


def train_steps(trainloader, model, optimizer, steps: int, scheduler=None) -> float:
    """The lecture's loop for ``steps`` optimizer steps (restarting the loader per epoch). Its
    schedulers are built and never stepped, as written; the running loss is returned."""
    criterion = nn.CrossEntropyLoss()
    done, running_loss = 0, 0.0
    while done < steps:
        for i, data in enumerate(trainloader, 0):
            inputs, labels = data
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            done += 1
            if done == steps:
                break
    return running_loss
