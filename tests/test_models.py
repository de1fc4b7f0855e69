"""Tests for the model zoo: shapes, parameter counts, errors, gradients, determinism."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from snrprune.models import (
    MODELS,
    build_model,
    count_parameters,
    model_names,
    register_model,
)

IMAGE_MODELS = [
    "lenet5", "resnet20", "resnet32", "resnet56", "vgg11", "vgg16", "wrn16-2", "wrn28-2",
]
FLAT_MODELS = ["mlp", "lenet300"]

# (model, input_shape) pairs every model must support; lenet5 needs sides >= 16.
CASES = (
    [(m, s) for m in FLAT_MODELS for s in [(1, 28, 28), (3, 32, 32), (1, 8, 8), (1, 40), (16,)]]
    + [(m, s) for m in IMAGE_MODELS for s in [(1, 28, 28), (3, 32, 32), (1, 8, 8)] if
       not (m == "lenet5" and s == (1, 8, 8))]
    + [("conv1d", s) for s in [(1, 40), (40,), (2, 40), (16,)]]
)


def test_registry_contents():
    expected = set(FLAT_MODELS + IMAGE_MODELS + ["conv1d", "gpt"])  # gpt: tests/test_lm.py
    assert set(model_names()) == expected
    assert model_names() == sorted(MODELS)


@pytest.mark.parametrize("name,shape", CASES)
def test_forward_shape(name, shape):
    torch.manual_seed(0)
    model = build_model(name, shape, num_classes=7)
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name,shape", CASES)
def test_eval_mode_single_example(name, shape):
    # Eval mode with batch 1 must work too (BN uses running stats).
    model = build_model(name, shape, num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, *shape)).shape == (1, 3)


@pytest.mark.parametrize(
    "name,shape",
    [("mlp", (16,)), ("lenet300", (1, 28, 28)), ("lenet5", (1, 28, 28)), ("conv1d", (1, 40)),
     ("resnet20", (3, 32, 32)), ("vgg11", (1, 8, 8)), ("wrn16-2", (3, 32, 32))],
)
def test_backward_reaches_every_parameter(name, shape):
    torch.manual_seed(0)
    model = build_model(name, shape, num_classes=5)
    x, y = torch.randn(4, *shape), torch.tensor([0, 1, 2, 3])
    nn.functional.cross_entropy(model(x), y).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


# Exact counts we measured on 3x32x32 / 10 classes; published ones are
# 0.27M / 0.46M / 0.85M (He et al. 2016) and 0.69M / 1.47M (Zagoruyko & Komodakis).
@pytest.mark.parametrize(
    "name,shape,exact,published",
    [
        ("lenet300", (1, 28, 28), 266_610, 266_610),
        ("lenet5", (1, 28, 28), 431_080, 431_080),
        ("resnet20", (3, 32, 32), 269_722, 0.27e6),
        ("resnet32", (3, 32, 32), 464_154, 0.46e6),
        ("resnet56", (3, 32, 32), 853_018, 0.85e6),
        ("wrn16-2", (3, 32, 32), 691_674, 0.69e6),
        ("wrn28-2", (3, 32, 32), 1_467_610, 1.47e6),
        ("conv1d", (1, 40), 7_460, 7_460),
        ("mlp", (1, 28, 28), 269_322, 269_322),
    ],
)
def test_parameter_counts(name, shape, exact, published):
    n = count_parameters(build_model(name, shape, 10))
    assert n == exact
    assert abs(n - published) <= 0.01 * published  # within 1% of the paper's rounded count


def test_resnet_shortcut_b_adds_projections():
    a = count_parameters(build_model("resnet20", (3, 32, 32), 10, shortcut="A"))
    b = count_parameters(build_model("resnet20", (3, 32, 32), 10, shortcut="B"))
    # 1x1 conv + BN at the two stage transitions: (16*32 + 64) + (32*64 + 128).
    assert b - a == 2_752


def test_vgg_params_do_not_depend_on_spatial_size():
    # The adaptive pool makes the head 512 -> classes whatever the image size.
    counts = {count_parameters(build_model("vgg16", (3, s, s), 10)) for s in (8, 28, 32, 64)}
    assert len(counts) == 1


def test_mlp_options():
    m = build_model("mlp", (16,), 4, widths=(8,), dropout=0.5)
    assert count_parameters(m) == 16 * 8 + 8 + 8 * 4 + 4
    assert any(isinstance(x, nn.Dropout) for x in m.modules())
    logreg = build_model("mlp", (16,), 4, widths=())
    assert count_parameters(logreg) == 16 * 4 + 4


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        build_model("resnet18", (3, 32, 32), 10)
    for name in model_names():
        assert name in str(err.value)


def test_unknown_option_names_option_and_valid_ones():
    with pytest.raises(ValueError, match=r"'depth'.*widths.*dropout|'depth'.*dropout.*widths"):
        build_model("mlp", (16,), 10, depth=3)
    with pytest.raises(ValueError, match=r"'dropout'.*\(none\)"):
        build_model("lenet300", (784,), 10, dropout=0.1)


@pytest.mark.parametrize(
    "name,shape,options,match",
    [
        ("resnet20", (16,), {}, r"image input_shape \(C, H, W\)"),
        ("vgg16", (1, 40), {}, r"image input_shape"),
        ("lenet5", (1, 8, 8), {}, r"at least 16"),
        ("conv1d", (1, 28, 28), {}, r"1-D input_shape"),
        ("conv1d", (1, 10), {}, r"at least 15"),
        ("mlp", (16,), {"widths": (8, 0)}, r"'widths'"),
        ("mlp", (16,), {"dropout": 1.0}, r"'dropout'"),
        ("wrn16-2", (3, 32, 32), {"dropout": -0.1}, r"'dropout'"),
        ("resnet20", (3, 32, 32), {"shortcut": "C"}, r"'shortcut'"),
        ("conv1d", (40,), {"channels": 0}, r"'channels'"),
        ("mlp", (0,), {}, r"input_shape"),
    ],
)
def test_invalid_inputs_raise_value_error(name, shape, options, match):
    with pytest.raises(ValueError, match=match):
        build_model(name, shape, 10, **options)


def test_invalid_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mlp", (16,), 0)


@pytest.mark.parametrize("name", model_names())
def test_deterministic_given_seed(name):
    shape = {"conv1d": (1, 40), "lenet5": (1, 28, 28), "gpt": (1,)}.get(name, (1, 8, 8))
    states = []
    for _ in range(2):
        torch.manual_seed(123)
        states.append(build_model(name, shape, 10).state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_only_standard_prunable_layers_and_no_inplace_relu():
    for name in model_names():
        if name == "gpt":  # a Transformer: embeddings and LayerNorms too (tests/test_lm.py)
            continue
        shape = {"conv1d": (1, 40), "lenet5": (1, 28, 28)}.get(name, (1, 8, 8))
        model = build_model(name, shape, 10)
        weighted = [m for m in model.modules() if getattr(m, "weight", None) is not None]
        assert all(
            isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm2d)) for m in weighted
        ), name
        assert not any(isinstance(m, nn.ReLU) and m.inplace for m in model.modules()), name


def test_register_model_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_model("mlp")(lambda input_shape, num_classes: nn.Identity())
