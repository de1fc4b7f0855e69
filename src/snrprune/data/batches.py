"""Batch iteration and the batch-wise image augmentation."""

from __future__ import annotations

from typing import Callable, Iterator

import torch

def iterate_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x_batch, y_batch)`` covering every sample once (one epoch).

    With ``shuffle`` the order is a ``torch.randperm`` drawn from ``generator``
    (deterministic for a seeded generator).  ``drop_last`` drops a final
    incomplete batch.  ``augment(x_batch, generator)`` is applied to each
    batch (it must not modify its input in place).
    """
    n = int(x.shape[0])
    if int(y.shape[0]) != n:
        raise ValueError(f"x has {n} samples but y has {int(y.shape[0])}")
    if int(batch_size) <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    batch_size = int(batch_size)
    order: torch.Tensor | None = None
    if shuffle:
        gen_device = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(n, generator=generator, device=gen_device).to(x.device)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        if drop_last and stop - start < batch_size:
            break
        if order is None:
            xb, yb = x[start:stop], y[start:stop]
        else:
            idx = order[start:stop]
            xb = x.index_select(0, idx)
            yb = y.index_select(0, idx.to(y.device))
        if augment is not None:
            xb = augment(xb, generator)
        yield xb, yb


# --------------------------------------------------------------------------
# augmentation
# --------------------------------------------------------------------------


def random_crop_flip(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    padding: int = 4,
    fill: torch.Tensor | float = 0.0,
    flip: bool = True,
) -> torch.Tensor:
    """Random crop (after ``padding`` pixels of ``fill``) plus horizontal flip.

    ``x`` is a batch (N, C, H, W); the output has the same shape.  ``fill`` is
    a scalar or a per-channel tensor (the value of a black pixel after
    normalisation, for "zero padding" in pixel space).  All randomness comes
    from ``generator`` (on CPU, or on ``x``'s device).
    """
    if x.dim() != 4:
        raise ValueError(f"expected a batch (N, C, H, W), got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    p = int(padding)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    dy = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=gen_device).to(x.device)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=gen_device).to(x.device)
    do_flip = (torch.rand(n, generator=generator, device=gen_device) < 0.5).to(x.device)
    if not flip:
        do_flip = torch.zeros_like(do_flip)
    if n == 0:
        return x.clone()
    padded = x.new_empty((n, c, h + 2 * p, w + 2 * p))
    fill_t = torch.as_tensor(fill, dtype=x.dtype, device=x.device)
    padded.copy_(fill_t.reshape(1, -1, 1, 1).expand_as(padded) if fill_t.dim() else fill_t.expand_as(padded))
    padded[:, :, p : p + h, p : p + w] = x
    rows = dy[:, None] + torch.arange(h, device=x.device)[None, :]  # (N, H)
    cols = dx[:, None] + torch.arange(w, device=x.device)[None, :]  # (N, W)
    cols = torch.where(do_flip[:, None], cols.flip(1), cols)
    n_idx = torch.arange(n, device=x.device)[:, None, None, None]
    c_idx = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[n_idx, c_idx, rows[:, None, :, None], cols[:, None, None, :]]
