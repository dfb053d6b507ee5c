"""Tests for study.models: the lecture's layers, parameter counts, inits and seeding.

The lecture's classes and init functions are pasted below verbatim as the reference: the
study's models must have the same layers and, from the same seed, the same weights.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from study.config import INITS
from study.models import CNN, CNNWithBN, build_model



# The lecture's code, verbatim (shared/reference/000_c7bc7edbb134d796.txt), kept in study.lecture
from study.lecture import CNN as LectureCNN  # noqa: E402
from study.lecture import CNNWithBN as LectureCNNWithBN  # noqa: E402
from study.lecture import init_weights_kaiming, init_weights_xavier  # noqa: E402

LECTURE_INITS = {"default": None, "kaiming": init_weights_kaiming, "xavier": init_weights_xavier}


def lecture_model(bn: bool, init: str, seed: int) -> nn.Module:
    """What the lecture builds, seeded the way the study seeds a model."""
    torch.manual_seed(seed)
    model = LectureCNNWithBN() if bn else LectureCNN()
    if LECTURE_INITS[init] is not None:
        model.apply(LECTURE_INITS[init])
    return model


# ---------------------------------------------------------------------------
# Layers and parameter counts
# ---------------------------------------------------------------------------

CNN_SHAPES = {
    "conv1.weight": (6, 3, 5, 5), "conv1.bias": (6,),
    "conv2.weight": (16, 6, 5, 5), "conv2.bias": (16,),
    "fc1.weight": (120, 400), "fc1.bias": (120,),  # 400 = 16 channels * 5 * 5 after two pools
    "fc2.weight": (84, 120), "fc2.bias": (84,),
    "fc3.weight": (10, 84), "fc3.bias": (10,),
}
BN_SHAPES = {f"bn{i}.{p}": (c,) for i, c in ((1, 6), (2, 16), (3, 120), (4, 84)) for p in ("weight", "bias")}

# By hand:
#   conv1: 6*3*5*5 + 6     =    456
#   conv2: 16*6*5*5 + 16   =  2,416
#   fc1:   400*120 + 120   = 48,120
#   fc2:   120*84 + 84     = 10,164
#   fc3:   84*10 + 10      =    850
#   CNN total              = 62,006
#   BatchNorm: 2 * (6 + 16 + 120 + 84) = 452  ->  CNNWithBN total 62,458
CNN_PARAMS = 62_006
CNN_BN_PARAMS = 62_006 + 452


@pytest.mark.parametrize("bn", [False, True])
def test_layer_shapes_are_the_lectures(bn):
    model = build_model(bn=bn, init="default", init_seed=0)
    expected = dict(CNN_SHAPES, **(BN_SHAPES if bn else {}))
    assert {n: tuple(p.shape) for n, p in model.named_parameters()} == expected
    # ... and the same as the lecture's own class, buffers included (BN running stats)
    ref = LectureCNNWithBN() if bn else LectureCNN()
    assert {k: v.shape for k, v in model.state_dict().items()} == \
        {k: v.shape for k, v in ref.state_dict().items()}
    assert isinstance(model, CNNWithBN if bn else CNN)


@pytest.mark.parametrize("bn,count", [(False, CNN_PARAMS), (True, CNN_BN_PARAMS)])
def test_parameter_count(bn, count):
    model = build_model(bn=bn, init="default", init_seed=0)
    assert sum(p.numel() for p in model.parameters()) == count
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("n", [2, 5])
def test_output_shape(bn, n):
    model = build_model(bn=bn, init="default", init_seed=0)
    assert model(torch.randn(n, 3, 32, 32)).shape == (n, 10)
    model.eval()  # a single image only works for BN in eval mode
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("init", INITS)
def test_same_weights_and_outputs_as_the_lecture(bn, init):
    """Seeded alike, the study's model is the lecture's model: same weights, same outputs."""
    ours = build_model(bn=bn, init=init, init_seed=123)
    ref = lecture_model(bn, init, 123)
    for (k, a), (k2, b) in zip(ours.state_dict().items(), ref.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ours(x), ref(x))  # train mode (BN uses batch statistics)
    ours.eval(), ref.eval()
    assert torch.equal(ours(x), ref(x))


# ---------------------------------------------------------------------------
# Initializations
# ---------------------------------------------------------------------------

def _layers(model, kinds):
    return [m for m in model.modules() if type(m) in kinds]


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("init", ["kaiming", "xavier"])
def test_lecture_inits_set_biases_and_leave_bn_alone(bn, init):
    model = build_model(bn=bn, init=init, init_seed=0)
    layers = _layers(model, (nn.Conv2d, nn.Linear))
    assert len(layers) == 5
    for m in layers:
        assert torch.all(m.bias == 0.01), m
    norms = _layers(model, (nn.BatchNorm1d, nn.BatchNorm2d))
    assert len(norms) == (4 if bn else 0)
    for m in norms:
        assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


@pytest.mark.parametrize("bn", [False, True])
def test_default_init_keeps_torchs_biases(bn):
    """PyTorch's default draws biases from U(-1/sqrt(fan_in), 1/sqrt(fan_in)): not 0.01."""
    model = build_model(bn=bn, init="default", init_seed=0)
    for m in _layers(model, (nn.Conv2d, nn.Linear)):
        fan_in = m.weight[0].numel()
        assert not torch.all(m.bias == 0.01)
        assert m.bias.abs().max() <= 1 / math.sqrt(fan_in)


def test_kaiming_and_xavier_have_their_distributions():
    """fc1 (fan_in 400, fan_out 120, 48,000 weights): kaiming_normal_ (fan_in, ReLU gain)
    has std sqrt(2/400) = 0.0707; xavier_uniform_ is bounded by sqrt(6/(400+120)) = 0.1074."""
    k = build_model(bn=False, init="kaiming", init_seed=0).fc1.weight
    assert k.std().item() == pytest.approx(math.sqrt(2 / 400), rel=0.03)
    assert k.mean().abs().item() < 0.002
    x = build_model(bn=False, init="xavier", init_seed=0).fc1.weight
    bound = math.sqrt(6 / (400 + 120))
    assert x.abs().max().item() <= bound
    assert x.abs().max().item() > 0.99 * bound
    assert x.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)  # std of U(-b, b)


def test_unknown_init_is_rejected():
    with pytest.raises(ValueError, match="orthogonal"):
        build_model(bn=False, init="orthogonal", init_seed=0)


# ---------------------------------------------------------------------------
# Seeding
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("init", INITS)
def test_bn_on_and_off_start_from_the_same_weights(init):
    """A design property: BatchNorm layers draw nothing, so the BN on/off pair of a cell
    starts from identical conv/fc weights."""
    plain = build_model(bn=False, init=init, init_seed=7).state_dict()
    with_bn = build_model(bn=True, init=init, init_seed=7).state_dict()
    for name in CNN_SHAPES:
        assert torch.equal(plain[name], with_bn[name]), name


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("init", INITS)
def test_seed_determines_the_weights(bn, init):
    a = build_model(bn=bn, init=init, init_seed=1).state_dict()
    b = build_model(bn=bn, init=init, init_seed=1).state_dict()
    c = build_model(bn=bn, init=init, init_seed=2).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for name in ("conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight", "fc3.weight"):
        assert not torch.equal(a[name], c[name]), name


@pytest.mark.parametrize("init", INITS)
def test_building_a_model_leaves_the_global_rng_alone(init):
    torch.manual_seed(99)
    before = torch.get_rng_state()
    first = build_model(bn=True, init=init, init_seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    # ... nor depends on it
    torch.manual_seed(12345)
    second = build_model(bn=True, init=init, init_seed=5)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
