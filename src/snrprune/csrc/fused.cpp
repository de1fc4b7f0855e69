// Fused CPU kernels for the per-step work of SNR pruning (see snrprune/fused.py).
//
// Eager PyTorch runs the SNR, moving-average and mask arithmetic as a dozen passes over every
// weight; these kernels do it in three: the statistics pass (SNR + moving average), the tie count
// at the magnitude threshold, and the mask pass (keep-mask, distinct-regrowth record, pruned
// weights and the counts). float32, contiguous CPU tensors only;
// every other case stays on the eager path. Results follow the eager formulas operation by
// operation, so the masks are the same.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr float kSnrCap = 1e12f;  // statistics.SNR_CAP
constexpr int64_t kGrain = 1 << 15;
// Loops are written without data-dependent branches (selects and min/max instead), so that the
// compiler vectorizes them; counts go through int32 counters per block of kBlock for the same reason.
constexpr int64_t kBlock = 4096;

void check(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.is_contiguous(), name,
              " must be a contiguous float32 CPU tensor");
}

void check_mask(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kBool && t.is_contiguous(), name,
              " must be a contiguous bool CPU tensor");
}

}  // namespace

// snr = B * mean^2 / var of the per-sample gradients, written as in statistics.snr_from_moments,
// then avg <- lerp(avg, snr, weight) (avg <- snr when `first`). Returns how many averages are not
// above `cut` (the entries the SNR criterion prunes).
int64_t snr_average(const torch::Tensor& s1, const torch::Tensor& s2, torch::Tensor& avg, int64_t count, double weight,
                    bool first, double cut) {
  check(s1, "s1");
  check(s2, "s2");
  check(avg, "avg");
  TORCH_CHECK(s1.numel() == s2.numel() && s1.numel() == avg.numel(), "snr_average: sizes differ");
  TORCH_CHECK(count >= 2, "snr_average: count must be >= 2");
  const float* a = s1.data_ptr<float>();
  const float* b = s2.data_ptr<float>();
  float* m = avg.data_ptr<float>();
  const float neg_inv = static_cast<float>(-1.0 / static_cast<double>(count));
  const float scale = static_cast<float>((static_cast<double>(count) - 1.0) / static_cast<double>(count));
  const float c = static_cast<float>(cut);
  // at::lerp(start, end, w) = fma(w, end - start, start) for w < 0.5, else fma(w - 1, end - start, end);
  // `first` is lerp with weight 1 (avg <- snr exactly)
  const float w = first ? 1.f : static_cast<float>(weight);
  const bool from_start = w < 0.5f;
  const float coeff = from_start ? w : w - 1.f;
  std::atomic<int64_t> below{0};
  at::parallel_for(0, s1.numel(), kGrain, [&](int64_t begin, int64_t end) {
    int64_t local = 0;
    for (int64_t block = begin; block < end; block += kBlock) {
      const int64_t stop = std::min(end, block + kBlock);
      int32_t n_below = 0;
      for (int64_t i = block; i < stop; ++i) {
        const float x = a[i];
        const float x2 = x * x;
        float den = std::fma(neg_inv * x, x, b[i]);  // at::addcmul: one rounding
        den = std::max(den, 0.f);
        float snr = (x2 / den) * scale;  // 0/0 -> nan, c/0 -> inf
        snr = snr != snr ? 0.f : snr;    // nan_to_num(nan=0, posinf=cap) and clamp_max(cap)
        snr = std::min(snr, kSnrCap);
        const float start = first ? 0.f : m[i];
        const float diff = snr - start;
        const float v = std::fma(coeff, diff, from_start ? start : snr);
        m[i] = v;
        n_below += v <= c ? 1 : 0;  // v is never nan here
      }
      local += n_below;
    }
    below += local;
  });
  return below.load();
}

// How many entries of `values` (of |values| with `absolute`) lie strictly below `thr`, and how many
// equal it: the tie count of a selection at thr. (The selection itself stays numpy's introselect,
// which runs vectorized: a radix histogram and a sampled band were both measured slower here.)
std::vector<int64_t> count_around(const torch::Tensor& values, double thr, bool absolute) {
  check(values, "values");
  const float* p = values.data_ptr<float>();
  const float t = static_cast<float>(thr);
  std::atomic<int64_t> less{0}, equal{0};
  at::parallel_for(0, values.numel(), kGrain, [&](int64_t begin, int64_t end) {
    int64_t local_less = 0, local_equal = 0;
    for (int64_t block = begin; block < end; block += kBlock) {
      const int64_t stop = std::min(end, block + kBlock);
      int32_t n_less = 0, n_equal = 0;
      for (int64_t i = block; i < stop; ++i) {
        const float v = absolute ? std::fabs(p[i]) : p[i];
        n_less += v < t ? 1 : 0;
        n_equal += v == t ? 1 : 0;
      }
      local_less += n_less;
      local_equal += n_equal;
    }
    less += local_less;
    equal += local_equal;
  });
  return {less.load(), equal.load()};
}

