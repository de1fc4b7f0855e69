"""Model zoo: a registry of small networks used in the pruning experiments.

Every builder has the signature ``builder(input_shape, num_classes, **options)``
where ``input_shape`` excludes the batch dimension: ``(C, H, W)`` for images,
``(C, L)`` or ``(L,)`` for 1-D signals (MNIST-1D) and ``(F,)`` for tabular data.
Sizes that depend on the input (flatten widths, how many pools fit) are
computed arithmetically at build time, so every model adapts to the dataset.

Only standard ``nn.Conv1d``/``nn.Conv2d``/``nn.Linear`` layers carry prunable
weights by default (the pruning code finds them by type), all ReLUs are non-inplace, and
all initialisation draws from torch's global RNG, so ``torch.manual_seed``
makes construction deterministic.

Each model is registered for a task (:mod:`snrprune.tasks`): the classifiers map an input to
``num_classes`` logits; ``gpt`` is a language model (token ids of shape (B, T) to next-token logits of
shape (B, T, vocabulary)) and is built for a text data set (``input_shape`` ``(1,)``, ``num_classes``
the vocabulary size).
"""

from __future__ import annotations

import inspect
import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MODELS",
    "register_model",
    "model_names",
    "build_model",
    "count_parameters",
    "model_task",
    "GPT",
]

MODELS: dict[str, Callable[..., nn.Module]] = {}
#: The task each registered model is built for (see :mod:`snrprune.tasks`).
MODEL_TASKS: dict[str, str] = {}


