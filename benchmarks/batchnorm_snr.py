"""Why SNR pruning collapses ResNet-20: BatchNorm in training mode hides the convolutions' gradient signal.

One batch of 128 Fashion-MNIST images through a freshly initialised ResNet-20; the per-layer median
of the mini-batch SNR of every weight, once with BatchNorm in training mode (per-sample contributions
to the batch gradient, as in training) and once with BatchNorm frozen at that batch's statistics.
Pure noise gives a median of about 0.45 (F(1, 127)).

    python benchmarks/batchnorm_snr.py
"""
import torch, torch.nn.functional as F
from snrprune import GradientStats
from snrprune.data import load_dataset
from snrprune.models import build_model
torch.manual_seed(0)
ds = load_dataset("fashion-mnist")
x, y = ds.x_train[:128].float(), ds.y_train[:128]
if x.dim() == 3: x = x.unsqueeze(1)
def medians(model, train_mode):
    model.train(train_mode)
    stats = GradientStats(model)
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    snr = stats.snr()
    out = {k: float(v.median()) for k, v in snr.items()}
    stats.remove()
    return out
model = build_model("resnet20", tuple(ds.input_shape), 10)
model.train(); model(x)  # running statistics from this batch for the eval-mode comparison
for name, train_mode in [("BatchNorm in training mode", True), ("BatchNorm frozen (eval mode)", False)]:
    m = medians(model, train_mode)
    convs = [v for k, v in m.items() if "conv" in k]
    print(f"{name}: median SNR of conv layers min {min(convs):.2f} median {sorted(convs)[len(convs)//2]:.2f} max {max(convs):.2f}; fc {m.get('fc.weight', float('nan')):.2f}")