// The mask pass. keep_mag(i) = |dense_i| > thr, or |dense_i| == thr and i is not among the first
// `ties_pruned` entries equal to thr in flat order (-1: all ties pruned); keep_snr(i) = avg_i > cut.
// `mode`: 0 agree (or), 1 either (and), 2 snr only, 3 magnitude only. Writes keep (bool),
// ever |= keep & !old keep, weight = keep ? dense : 0. Returns {kept, changed}.
std::vector<int64_t> apply_mask(const torch::Tensor& avg, const torch::Tensor& dense, torch::Tensor& keep, torch::Tensor& ever,
                                torch::Tensor& weight, double cut, double thr, int64_t ties_pruned, int64_t mode) {
  check(dense, "dense");
  check_mask(keep, "keep");
  check_mask(ever, "ever");
  check(weight, "weight");
  check(avg, "avg");
  TORCH_CHECK(mode >= 0 && mode <= 3, "apply_mask: unknown mode");
  const int64_t n = dense.numel();
  TORCH_CHECK(keep.numel() == n && ever.numel() == n && weight.numel() == n && avg.numel() == n, "apply_mask: sizes differ");
  const float* m = avg.data_ptr<float>();
  const float* d = dense.data_ptr<float>();
  // bool storage read and written as bytes holding 0 or 1
  uint8_t* k = reinterpret_cast<uint8_t*>(keep.data_ptr<bool>());
  uint8_t* e = reinterpret_cast<uint8_t*>(ever.data_ptr<bool>());
  float* o = weight.data_ptr<float>();
  const float c = static_cast<float>(cut);
  const float t = static_cast<float>(thr);
  // keep: agree snr | mag (max), either snr & mag (min), snr alone, magnitude alone
  std::atomic<int64_t> kept{0}, changed{0};
  // ties_left: how many entries equal to thr are still to be pruned, in flat order; with `ordered`
  // false every tie is pruned (-1) or kept (0), the same for all, so blocks run in any order
  auto pass = [&](int64_t begin, int64_t end, bool ordered, int64_t ties_left) {
    const uint8_t ties_keep = ties_left == 0 ? 1 : 0;
    int64_t local_kept = 0, local_changed = 0;
    for (int64_t block = begin; block < end; block += kBlock) {
      const int64_t stop = std::min(end, block + kBlock);
      int32_t n_kept = 0, n_changed = 0;
      for (int64_t i = block; i < stop; ++i) {
        const float a = std::fabs(d[i]);
        uint8_t mag = a > t ? 1 : (a == t ? ties_keep : 0);
        if (ordered && a == t) mag = ties_left-- > 0 ? 0 : 1;  // rare: not vectorized anyway
        const uint8_t snr = m[i] > c ? 1 : 0;
        const uint8_t nk = mode == 0 ? (snr | mag) : mode == 1 ? (snr & mag) : mode == 2 ? snr : mag;
        const uint8_t old = k[i];
        n_changed += nk != old ? 1 : 0;
        e[i] = e[i] | (nk & (old ^ 1));
        k[i] = nk;
        n_kept += nk;
        o[i] = d[i] * static_cast<float>(nk);  // as eager dense * keep (-0 and nan alike)
      }
      local_kept += n_kept;
      local_changed += n_changed;
    }
    kept += local_kept;
    changed += local_changed;
  };
  if (ties_pruned > 0) {  // which ties are pruned depends on the flat order: one ordered pass
    pass(0, n, true, ties_pruned);
  } else {
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) { pass(begin, end, false, ties_pruned); });
  }
  return {kept.load(), changed.load()};
}

// theta_hat = dense * keep, the masked weights written every step (a bool mask read as bytes:
// a quarter of a float mask's memory traffic, where eager torch.mul with a bool operand casts it
// element by element and runs several times slower than with a float one).
void mask_copy(const torch::Tensor& dense, const torch::Tensor& keep, torch::Tensor& out) {
  check(dense, "dense");
  check_mask(keep, "keep");
  check(out, "out");
  const int64_t n = dense.numel();
  TORCH_CHECK(keep.numel() == n && out.numel() == n, "mask_copy: sizes differ");
  const float* d = dense.data_ptr<float>();
  const uint8_t* k = reinterpret_cast<const uint8_t*>(keep.data_ptr<bool>());
  float* o = out.data_ptr<float>();
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) o[i] = d[i] * static_cast<float>(k[i]);
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("mask_copy", &mask_copy, "masked weights from the dense ones and a bool keep-mask");
  module.def("snr_average", &snr_average, "SNR from the sums and its moving average, in one pass");
  module.def("count_around", &count_around, "entries below and equal to a threshold, in one pass");
  module.def("apply_mask", &apply_mask, "keep-mask, regrowth record and pruned weights, in one pass");
}
