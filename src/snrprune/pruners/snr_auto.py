"""``snr-auto``: schedule-free pruning driven by the window SNR of the kept weights (beyond the paper)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from ..layers import NameFilter
from ..masks import count, keep_largest, keep_units, magnitude_keep_masks
from ..statistics import snr_from_moments
from .base import Pruning, _check_float, _check_int, register_method


#: The fewest steps a decision reads: the noise of z, F(1, T - 1), has a finite variance from T = 6 on,
#: so the spread of the drawn band means something.
MIN_WINDOW_STEPS = 6

#: The window's gradients are summed in this many interleaved classes (step t into class t mod M):
#: the sign flips of the noise band act on whole classes (see ``SNRAutoPruning.evidence``).
SIGN_CLASSES = 16

#: How many sign patterns draw the noise band.
NULL_DRAWS = 32

#: The default ``band_sample``: a controller of more weights estimates its noise band from the class
#: sums of about this many kept weights, so that its window holds 8 bytes a weight instead of 68
#: (GPT-2-small's 123.5M prunable weights: 1.0 GB instead of 8.4 GB). A controller of fewer weights,
#: every model of the suite among them, keeps every class sum and decides exactly as without a sample.
#: A sample of 65,536 already changed no decision on letter and LeNet-5/MNIST and only borderline
#: ones on LeNet-300-100 (``benchmarks/results/band_sample.md``); this one is 16 times larger.
BAND_SAMPLE = 1 << 20

#: The seed of the band's weight sample is this plus the step at which the window starts.
SAMPLE_SEED = 0x5B5A_0000

#: The window the front ends (``snrprune train``, the Lightning callback) give by default, in epochs:
#: one epoch of a shuffle, read at each half too (``nested``). One-epoch windows alone find more
#: sparsity on small data sets (up to ~250 steps an epoch in the suite), half-epoch windows more on
#: large ones (finding 4); nested windows read both (finding 14).
DEFAULT_WINDOW_EPOCHS = 1.0


def resolve_rules(
    pooled: bool,
    nested: bool | None,
    pruned_witness: bool | None,
    step_growth: bool | None,
    granularity: str,
    scope: str = "global",
    lr_power: float | None = None,
) -> tuple[bool, bool, bool, float]:
    """``nested``, ``pruned_witness``, ``step_growth`` and ``lr_power`` as a run applies them. None (the
    default): ``pruned_witness`` on, ``nested`` and ``step_growth`` on at granularity ``"weight"`` and
    off at ``"unit"``; ``nested`` and ``pruned_witness`` off with ``pooled`` (a different decision rule),
    the witness off at unit granularity in layer scope (a group's controller reads its own layer, and
    its removed units' outgoing columns lie in the next one). At unit granularity nested windows with
    step growth removed 98% of LeNet-300-100's units at 32% test error (seed 0; one-epoch windows
    without them: 89%, 4.5%; finding 15 of ``benchmarks/RESULTS.md``). ``lr_power`` (the move scale
    is (lr / lr_max) ** lr_power) is 1 at granularity ``"weight"`` and 2 at ``"unit"``, where a move
    removes whole units late in training that the network has too little learning rate left to
    replace (finding 19)."""
    weight = granularity == "weight"
    nested = weight and not pooled if nested is None else nested
    pruned_witness = not pooled and (weight or scope != "layer") if pruned_witness is None else pruned_witness
    step_growth = weight if step_growth is None else step_growth
    lr_power = (1.0 if weight else 2.0) if lr_power is None else lr_power
    return nested, pruned_witness, step_growth, lr_power


def _combine(moves: list[int]) -> int:
    """Several witnesses of one decision: converged if any reads converged, drift only if all read drift."""
    return -1 if -1 in moves else (1 if all(m == 1 for m in moves) else 0)


def band_variance(var_mean: float, mean_var: float, m: int, n: int) -> float:
    """The variance over the sign patterns of the mean z of n kept weights, estimated from m of them drawn at random.

    ``var_mean``: the unbiased variance over the draws of the sample's mean z; ``mean_var``: the mean
    over the sample of each weight's unbiased variance over the draws. With avg_var and avg_cov the
    mean variance and the mean pairwise covariance of the n weights' z, the mean's variance is
    avg_cov + (avg_var - avg_cov) / n; ``mean_var`` estimates avg_var and (m var_mean - mean_var) / (m - 1)
    avg_cov, both without bias, so the result is unbiased too (``benchmarks/prototypes/snr-auto-memory.md``).
    One weight cannot tell its covariance with the others: it is taken as fully correlated (its own variance).
    """
    if m < 2:
        return var_mean
    avg_cov = (m * var_mean - mean_var) / (m - 1)
    return avg_cov + (mean_var - avg_cov) / n


def epoch_window_steps(epoch_steps: int, window_epochs: float = DEFAULT_WINDOW_EPOCHS) -> int:
    """The window in optimizer steps for a window of ``window_epochs`` epochs of ``epoch_steps`` steps (at least one)."""
    return max(1, round(window_epochs * epoch_steps))


@register_method("snr-auto")
class SNRAutoPruning(Pruning):
    """Schedule-free pruning: the network gives up weights while its *kept* weights have converged.

    The paper's per-weight test cannot say how much to prune: late in training nearly every weight's
    mini-batch SNR sits at the noise level, pruned or not (``shared/research/snr-statistics.md``).
    This method moves the test to a window of many steps (``window_steps``, one epoch in
    ``snrprune train``) and to a set of weights. Per weight it sums the mini-batch gradients g_t that
    the optimizer applies and their squares over the T steps of the window, so that
    ``z = T * mean**2 / var`` (mean and unbiased variance of g_t over the steps) is the SNR of the
    mini-batch gradient averaged over the window. Under SGD the summed gradient is the weight's
    displacement over the window divided by the learning rate, so z reads how the weight moved: z near
    its noise mean (T - 1) / (T - 3) for a random walk (gradient noise only; 1 for long windows), below
    for a weight held at a minimum (its gradients cancel), above for a weight that drifts (still
    learning). Take the window from a without-replacement shuffle (a shuffling ``DataLoader``), as one
    epoch (:data:`DEFAULT_WINDOW_EPOCHS`, ``snrprune train``'s default). A window of
    one epoch sums every sample's gradient once, so at fixed weights its sampling noise cancels and z
    reads the full-batch gradient against the batch noise, N |grad L|^2 / (per-sample variance):
    whether the training loss still has a gradient its N samples can resolve. Half an epoch keeps
    half of that noise (each sample at most once) and decides twice as often. On small data sets
    (up to ~250 steps an epoch) the cancellation is most of the evidence and one-epoch windows find
    more; on large ones the dynamics show within a few hundred steps and half-epoch windows find
    more. Batches drawn with replacement, or windows across epoch boundaries, lose the cancellation
    (session 6 of ``benchmarks/prototypes/snr-auto-variants.md``).

    At the end of a window the mean z of the kept weights is compared with a noise band drawn from
    the window itself (:meth:`evidence`): the mean z of sign-flipped copies of the window,
    which are random walks by construction, +- two standard deviations, scaled by ``threshold``. The
    kept weights share the batches, so their z are correlated and their mean varies far more than n
    independent F(1, T - 1) variables would (``benchmarks/window_snr_noise.py``); the drawn band
    carries that correlation, so pure noise is held instead of read as a signal:

    - below the band: the kept weights have converged, the network can give up weights: the density
      is multiplied by ``1 - step * lr / lr_max``;
    - above the band: the kept weights drift, the network is still adapting (or compensating for what
      was pruned): the density is divided by that factor (the pruned weights of largest magnitude
      return) -- but not in the window right after a prune: that window always shows the kept
      weights adapting to the loss of the others, so drift there only holds the density (hysteresis);
      regrowth needs drift that outlasts the adaptation;
    - inside the band: no evidence either way, the density is left as it is.

    A move is scaled by the optimizer's learning rate over the largest seen, ``lr / lr_max``: how far
    SGD can carry the network in the next window, so how much change it can absorb. Late in a decaying
    schedule the moves shrink with it, instead of pruning (or regrowing) in bulk when the network can
    no longer recover. At unit granularity the scale is squared (``lr_power`` 2): a move there removes
    or restores whole units, and under a decaying schedule the learning left to absorb it shrinks
    faster than the rate itself (the rest of a linear decay holds (lr / lr_max) ** 2 of its start's).
    The step also halves when the direction reverses, so the density settles at
    the boundary under a constant learning rate. Masks keep the largest dense magnitudes at the
    density, recomputed every ``update_every`` steps; pruned weights keep training through the DPF
    feedback. No target sparsity, no schedule.

    The noise comes from the spread of the mini-batch gradients across steps, not from per-sample
    gradients within a batch. The two agree for independent samples (the variance of a batch mean is
    the per-sample variance over B), but BatchNorm in training mode couples the samples of a batch and
    removes each channel's batch-mean output gradient, which makes the per-sample contributions large
    and nearly cancelling: a per-sample variance then overstates the noise of the gradient the
    optimizer applies, and every convolution looks converged (``benchmarks/batchnorm_noise.py``). The
    step-to-step spread is the noise of the applied gradient whatever couples the samples, and it
    costs no per-sample statistics: two element-wise passes a step, into :data:`SIGN_CLASSES` class
    sums and one sum of squares (memory: SIGN_CLASSES + 1 float32 numbers per prunable weight). Under
    DDP the gradients it reads are the all-reduced ones and the signs depend on the step alone, so
    every rank decides the same.

    ``band_sample=m`` (:data:`BAND_SAMPLE` by default; None or 0: every weight) keeps the class sums
    for a random sample of the controller's weights only, drawn at each window's start among all of
    them, pruned or not, so that about m are kept (the same on every rank and in a resumed run), and per
    weight only the window's sum of g_t and of its squares: 2 float32 numbers per prunable weight (4 with
    ``nested``) instead of 17 (18). The mean z stays exact; the band's centre and its spread, which the
    kept weights' correlation makes, are estimated from the sample's kept weights without bias
    (:func:`band_variance`). A controller whose sample would hold all its weights keeps every class sum
    and decides exactly as without a sample (:data:`BAND_SAMPLE`: the proposed m).

    One rule for every size of data set (issue 19; the suite's frontier table and finding 14 of
    ``benchmarks/RESULTS.md``), on by default: ``nested`` (a decision at each half of the window too,
    reading the half alone, then the whole window as a second witness: the half reads the within-epoch
    dynamics of a large data set, the whole epoch the cancellation of a small one), ``pruned_witness``
    (the pruned weights read by the same test, at each witness: converged if either set is, regrow only
    if the pruned weights drift, i.e. the masked network keeps pushing them one way under the DPF
    feedback) and ``step_growth`` (a move the same way as the last doubles the step again, up to
    ``step``). Their defaults, None, resolve by :func:`resolve_rules`: all on at weight granularity;
    at unit granularity the witness alone, since nested windows with step growth over-prune units.
    ``pooled`` (each window's deviation from the band pooled with those since the evidence
    last fired; a negative result, kept to measure) replaces both and turns them off.

    ``scope="global"`` (the default): one controller for the whole network (key :data:`GLOBAL` of
    ``density``, ``step``, ``direction``), fed by the mean window SNR of all kept weights, and masks
    that keep the largest magnitudes over all layers, as DPF's global scope does, so that the layers
    share the density by magnitude. ``scope="layer"``: one controller and one magnitude ranking per
    layer. Either way a layer never drops below one weight per output unit, and a window in which the
    kept weights received no gradient leaves the density as it is, so no layer can collapse.

    ``granularity="unit"`` (with ``example_inputs``): the same rule on units. The evidence is the
    window SNR of the kept weights, which are now the weights of the kept units, and of the removed
    units' consumer columns (the pruned witness, whose drift comes first here: :meth:`_reading`);
    ``density`` is the fraction of units kept (over all groups, or per group in layer scope, where a group's controller
    reads its root layer's weights); masks keep the units of largest dense-weight RMS relative to their group's
    median (or of largest RMS, ``unit_ranking="rms"``: :meth:`~snrprune.pruners.Pruning.unit_scores`), and every group keeps at least one unit. The
    output layer's outputs are never units, so they are never removed.
    """

    #: The key of the network-wide controller in ``density``, ``step`` and ``direction`` (global scope).
    GLOBAL = "*"

    #: Weights per slice when the noise band is drawn, so that its temporaries stay small for large layers.
    CHUNK = 1 << 18

    def __init__(
        self,
        model: nn.Module,
        window_steps: int,
        step: float = 0.5,
        threshold: float = 1.0,
        update_every: int = 16,
        scope: str = "global",
        *,
        lr_scaled: bool = True,
        hysteresis: bool = True,
        nested: bool | None = None,
        pooled: bool = False,
        pruned_witness: bool | None = None,
        step_growth: bool | None = None,
        lr_power: float | None = None,
        include: NameFilter = None,
        exclude: NameFilter = None,
        granularity: str = "weight",
        example_inputs: Any = None,
        unit_ranking: str | None = None,
        band_sample: int | None = BAND_SAMPLE,
    ):
        super().__init__(
            model, scope=scope, include=include, exclude=exclude, granularity=granularity, example_inputs=example_inputs, unit_ranking=unit_ranking
        )
        flags = {"lr_scaled": lr_scaled, "hysteresis": hysteresis, "nested": nested, "pooled": pooled, "pruned_witness": pruned_witness, "step_growth": step_growth}
        for flag, value in flags.items():
            optional = flag in ("nested", "pruned_witness", "step_growth")
            if not isinstance(value, bool) and not (value is None and optional):
                raise ValueError(f"{flag} must be True or False{' (or None: the default rule)' if optional else ''}, got {value!r}")
        rules = [name for name in ("pooled", "nested", "pruned_witness") if flags[name]]
        if pooled and len(rules) > 1:
            raise ValueError(f"{' and '.join(rules)} are different decision rules: choose one (pooled replaces the default nested windows and pruned witness)")
        if pruned_witness and self.granularity == "unit" and self.scope == "layer":
            raise ValueError(
                "pruned_witness at unit granularity reads the removed units' outgoing columns, which lie in the next layer, "
                "and in scope 'layer' a group's controller reads its own layer alone: use scope 'global', or pruned_witness=False"
            )
        if lr_power is not None and (isinstance(lr_power, bool) or not isinstance(lr_power, (int, float)) or not 0 < lr_power < math.inf):
            raise ValueError(f"lr_power must be a positive number (or None: the default rule), got {lr_power!r}")
        nested, pruned_witness, step_growth, lr_power = resolve_rules(pooled, nested, pruned_witness, step_growth, self.granularity, self.scope, lr_power)
        self.pooled, self.pruned_witness, self.step_growth, self.lr_power = pooled, pruned_witness, step_growth, lr_power
        # every rule on by default; off only to measure what each is worth (the suite's ablations and
        # the earlier defaults, kept as measured)
        self.lr_scaled, self.hysteresis, self.nested = lr_scaled, hysteresis, nested
        self.window_steps = _check_int("window_steps", window_steps, 1)
        # the noise band from a sample of about band_sample kept weights per controller (None: every weight)
        self.band_sample = None if band_sample is None else (_check_int("band_sample", band_sample, 0) or None)
        # nested: the window's two halves are summed apart (the first into the first half of the sign
        # classes, the second into the other half), so a decision at the half reads the first half alone
        self.parts = 2 if nested else 1
        self.half = window_steps // 2 if nested else window_steps
        self.initial_step = _check_float("step", step, 0.0, 1.0)
        self.threshold = _check_float("threshold", threshold, 0.0, math.inf)
        if self.threshold == 0:
            warnings.warn(
                "snr-auto with threshold 0 scales the noise band to zero: no window can fall below it, so it never prunes; "
                "use threshold 1 (the band as drawn) or more",
                stacklevel=2,
            )
        self.update_every = _check_int("update_every", update_every, 1)
        # the controllers: one per layer (per unit group: its root layer), or one for the network
        layers = [group.name for group in self.groups] if self.granularity == "unit" else list(self.weights)
        self.units: dict[str, list[str]] = {name: [name] for name in layers} if self.scope == "layer" else {self.GLOBAL: list(self.weights)}
        self.density = {unit: 1.0 for unit in self.units}
        self.step = {unit: self.initial_step for unit in self.units}
        self.direction = {unit: 0 for unit in self.units}  # the last move: -1 pruned, +1 regrown, 0 none yet
        self.adapting = {unit: False for unit in self.units}  # the last window ended with a prune
        self.moved_at_half = {unit: False for unit in self.units}  # nested: this window's half decision moved the density
        self.lr_max = 0.0  # the largest learning rate seen (of the groups holding prunable weights)
        # the guard against collapse: at least one weight per output unit (rows of the weight; columns of HF Conv1D)
        self.min_kept = {layer.name: layer.weight.shape[layer.moments.out_axis] for layer in self.layers}
        if self.granularity == "unit":  # at least one unit per group
            self.min_density = {unit: len(names) / sum(self.unit_keep[n].numel() for n in names) for unit, names in self._controller_groups().items()}
        else:
            self.min_density = {
                unit: sum(self.min_kept[n] for n in names) / sum(self.weights[n].numel() for n in names) for unit, names in self.units.items()
            }
        # name -> [sum of g_t per sign class (SIGN_CLASSES, *shape), sum of g_t**2 per part (parts, *shape)];
        # with a band sample: [sum of g_t per part (parts, *shape), sum of g_t**2 per part (parts, *shape),
        # sum of g_t per sign class of the sampled weights (SIGN_CLASSES, len(sample[name]))]
        self.window: dict[str, list[Tensor]] = {}
        self.sample: dict[str, Tensor] = {}  # name -> this window's band sample: flat indices (int64, ascending)
        self.window_count = 0  # T: the steps summed
        self.window_snr: dict[str, float] = {}  # the last decision's mean window SNR of the kept weights
        self.window_band: dict[str, tuple[float, float]] = {}  # the last decision's noise band: mean, std of the draws
        self.deviation: dict[str, float] = {}  # the last window's (mean z / threshold - band mean) / band std
        # pruned_witness: the last decision's mean window SNR of the pruned weights and their band (mean, std)
        self.pruned_snr: dict[str, float] = {}
        self.pruned_band: dict[str, tuple[float, float]] = {}
        # pooled: the deviations of the windows since the controller's evidence last fired, summed, and their count
        self.pool: dict[str, tuple[float, int]] = {unit: (0.0, 0) for unit in self.units}

    def _controller_groups(self) -> dict[str, list[str]]:
        """Unit granularity: the unit groups each controller sets the density of."""
        return self.units if self.scope == "layer" else {self.GLOBAL: list(self.unit_keep)}

    def lr_scale(self) -> float:
        """How large a move may be now: the learning rate over the largest seen, to the power ``lr_power`` (1 before any is known)."""
        lr = self.lr()
        if not self.lr_scaled or lr is None or self.lr_max <= 0:
            return 1.0
        return min(1.0, lr / self.lr_max) ** self.lr_power

    @torch.no_grad()
    def before_step(self) -> None:
        self.observe_gradients()
        super().before_step()

    def observe_gradients(self) -> None:
        """Adds the gradients the optimizer is about to apply (at theta_hat) to the window sums."""
        lr = self.lr()
        if lr is not None:
            self.lr_max = max(self.lr_max, lr)
        if self.window_count == 0 and self.band_sample:
            self.sample = self.draw_band_sample()
        part, sign_class = self.slot(self.window_count)
        for name, w in self.weights.items():
            acc = self.window.get(name)
            if acc is None:
                dtype = torch.promote_types(w.dtype, torch.float32)  # half-precision weights sum in float32
                if name in self.sample:
                    acc = self.window[name] = [
                        torch.zeros((self.parts, *w.shape), dtype=dtype, device=w.device),  # sum of g_t per part
                        torch.zeros((self.parts, *w.shape), dtype=dtype, device=w.device),  # sum of g_t**2 per part
                        torch.zeros((SIGN_CLASSES, self.sample[name].numel()), dtype=dtype, device=w.device),  # the sample's classes
                    ]
                else:
                    acc = self.window[name] = [
                        torch.zeros((SIGN_CLASSES, *w.shape), dtype=dtype, device=w.device),  # sum of g_t per class
                        torch.zeros((self.parts, *w.shape), dtype=dtype, device=w.device),  # sum of g_t**2 per part
                    ]
            if w.grad is None:  # no gradient this step counts as zero
                continue
            if len(acc) == 3:
                acc[0][part].add_(w.grad)
                acc[1][part].addcmul_(w.grad, w.grad)
                acc[2][sign_class].add_(w.grad.reshape(-1)[self.sample[name]])
            else:
                acc[0][sign_class].add_(w.grad)
                acc[1][part].addcmul_(w.grad, w.grad)
        self.window_count += 1

    def draw_band_sample(self) -> dict[str, Tensor]:
        """The band samples of the window that starts at step ``step_count - window_count``: per layer, flat indices.

        The sample is drawn among *all* the controller's weights, pruned or kept, uniformly without
        replacement: ``band_sample / density`` of them (the density at the window's start), so that about
        ``band_sample`` are kept. It must not depend on the masks: they are recomputed every
        ``update_every`` steps within the window, and a sample of the weights kept at its start would
        miss those that joined later (on LeNet-300-100, 16% of the kept set in one window:
        ``benchmarks/results/band_sample.md``); a sample independent of the masks meets the kept set at
        the decision in a uniform sample of it. A controller whose sample would hold every weight draws
        none (its window keeps every class sum: today's exact band). The draw depends on the window's
        first step and the densities alone, so every rank and a resumed run draw the same. It gives each
        weight a uniform key and keeps the smallest, in slices of :attr:`CHUNK` weights, so its
        temporaries stay O(sample + CHUNK). Layers that no controller reads (unit granularity, layer
        scope: the groups' other layers) get an empty sample.
        """
        if not self.band_sample:
            return {}
        generator = torch.Generator().manual_seed(SAMPLE_SEED + self.step_count - self.window_count)
        sample = {name: torch.zeros(0, dtype=torch.int64, device=w.device) for name, w in self.weights.items()}
        for names in self.units.values():
            sizes = [self.weights[name].numel() for name in names]
            kept = sum(count(self.keep[name]) for name in names)  # the masks' own count (cheap: once a window)
            m = sum(sizes) if kept == 0 else math.ceil(self.band_sample * sum(sizes) / kept)  # about band_sample of them kept
            if sum(sizes) <= m:
                for name in names:
                    del sample[name]
                continue
            keys, ids = torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.int64)  # ids: offsets over the controller
            offset = 0
            for name, size in zip(names, sizes):
                for start in range(0, size, self.CHUNK):
                    chunk = torch.arange(offset + start, offset + min(size, start + self.CHUNK))  # every weight, kept or not
                    new = torch.rand(chunk.numel(), dtype=torch.float64, generator=generator)
                    if keys.numel() == m:  # only keys below the m-th smallest so far can enter
                        below = new < keys.max()
                        chunk, new = chunk[below], new[below]
                    keys, ids = torch.cat([keys, new]), torch.cat([ids, chunk])
                    if keys.numel() > m:
                        keys, order = keys.topk(m, largest=False)
                        ids = ids[order]
                offset += size
            ids = ids.sort().values
            starts = [0]
            for size in sizes:
                starts.append(starts[-1] + size)
            bounds = torch.searchsorted(ids, torch.tensor(starts)).tolist()
            for i, name in enumerate(names):
                sample[name] = (ids[bounds[i] : bounds[i + 1]] - starts[i]).to(self.weights[name].device)
        return sample

    def slot(self, t: int) -> tuple[int, int]:
        """(part, sign class) of the window's step ``t`` (from 0): interleaved classes within each part."""
        part = int(t >= self.half) if self.nested else 0
        per_part = SIGN_CLASSES // self.parts
        return part, part * per_part + (t - part * self.half) % per_part

    def part_counts(self) -> list[int]:
        """The steps summed into each part of the window (one part unless nested)."""
        if not self.nested:
            return [self.window_count]
        first = min(self.window_count, self.half)
        return [first, self.window_count - first]

    def window_due(self, step: int) -> bool:
        return step % self.window_steps == 0

    def half_due(self, step: int) -> bool:
        """Nested: the decision at the window's half, on the first half alone (when it is long enough)."""
        return self.nested and self.half >= MIN_WINDOW_STEPS and step % self.window_steps == self.half

    def update_due(self, step: int) -> bool:
        return self.window_due(step) or self.half_due(step) or step % self.update_every == 0

    def null_signs(self) -> Tensor:
        """The decision's sign patterns, NULL_DRAWS x SIGN_CLASSES: fixed by the step alone, so every rank and a resumed run draw the same."""
        generator = torch.Generator().manual_seed(0x5D7A_0000 + self.step_count)
        return torch.randint(0, 2, (NULL_DRAWS, SIGN_CLASSES), generator=generator).mul_(2).sub_(1)

    def evidence(self, unit: str, parts: range | None = None, pruned: bool = False) -> int:
        """-1: the unit's kept weights converged; +1: they drift; 0: within the noise, or no gradient (hold).

        ``parts``: the parts of the window read (all by default; nested windows: ``range(0, 1)`` is the
        first half, ``range(1, 2)`` the second). ``pruned``: the same test on the pruned weights (their
        gradients are those of the masked network, which the DPF feedback applies to their dense copies),
        logged apart (``pruned_snr``, ``pruned_band``).

        The band is a sign-flip randomisation test. Under the null (a random walk: independent,
        zero-mean gradients from step to step) the sums of the interleaved step classes are
        independent and symmetric, so flipping their signs leaves the window's distribution as it is:
        each pattern of signs gives a mean z that the kept weights could have shown from noise alone,
        with their own noise and with their correlation through the batches they share (one sign per
        class for all weights). Converged weights, whose gradients reverse from step to step, show a
        lower mean z than the flipped windows, drifting weights a higher one; the band is the draws'
        mean +- two standard deviations. Flipping classes instead of steps costs one pass a step
        whatever the number of draws, and misses only correlations at lags that are multiples of
        :data:`SIGN_CLASSES`.

        With ``band_sample`` the band is drawn from the window's sample of the kept weights instead
        (:meth:`_sampled_moments`), and its spread estimated for all of them (:func:`band_variance`).
        """
        parts = range(self.parts) if parts is None else parts
        per_part = SIGN_CLASSES // self.parts
        read = slice(parts.start * per_part, parts.stop * per_part)  # the sign classes of those parts
        steps = sum(self.part_counts()[parts.start : parts.stop])
        signs = self.null_signs()[:, read]
        if any(name in self.sample for name in self.units[unit]):
            z_total, n, draws_total, m, var_total = self._sampled_moments(unit, parts, read, steps, signs, pruned)
        else:
            z_total, n, draws_total = self._moments(unit, parts, read, steps, signs, pruned)
            m, var_total = n, 0.0  # the band's weights are the kept weights
        if not pruned:
            self.deviation.pop(unit, None)
        if n == 0:
            return 0  # a dead layer must not be pruned further (pruned: nothing pruned yet, no evidence)
        mean_z = z_total / n
        (self.pruned_snr if pruned else self.window_snr)[unit] = mean_z
        if m == 0:
            return 0  # no weight of the band's sample is kept with gradient: no band, hold
        null = draws_total / m
        null_mean = float(null.mean())
        if m == n:  # the band drawn from every kept weight: the draws' spread itself
            null_std = float(null.std())
        else:
            null_std = math.sqrt(max(band_variance(float(null.var()), var_total / m, m, n), 0.0))
        (self.pruned_band if pruned else self.window_band)[unit] = (null_mean, null_std)
        if null_std > 0 and self.threshold > 0 and not pruned:  # threshold 0: no band to deviate from (never prunes)
            self.deviation[unit] = (mean_z / self.threshold - null_mean) / null_std
        return self._against_band(mean_z, (null_mean, null_std))

    def _against_band(self, mean_z: float, band: tuple[float, float]) -> int:
        """-1 below the band (converged), +1 above it (drift), 0 inside: ``band`` is the draws' (mean, std), scaled by ``threshold``."""
        null_mean, null_std = band
        if mean_z < self.threshold * (null_mean - 2.0 * null_std):
            return -1
        if mean_z > self.threshold * (null_mean + 2.0 * null_std):
            return 1
        return 0

    def _moments(self, unit: str, parts: range, read: slice, steps: int, signs: Tensor, pruned: bool = False) -> tuple[float, int, Tensor]:
        """The unit's kept weights with gradient: their z summed, their count, and each draw's z summed (every class sum held).
        ``pruned``: its pruned weights with gradient instead (nothing is logged per layer)."""
        z_total, n = 0.0, 0  # the kept weights' z, summed over the unit's layers, and their count
        draws_total = torch.zeros(NULL_DRAWS, dtype=torch.float64)  # each draw's z, summed the same way
        for name in self.units[unit]:
            classes, s2 = self.window[name]
            classes = classes[read].reshape(read.stop - read.start, -1)
            s2 = (s2[parts.start] if len(parts) == 1 else s2[parts.start : parts.stop].sum(dim=0)).reshape(-1)
            chosen = self.keep[name].reshape(-1) > 0
            index = ((s2 > 0) & (~chosen if pruned else chosen)).nonzero().squeeze(1)  # kept (pruned) weights that received any gradient
            if not index.numel():
                continue
            z_layer = 0.0
            # bounded memory: NULL_DRAWS x CHUNK at a time; slices of the layer itself when every weight counts (no gather)
            slices = index.split(self.CHUNK) if index.numel() < s2.numel() else [slice(i, i + self.CHUNK) for i in range(0, s2.numel(), self.CHUNK)]
            for part in slices:
                sums, s2_part = classes[:, part], s2[part]
                z_layer += float(snr_from_moments(sums.sum(dim=0), s2_part, steps).sum(dtype=torch.float64))
                flipped = signs.to(sums) @ sums  # the sign-flipped windows
                draws = snr_from_moments(flipped, s2_part.expand_as(flipped), steps)
                # summed in the weights' dtype within a slice (a float64 sum of the slice costs 25x as much
                # on the CPU, for a relative difference of 1e-7), in float64 across slices and layers
                draws_total += draws.sum(dim=1).to(device="cpu", dtype=torch.float64)
            if not pruned:
                self.window_snr[name] = z_layer / index.numel()
            z_total, n = z_total + z_layer, n + index.numel()
        return z_total, n, draws_total

    def _sampled_moments(
        self, unit: str, parts: range, read: slice, steps: int, signs: Tensor, pruned: bool = False
    ) -> tuple[float, int, Tensor, int, float]:
        """With a band sample: the z of every kept weight with gradient summed and their count (n), as
        :meth:`_moments`; each draw's z summed over the sample's kept weights with gradient (the set K),
        their count m, and each one's unbiased variance over the draws, summed. ``pruned``: the pruned
        weights instead."""
        z_total, n, m, var_total = 0.0, 0, 0, 0.0
        draws_total = torch.zeros(NULL_DRAWS, dtype=torch.float64)
        for name in self.units[unit]:
            window = self.window[name]
            keep = self.keep[name].reshape(-1) > 0
            if pruned:
                keep = ~keep
            if len(window) == 3:
                sums, s2, classes = (t.reshape(t.shape[0], -1) for t in window)
                sums, index = sums[parts.start : parts.stop], self.sample[name]
            else:  # a window that holds every class sum (a state's, loaded into a controller of at most band_sample weights): all in the sample
                classes, s2 = window[0].reshape(SIGN_CLASSES, -1), window[1].reshape(window[1].shape[0], -1)
                sums, index = None, None
            s2, classes = s2[parts.start : parts.stop], classes[read]
            # the observed mean z: every kept weight with gradient, in slices of the layer
            z_layer, n_layer = 0.0, 0
            for start in range(0, keep.numel(), self.CHUNK):
                part = slice(start, start + self.CHUNK)
                s2_part = s2[:, part].sum(dim=0)
                s1_part = (sums if sums is not None else classes)[:, part].sum(dim=0)
                live = (s2_part > 0) & keep[part]
                count = int(live.sum())
                if count:
                    z_layer += float(snr_from_moments(s1_part[live], s2_part[live], steps).sum(dtype=torch.float64))
                    n_layer += count
            if not n_layer:
                continue
            if not pruned:
                self.window_snr[name] = z_layer / n_layer
            z_total, n = z_total + z_layer, n + n_layer
            # the band: the sample's kept weights with gradient
            s2_sample = s2.sum(dim=0) if index is None else s2[:, index].sum(dim=0)
            keep_sample = keep if index is None else keep[index]
            band = ((s2_sample > 0) & keep_sample).nonzero().squeeze(1)
            for chunk in band.split(self.CHUNK) if band.numel() else ():
                sums_chunk = classes[:, chunk]
                flipped = signs.to(sums_chunk) @ sums_chunk
                draws = snr_from_moments(flipped, s2_sample[chunk].expand_as(flipped), steps)
                draws_total += draws.sum(dim=1).to(device="cpu", dtype=torch.float64)
                var_total += float(draws.var(dim=0).sum(dtype=torch.float64))
                m += chunk.numel()
        return z_total, n, draws_total, m, var_total

    def decide(self) -> None:
        """End of a window: each unit's density (a layer's, or the network's) moves by the evidence of its kept weights.

        Nested windows have two witnesses here, the whole window and its second half: -1 if either
        reads converged, +1 only if both read drift. The whole window sums an epoch of a shuffle
        (every sample once: the sampling noise cancels, small data sets); the second half shows the
        recent dynamics (large data sets, where many steps make an epoch).
        """
        if self.window_count < MIN_WINDOW_STEPS:
            return  # too few steps for a variance with a finite spread: the window goes on
        second = self.nested and self.part_counts()[1] >= MIN_WINDOW_STEPS
        moves = {}
        for unit in self.units:
            if self.pooled:
                moves[unit] = self._pooled_evidence(unit)
                continue
            # the second half, read first (the whole window's numbers are the ones logged); the whole
            # window only if the half's decision did not move: its first half was acted on already
            witnesses = ([range(1, 2)] if second else []) + ([None] if not self.moved_at_half[unit] else [])
            moves[unit] = _combine([self._reading(unit, parts) for parts in witnesses]) if witnesses else 0
        self._move(moves)
        self.window = {}
        self.sample = {}
        self.window_count = 0
        self.moved_at_half = {unit: False for unit in self.units}

    def _pooled_evidence(self, unit: str) -> int:
        """``pooled``: this window's deviation joins those of the windows since the evidence last fired,
        and the pool decides (Stouffer's sum over k windows, over sqrt(k), against the same two standard
        deviations): a weak but steady reading adds up over windows, and a strong one still decides
        after one window. It does not replace an epoch's cancellation: pooled half-epoch windows found
        nothing on optdigits, where one-epoch windows read converged (session 8 of
        ``benchmarks/prototypes/snr-auto-variants.md``). The window
        right after a prune may prune again on its own evidence, but is not pooled: its drift is the
        network adapting to the prune (hysteresis)."""
        single = self.evidence(unit)
        d = self.deviation.get(unit)
        if d is None:
            return 0  # no gradient, or no spread in the band: hold, and the pool waits
        if self.adapting[unit] and self.hysteresis:
            return min(0, single)
        total, k = self.pool[unit]
        total, k = total + d, k + 1
        self.pool[unit] = (total, k)
        pooled = total / math.sqrt(k)
        return -1 if pooled < -2.0 else (1 if pooled > 2.0 else 0)

    def _reading(self, unit: str, parts: range | None = None) -> int:
        """The evidence of the window (or its ``parts``): the kept weights', or with ``pruned_witness`` the
        kept and the pruned weights' together. Converged if either set reads converged; drift (regrow) only
        if the pruned weights drift: the masked network's gradient keeps pushing them the same way, so it
        wants them back. The kept weights drifting alone holds: the network is still learning with what
        it has. Before anything is pruned the kept weights decide alone (the pruned set is empty: no
        evidence). At unit granularity the pruned set is the removed units' consumer columns (the model
        holds units at their consumers only, so those columns get the gradient they would have with the
        unit back in; it is read, never applied), and their drift comes first: regrow even when the kept
        weights read converged. Kept units converge within a window or two whatever was removed, so
        with converged first LeNet-300-100 lost 89% of its units at 4.5% test error (dense 1.7%);
        with drift first it kept 49% of them at 1.8% (seeds 0 and 1; finding 16)."""
        kept = self.evidence(unit, parts)
        if not self.pruned_witness:
            return kept
        pruned = self.evidence(unit, parts, pruned=True)
        if self.granularity == "unit":  # the removed units' outgoing gradients drift: regrow, however the kept read
            return 1 if pruned > 0 else (-1 if kept < 0 or pruned < 0 else 0)
        return -1 if kept < 0 or pruned < 0 else (1 if pruned > 0 else 0)

    def decide_half(self) -> None:
        """Nested windows, at the half: converged weights in the first half alone prune; drift there only
        holds (regrowth needs the whole window's witness too); the window goes on."""
        before = dict(self.density)
        self._move({unit: min(0, self._reading(unit, range(0, 1))) for unit in self.units})
        self.moved_at_half = {unit: self.density[unit] != before[unit] for unit in self.units}

    def _move(self, moves: dict[str, int]) -> None:
        """Each unit's density moves by its evidence (-1 prune, +1 regrow, 0 hold), scaled by the learning rate."""
        scale = self.lr_scale()
        for unit, move in moves.items():
            if move != 0:
                self.pool[unit] = (0.0, 0)  # the evidence fired: the next windows pool afresh
            adapting, self.adapting[unit] = self.adapting[unit], False
            if move == 0 or (move > 0 and adapting):  # drift right after a prune: the network adapting
                continue
            if move == -self.direction[unit]:
                self.step[unit] /= 2  # reversed: settle at the boundary
            elif move == self.direction[unit] and self.step_growth:  # the same way again: the step grows back
                self.step[unit] = min(self.initial_step, 2 * self.step[unit])
            factor = 1.0 - self.step[unit] * scale
            density = self.density[unit] * factor if move < 0 else self.density[unit] / factor
            density = min(1.0, max(self.min_density[unit], density))
            if density != self.density[unit]:  # a move against a bound (dense, the floor) is no direction
                self.density[unit] = density
                self.direction[unit] = move
                self.adapting[unit] = move < 0 and self.hysteresis

    def compute_masks(self) -> dict[str, Tensor]:
        if self.window_due(self.step_count):
            self.decide()
        elif self.half_due(self.step_count):
            self.decide_half()
        if self.granularity == "unit":
            return self._unit_masks()
        if self.scope == "layer":
            n_prune = {name: w.numel() - max(1, round(self.density[name] * w.numel())) for name, w in self.dense.items()}
            return magnitude_keep_masks(self.dense, n_prune, "layer")
        masks = magnitude_keep_masks(self.dense, self.total - max(1, round(self.density[self.GLOBAL] * self.total)), "global")
        for name, w in self.dense.items():  # the guard: a layer the global ranking empties keeps its floor
            if count(masks[name]) < self.min_kept[name]:
                floor = keep_largest(w.abs(), w.numel() - self.min_kept[name])
                masks[name] = torch.maximum(masks[name], floor)
        return masks

    def _unit_masks(self) -> dict[str, Tensor]:
        """Keep-vectors of the units of largest score (:meth:`unit_scores`) at each controller's density (unit granularity)."""
        scores = self.unit_scores()
        if self.scope == "layer":
            return keep_units(scores, {name: v.numel() - max(1, round(self.density[name] * v.numel())) for name, v in scores.items()}, "layer")
        return keep_units(scores, self.unit_total - max(1, round(self.density[self.GLOBAL] * self.unit_total)), "global")

    def diagnostics(self) -> dict[str, Any]:
        return {
            **super().diagnostics(),
            "density": dict(self.density),
            "window_snr": dict(self.window_snr),
            "window_band": {unit: list(band) for unit, band in self.window_band.items()},  # mean, std of the draws
            "deviation": dict(self.deviation),
            **({"pool": {unit: list(pool) for unit, pool in self.pool.items()}} if self.pooled else {}),
            **({"pruned_snr": dict(self.pruned_snr), "pruned_band": {u: list(b) for u, b in self.pruned_band.items()}} if self.pruned_witness else {}),
            "step": dict(self.step),
            "lr_scale": self.lr_scale(),
        }

    def idle_reason(self) -> str | None:
        """Why every controller ended at density 1, from their last decisions; None if any pruned, or none decided.

        The character-level GPT of the suite ended dense because its output layer, 1.5% of the weights,
        read a window SNR of 572 and made 8.8 of the network's 9.75 (finding 18 of ``benchmarks/RESULTS.md``):
        the message names such a layer."""
        read = [unit for unit in self.units if unit in self.window_snr and unit in self.window_band]
        if not read or self.threshold == 0 or any(density < 1.0 for density in self.density.values()):
            return None  # threshold 0 never prunes, and says so when the method is made
        verdicts = {unit: ("below", "inside", "above")[self._against_band(self.window_snr[unit], self.window_band[unit]) + 1] for unit in read}
        why = {
            "above": "drift: the kept weights were still learning, and snr-auto prunes only once they (or the pruned ones) read converged, below the band",
            "inside": "no evidence either way: their gradients read as a random walk, not as converged (below the band)",
            "below": "converged, but the move was held (the window right after a move, or a layer at its floor)",
        }
        advice = ". A longer run gives it more windows to decide in; dpf with a target (--method dpf --target-sparsity S) prunes regardless of the gradients"
        if self.scope == "layer":
            counts = ", ".join(f"{sum(v == kind for v in verdicts.values())} {kind}" for kind in ("above", "inside", "below") if kind in verdicts.values())
            kinds = "; ".join(f"{kind}: {why[kind]}" for kind in ("above", "inside", "below") if kind in verdicts.values())
            return f"snr-auto pruned nothing: at their last decisions the layers' kept weights read {counts} their noise bands ({kinds})" + advice
        z, (mean, std) = self.window_snr[self.GLOBAL], self.window_band[self.GLOBAL]
        text = (
            f"snr-auto pruned nothing: at its last decision the kept weights' mean window SNR was {z:.3g} against a noise band of "
            f"{self.threshold * mean:.3g} +- {2 * self.threshold * std:.3g} (two standard deviations): {why[verdicts[self.GLOBAL]]}"
        )
        # a layer that makes most of the network's mean with a minority of its weights holds the whole network
        kept = {name: count(self.keep[name]) for name in self.units[self.GLOBAL] if name in self.window_snr}
        z_sums = {name: self.window_snr[name] * n for name, n in kept.items()}  # each layer's part of the summed z
        total, n_kept = sum(z_sums.values()), sum(kept.values())
        if total > 0 and len(kept) > 1:
            name = max(z_sums, key=z_sums.get)
            share, weights = z_sums[name] / total, kept[name] / n_kept
            if share > 0.5 > weights:
                text += (
                    f". Layer {name} alone ({100 * weights:.3g}% of the kept weights, window SNR {self.window_snr[name]:.3g}) made "
                    f"{100 * share:.3g}% of that mean: one layer that still learns holds the whole network in scope 'global' "
                    f"(the other layers read {(total - z_sums[name]) / max(1, n_kept - kept[name]):.3g}); "
                    f"in scope 'layer' (--scope layer) each layer decides on its own weights' readings, so it would hold only itself"
                )
        return text + advice

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            density=dict(self.density),
            auto_step=dict(self.step),
            direction=dict(self.direction),
            adapting=dict(self.adapting),
            moved_at_half=dict(self.moved_at_half),
            lr_max=self.lr_max,
            window={name: [t.clone() for t in sums] for name, sums in self.window.items()},
            window_count=self.window_count,
            band_sample=self.band_sample,
            sample={name: index.clone() for name, index in self.sample.items()},
            nested=self.nested,
            lr_power=self.lr_power,
            pooled=self.pooled,
            pool={unit: list(pool) for unit, pool in self.pool.items()},
            pruned_snr=dict(self.pruned_snr),
            pruned_band={unit: list(band) for unit, band in self.pruned_band.items()},
            deviation=dict(self.deviation),
            window_snr=dict(self.window_snr),
            window_band={unit: list(band) for unit, band in self.window_band.items()},
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_method(state)
        if set(state.get("density", {})) != set(self.units):
            raise ValueError(
                f"the state's controllers are {sorted(state.get('density', {}))}, this object's are {sorted(self.units)}: "
                "load it into an SNRAutoPruning of the same scope"
            )
        super().load_state_dict(state)
        self.density = {unit: float(state["density"][unit]) for unit in self.units}
        self.step = {unit: float(state["auto_step"][unit]) for unit in self.units}
        self.direction = {unit: int(state["direction"][unit]) for unit in self.units}
        self.adapting = {unit: bool(state.get("adapting", {}).get(unit, False)) for unit in self.units}
        self.moved_at_half = {unit: bool(state.get("moved_at_half", {}).get(unit, False)) for unit in self.units}
        self.lr_max = float(state.get("lr_max", 0.0))
        # the sums keep their own dtype (float32 for half-precision weights), on the weights' device
        nested = bool(state.get("nested", False))  # states from before nested windows had one part
        if nested != self.nested and int(state["window_count"]) > 0:
            raise ValueError(
                f"the state's window was summed {'in two halves (nested=True)' if nested else 'as one part (nested=False)'}; "
                f"this object has nested={self.nested}: load it into an SNRAutoPruning with nested={nested}"
            )
        lr_power = float(state.get("lr_power", 1.0))  # states from before the rule scaled moves by lr / lr_max
        if lr_power != self.lr_power:
            raise ValueError(
                f"the state's moves were scaled by (lr / lr_max) ** {lr_power:g}, this object's by ** {self.lr_power:g}: "
                f"load it into an SNRAutoPruning with lr_power={lr_power:g}, so that the run continues as it began"
            )
        if any(len(sums) == 3 for sums in state["window"].values()) and not self.band_sample:
            raise ValueError(
                f"the state's window holds the noise band's class sums for a sample of the weights (band_sample="
                f"{state.get('band_sample')}), this object for every weight (band_sample=None): load it into an "
                "SNRAutoPruning with band_sample set"
            )
        self.window, self.sample = {}, {}
        for name, sums in state["window"].items():
            device = self.dense[name].device
            if len(sums) == 3:  # a window with a band sample: the sample's indices come with it
                self.window[name] = [t.to(device).clone() for t in sums]
                self.sample[name] = state["sample"][name].to(device).clone()
                continue
            sums, s2 = sums[0].to(device).clone(), sums[1].to(device).clone()
            if sums.shape == s2.shape:  # a state from before the sign classes: its sum of g_t becomes one class
                sums = torch.cat([sums.unsqueeze(0), sums.new_zeros((SIGN_CLASSES - 1, *sums.shape))])
            if s2.shape == self.dense[name].shape:  # one part, stored without its axis
                s2 = s2.unsqueeze(0)
            self.window[name] = [sums, s2]
        self.window_count = int(state["window_count"])
        if self.band_sample and self.window_count:  # a window with every class sum, into an object with a band sample
            self._sample_window()
        self.pool = {unit: (float(state.get("pool", {}).get(unit, (0.0, 0))[0]), int(state.get("pool", {}).get(unit, (0.0, 0))[1])) for unit in self.units}
        self.deviation = {unit: float(d) for unit, d in state.get("deviation", {}).items()}
        self.pruned_snr = {unit: float(z) for unit, z in state.get("pruned_snr", {}).items()}
        self.pruned_band = {unit: (float(band[0]), float(band[1])) for unit, band in state.get("pruned_band", {}).items()}
        self.window_snr = dict(state.get("window_snr", {}))
        self.window_band = {unit: (float(band[0]), float(band[1])) for unit, band in state.get("window_band", {}).items()}

    def _sample_window(self, sample: dict[str, Tensor] | None = None) -> None:
        """Reduces windows that hold every class sum to their band sample (``sample``; by default as drawn
        at the window's start, from the masks now): the sum of g_t per part from the class sums, and the
        sample's class sums."""
        per_part = SIGN_CLASSES // self.parts
        for name, index in (self.draw_band_sample() if sample is None else sample).items():
            if len(self.window.get(name, ())) != 2:
                continue
            classes, s2 = self.window[name]
            sums = torch.stack([classes[p * per_part : (p + 1) * per_part].sum(dim=0) for p in range(self.parts)])
            self.window[name] = [sums, s2, classes.reshape(SIGN_CLASSES, -1)[:, index]]
            self.sample[name] = index