def register_model(name: str, *, task: str = "classification") -> Callable:
    """Decorator adding ``builder(input_shape, num_classes, **options)`` to MODELS, for ``task``."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = builder
        MODEL_TASKS[name] = task
        return builder

    return decorator


def model_task(name: str) -> str:
    """The task a registered model is built for: ``"classification"`` or ``"language-modelling"``."""
    return MODEL_TASKS.get(name, "classification")


def model_names() -> list[str]:
    """Sorted names of all registered models."""
    return sorted(MODELS)


def _option_names(builder: Callable[..., nn.Module]) -> list[str]:
    params = list(inspect.signature(builder).parameters.values())[2:]
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, **options: Any
) -> nn.Module:
    """Build model ``name`` for inputs of ``input_shape`` (no batch dim).

    Raises ValueError for an unknown name, an unknown option, or an input shape
    or option value the model cannot handle; messages list the valid choices.
    """
    if name not in MODELS:
        raise ValueError(
            f"unknown model {name!r}; valid names: {', '.join(model_names())}"
        )
    builder = MODELS[name]
    valid = _option_names(builder)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for model {name!r}; "
            f"valid options: {', '.join(valid) if valid else '(none)'}"
        )
    shape = _check_shape(input_shape)
    try:
        if isinstance(num_classes, bool):
            raise TypeError
        classes = operator.index(num_classes)
    except TypeError:
        classes = 0
    if classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return builder(shape, classes, **options)


def count_parameters(model: nn.Module) -> int:
    """Total number of parameter entries (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- helpers


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    """Return ``input_shape`` as a tuple of positive ints (lists, torch.Size, numpy ints ok)."""
    try:
        if isinstance(input_shape, (str, bytes)) or any(isinstance(s, bool) for s in input_shape):
            raise TypeError
        shape = tuple(operator.index(s) for s in input_shape)
    except TypeError:
        shape = ()
    if not shape or min(shape) < 1:
        raise ValueError(
            f"input_shape must be a non-empty tuple of positive ints, got {input_shape!r}"
        )
    return shape


def _image_shape(name: str, shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ValueError(
            f"model {name!r} needs an image input_shape (C, H, W); got {shape}. "
            "Use 'mlp' for tabular data or 'conv1d' for 1-D signals."
        )
    return shape  # type: ignore[return-value]


def _conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _kaiming_init(model: nn.Module) -> nn.Module:
    """He-normal convs (fan_out, as in the ResNet paper); BN to identity; Linear default."""
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def _check_dropout(p: Any) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"option 'dropout' must be a float in [0, 1), got {p!r}")
    return float(p)


# --------------------------------------------------------------------------- MLPs


def _mlp(in_features: int, widths: Sequence[int], num_classes: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    prev = in_features
    for w in widths:
        layers += [nn.Linear(prev, w), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        prev = w
    layers.append(nn.Linear(prev, num_classes))
    return nn.Sequential(*layers)


@register_model("mlp")
def mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    widths: Sequence[int] = (256, 256),
    dropout: float = 0.0,
) -> nn.Module:
    """Fully connected ReLU net on the flattened input; the tabular default.

    ``widths=()`` gives multinomial logistic regression.
    """
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or any(
        isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths
    ):
        raise ValueError(f"option 'widths' must be a sequence of positive ints, got {widths!r}")
    return _mlp(math.prod(input_shape), tuple(widths), num_classes, _check_dropout(dropout))


@register_model("lenet300")
def lenet300(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """LeNet-300-100 (LeCun et al. 1998; the pruning benchmark of Han et al. 2015).

    266,610 parameters on 784 inputs with 10 classes.
    """
    return _mlp(math.prod(input_shape), (300, 100), num_classes, 0.0)


# --------------------------------------------------------------------------- LeNet-5


@register_model("lenet5")
def lenet5(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Caffe's LeNet-5: conv20@5 - pool2 - conv50@5 - pool2 - fc500 - ReLU - fc.

    We add a ReLU after each pooling (Caffe has none); that adds no parameters.
    431,080 parameters on 1x28x28 with 10 classes (the Han et al. 2015 count).
    """
    c, h, w = _image_shape("lenet5", input_shape)
    sides = []
    for s in (h, w):
        s = _conv_out(s, 5) // 2
        s = _conv_out(s, 5) // 2
        sides.append(s)
    if min(sides) < 1:
        raise ValueError(
            f"model 'lenet5' needs image sides of at least 16 pixels, got input_shape {input_shape}"
        )
    return nn.Sequential(
        nn.Conv2d(c, 20, 5),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(20, 50, 5),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(50 * sides[0] * sides[1], 500),
        nn.ReLU(),
        nn.Linear(500, num_classes),
    )


# --------------------------------------------------------------------------- 1-D CNN


@register_model("conv1d")
def conv1d(
    input_shape: tuple[int, ...], num_classes: int, *, channels: int = 25
) -> nn.Module:
    """The MNIST-1D paper's small CNN: 3x [Conv1d(k=5, s=2, p=1) + ReLU] then Linear.

    Accepts (C, L) or (L,) (treated as one channel). 7,460 parameters on (1, 40)
    with 10 classes.
    """
    if len(input_shape) == 1:
        c, length = 1, input_shape[0]
    elif len(input_shape) == 2:
        c, length = input_shape
    else:
        raise ValueError(
            f"model 'conv1d' needs a 1-D input_shape (L,) or (C, L); got {input_shape}"
        )
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"option 'channels' must be a positive int, got {channels!r}")
    layers: list[nn.Module] = []
    prev = c
    for _ in range(3):
        length = _conv_out(length, 5, 2, 1)
        if length < 1:
            # 15 -> 7 -> 3 -> 1 is the shortest signal that survives three stride-2 convs.
            raise ValueError(
                f"model 'conv1d' needs a signal length of at least 15, got input_shape {input_shape}"
            )
        layers += [nn.Conv1d(prev, channels, 5, stride=2, padding=1), nn.ReLU()]
        prev = channels
    model = nn.Sequential(
        nn.Unflatten(1, (1, -1)) if len(input_shape) == 1 else nn.Identity(),
        *layers,
        nn.Flatten(),
        nn.Linear(channels * length, num_classes),
    )
    return model


# --------------------------------------------------------------------------- CIFAR ResNets


class _BasicBlock(nn.Module):
    """conv3-BN-ReLU-conv3-BN plus shortcut, then ReLU (He et al. 2016, post-activation)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU()
        self.stride = stride
        self.pad = out_ch - in_ch
        self.projection: nn.Module | None = None
        if (stride != 1 or in_ch != out_ch) and shortcut == "B":
            self.projection = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.projection is not None:
            return self.projection(x)
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]  # same size as the strided conv
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self._shortcut(x))


class CifarResNet(nn.Module):
    """3-stage CIFAR ResNet with 16/32/64 channels and ``n`` basic blocks per stage."""

    def __init__(self, in_ch: int, num_classes: int, n: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        blocks: list[nn.Module] = []
        prev = 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(_BasicBlock(prev, width, stride, shortcut))
                prev = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def _resnet(depth: int) -> Callable[..., nn.Module]:
    def builder(
        input_shape: tuple[int, ...], num_classes: int, *, shortcut: str = "A"
    ) -> nn.Module:
        c, _, _ = _image_shape(f"resnet{depth}", input_shape)
        if shortcut not in ("A", "B"):
            raise ValueError(
                f"option 'shortcut' must be 'A' (zero-pad identity) or 'B' (1x1 conv+BN), "
                f"got {shortcut!r}"
            )
        return CifarResNet(c, num_classes, (depth - 2) // 6, shortcut)

    builder.__name__ = f"resnet{depth}"
    builder.__doc__ = (
        f"CIFAR ResNet-{depth} (He et al. 2016). Default shortcut 'A' (parameter-free "
        "subsample + zero-pad channels) matches the paper's CIFAR counts; 'B' uses "
        "1x1 conv+BN projections when the shape changes."
    )
    return builder


# Measured on 3x32x32 / 10 classes, shortcut A (B adds 2,752):
# resnet20 269,722; resnet32 464,154; resnet56 853,018.
for _depth in (20, 32, 56):
    register_model(f"resnet{_depth}")(_resnet(_depth))


# --------------------------------------------------------------------------- VGG

_VGG_CFG: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
              512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG-BN with the CIFAR head: adaptive avg pool to 1x1 and one Linear(512, classes).

    Max-pools that would shrink a side below 1 are skipped, so it runs on 28x28
    and 8x8 images too. Convs have no bias (the following BN makes it redundant).
    """

    def __init__(self, cfg: list[int | str], in_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        c, h, w = in_shape
        layers: list[nn.Module] = []
        for v in cfg:
            if v == "M":
                if min(h, w) >= 2:
                    layers.append(nn.MaxPool2d(2))
                    h, w = h // 2, w // 2
            else:
                assert isinstance(v, int)
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def _vgg(name: str) -> Callable[..., nn.Module]:
    def builder(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return VGG(_VGG_CFG[name], _image_shape(name, input_shape), num_classes)

    builder.__name__ = name
    builder.__doc__ = f"{name.upper()} with BatchNorm and a CIFAR head (see VGG)."
    return builder


for _name in _VGG_CFG:
    register_model(_name)(_vgg(_name))


# --------------------------------------------------------------------------- Wide ResNets


class _PreActBlock(nn.Module):
    """BN-ReLU-conv3-BN-ReLU-(dropout)-conv3 plus shortcut (1x1 conv when shape changes)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.relu(self.bn1(x))
        # As in the reference WRN code, a projection shortcut reads the pre-activated input.
        skip = x if self.shortcut is None else self.shortcut(o)
        o = self.conv1(o)
        o = self.conv2(self.dropout(self.relu(self.bn2(o))))
        return o + skip


class WideResNet(nn.Module):
    """WRN-depth-k: conv16, 3 stages of (depth-4)/6 pre-act blocks at 16k/32k/64k, BN-ReLU, pool, fc."""

    def __init__(self, in_ch: int, num_classes: int, depth: int, k: int, dropout: float) -> None:
        super().__init__()
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(in_ch, 16, 3, 1, 1, bias=False)
        blocks: list[nn.Module] = []
        prev = 16
        for stage, width in enumerate((16 * k, 32 * k, 64 * k)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(_PreActBlock(prev, width, stride, dropout))
                prev = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(prev)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(prev, num_classes)
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def _wrn(depth: int, k: int) -> Callable[..., nn.Module]:
    name = f"wrn{depth}-{k}"

    def builder(
        input_shape: tuple[int, ...], num_classes: int, *, dropout: float = 0.0
    ) -> nn.Module:
        c, _, _ = _image_shape(name, input_shape)
        return WideResNet(c, num_classes, depth, k, _check_dropout(dropout))

    builder.__name__ = name.replace("-", "_")
    builder.__doc__ = f"WRN-{depth}-{k} (Zagoruyko & Komodakis 2016), optional dropout between convs."
    return builder


# Measured on 3x32x32 / 10 classes: wrn16-2 691,674; wrn28-2 1,467,610.
for _depth, _k in ((16, 2), (28, 2)):
    register_model(f"wrn{_depth}-{_k}")(_wrn(_depth, _k))

del _depth, _k, _name


# --------------------------------------------------------------------------- GPT (decoder-only Transformer)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with plain ``nn.Linear`` query, key, value and output
    projections (so every method's statistics see them as ordinary Linear layers on sequences) and
    ``F.scaled_dot_product_attention`` for the attention itself.

    The head size is read from the query projection (``q_proj.out_features // n_head``), not from the
    input width, so a module whose heads were cut (``snrprune.units``: fewer rows of the query, key and
    value projections, fewer columns of ``out_proj``, ``n_head`` lowered) runs as is."""

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.n_head = n_head
        self.q_proj = nn.Linear(n_embd, n_embd)
        self.k_proj = nn.Linear(n_embd, n_embd)
        self.v_proj = nn.Linear(n_embd, n_embd)
        self.out_proj = nn.Linear(n_embd, n_embd)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        width = self.q_proj.out_features  # n_head x head size: the input width unless heads were cut
        heads = [p(x).view(b, t, self.n_head, width // self.n_head).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj)]
        y = F.scaled_dot_product_attention(*heads, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.resid_dropout(self.out_proj(y.transpose(1, 2).reshape(b, t, width)))


class _MLP(nn.Module):
    def __init__(self, n_embd: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(n_embd, 4 * n_embd)
        self.gelu = nn.GELU()
        self.proj = nn.Linear(4 * n_embd, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.gelu(self.fc(x))))


class _Block(nn.Module):
    """Pre-norm Transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln2 = nn.LayerNorm(n_embd)
        self.mlp = _MLP(n_embd, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """A small decoder-only Transformer in the shape of nanoGPT (Karpathy): token and learned position
    embeddings, ``n_layer`` pre-norm blocks of causal self-attention and a GELU MLP (4x wide), a final
    LayerNorm and a linear head over the vocabulary (optionally tied to the token embedding).

    ``forward(idx)`` maps token ids (B, T), T <= ``block_size``, to next-token logits (B, T, vocab).
    Initialisation as nanoGPT's: normal(0, 0.02) weights, zero biases, and the projections into the
    residual stream (``out_proj``, ``mlp.proj``) at 0.02 / sqrt(2 n_layer).
    """

    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int, dropout: float, tie_weights: bool) -> None:
        super().__init__()
        self.block_size = block_size
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("out_proj.weight", "mlp.proj.weight")) else 0.02
                nn.init.normal_(p, mean=0.0, std=std)
        if tie_weights:
            self.lm_head.weight = self.tok_emb.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.dim() != 2:
            raise ValueError(f"GPT expects token ids of shape (batch, time), got {tuple(idx.shape)}")
        t = idx.shape[1]
        if t > self.block_size:
            raise ValueError(f"sequence of length {t} is longer than the model's block_size {self.block_size}")
        x = self.drop(self.tok_emb(idx) + self.pos_emb(torch.arange(t, device=idx.device)))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"option {name!r} must be a positive int, got {value!r}")
    return value


@register_model("gpt", task="language-modelling")
def gpt(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    n_layer: int = 4,
    n_head: int = 4,
    n_embd: int = 128,
    block_size: int = 64,
    dropout: float = 0.0,
    tie_weights: bool = False,
) -> nn.Module:
    """Character-level GPT (see :class:`GPT`) over a vocabulary of ``num_classes`` tokens.

    Needs a text data set (``input_shape`` ``(1,)``: one token id per position). The default, 4 layers
    of width 128 with 4 heads and a context of 64 characters (814,208 weights on a vocabulary of 96,
    all but 20,480 of them in prunable Linear layers), is sized for two CPU cores. ``tie_weights``
    shares the head's weight with the token embedding.
    """
    if tuple(input_shape) != (1,):
        raise ValueError(
            f"model 'gpt' reads text (token ids; input_shape (1,), e.g. the 'shakespeare' data set); got input_shape {input_shape}"
        )
    for name, value in (("n_layer", n_layer), ("n_head", n_head), ("n_embd", n_embd), ("block_size", block_size)):
        _positive_int(name, value)
    if n_embd % n_head:
        raise ValueError(f"option 'n_embd' ({n_embd}) must be a multiple of 'n_head' ({n_head})")
    if not isinstance(tie_weights, bool):
        raise ValueError(f"option 'tie_weights' must be true or false, got {tie_weights!r}")
    return GPT(num_classes, block_size, n_layer, n_head, n_embd, _check_dropout(dropout), tie_weights)
