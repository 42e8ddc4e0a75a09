"""PyTorch reference for `cnn train --data mnist:DIR --epochs 3`: the same default network
(small_cnn at 28x28: two conv3x3-BN-ReLU blocks per stage at 32, 64, 128 channels, 2x2 max
pools between stages, global average pooling, linear), SGD lr 0.1 Nesterov momentum 0.9 wd 5e-4,
one-cycle per step, batch 64, random crop with 3-pixel padding (one offset per batch, as
torch_digits.py does), inputs normalized by the training mean and std.
Usage: torch_mnist.py DIR [epochs] [threads]"""
import gzip, math, os, sys, time
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F

d = sys.argv[1]
epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 2)
torch.manual_seed(0); rng = np.random.default_rng(0)

def idx(name):
    p = os.path.join(d, name)
    raw = (gzip.open(p + '.gz') if not os.path.exists(p) else open(p, 'rb')).read()
    dims = raw[3]; shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(dims)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)

Xtr = torch.tensor(idx('train-images-idx3-ubyte') / 255.0, dtype=torch.float32)[:, None]
Ytr = torch.tensor(idx('train-labels-idx1-ubyte'), dtype=torch.long)
Xte = torch.tensor(idx('t10k-images-idx3-ubyte') / 255.0, dtype=torch.float32)[:, None]
Yte = torch.tensor(idx('t10k-labels-idx1-ubyte'), dtype=torch.long)
mean, std = Xtr.mean(), Xtr.std(); Xtr = (Xtr - mean) / std; Xte = (Xte - mean) / std

def block(i, o): return [nn.Conv2d(i, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]
net = nn.Sequential(*block(1, 32), *block(32, 32), nn.MaxPool2d(2), *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
                    *block(64, 128), *block(128, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))
opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
steps = epochs * math.ceil(len(Xtr) / 64); sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=steps)
t0 = time.time()
for ep in range(epochs):
    net.train(); perm = torch.tensor(rng.permutation(len(Xtr)))
    for b in range(0, len(perm), 64):
        i = perm[b:b + 64]; x = F.pad(Xtr[i], (3, 3, 3, 3))
        dx, dy = rng.integers(0, 7, 2); x = x[:, :, dy:dy + 28, dx:dx + 28]
        loss = F.cross_entropy(net(x), Ytr[i]); opt.zero_grad(); loss.backward(); opt.step(); sched.step()
train_s = time.time() - t0
net.eval()
with torch.no_grad(): acc = (net(Xte).argmax(1) == Yte).float().mean().item()
print(f"mnist: epochs={epochs} n_train={len(Xtr)} test_acc={acc:.4f} train_seconds={train_s:.1f} threads={torch.get_num_threads()}")
