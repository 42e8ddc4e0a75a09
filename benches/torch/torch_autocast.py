#!/usr/bin/env python3
"""PyTorch CPU reference for our bf16 rows: the same nets and shapes under
`torch.autocast("cpu", dtype=torch.bfloat16)` (oneDNN's bf16 kernels where the
CPU has AVX512-BF16 or AMX, f32 emulation elsewhere).

Usage: python torch_autocast.py [threads]   (needs torch, torchvision, timm)
Prints, in the formats of torch_conv.py, torch_resnet.py and torch_convnext.py
with "bf16" in front, and the GEMM lines:
- conv2d forward and backward on the benchmark shapes (ms, GFLOP/s)
- CIFAR ResNet-20 train step b128; ResNet-18 eval b1, b8, b32
- timm convnext_atto train step b32 64x64 and eval b8 224x224
- matrix products 1024^3 and 2048^3 in f32 and under autocast (ms, GFLOP/s)
"""
import sys
import torch, torch.nn.functional as F
import torchvision
import timm
from torch_conv import SHAPES, timed
from torch_resnet import cifar_resnet


def autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    torch.set_num_threads(threads); torch.manual_seed(0)
    print(f"torch {torch.__version__}, timm {timm.__version__}, threads={threads}, "
          f"bf16 kernels: {torch.backends.mkldnn.is_available()}")
    for name, (n, cin, h, w, cout, k, s, p, *rest) in SHAPES.items():
        groups = rest[0] if rest else 1
        x = torch.randn(n, cin, h, w, requires_grad=True)
        wt = torch.randn(cout, cin // groups, k, k, requires_grad=True)
        with autocast():
            y = F.conv2d(x, wt, None, s, p, 1, groups)
        dy = torch.randn_like(y, dtype=torch.float32)
        flops = 2 * n * cout * y.shape[2] * y.shape[3] * (cin // groups) * k * k

        def fwd():
            with torch.no_grad(), autocast():
                F.conv2d(x, wt, None, s, p, 1, groups)

        def bwd():
            with autocast():
                out = F.conv2d(x, wt, None, s, p, 1, groups)
            torch.autograd.grad(out, (x, wt), dy.to(out.dtype))
        tf, tb = timed(fwd, 10), timed(bwd, 10)
        print(f"bf16 {name:30} {tf * 1e3:8.2f} {flops / tf / 1e9:9.1f} {tb * 1e3:8.2f} {2 * flops / tb / 1e9:9.1f}")

    net = cifar_resnet(20); opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(128, 3, 32, 32); y = torch.randint(0, 10, (128,))

    def step():
        opt.zero_grad()
        with autocast():
            loss = F.cross_entropy(net(x), y)
        loss.backward(); opt.step()
    t = timed(step, 8)
    print(f"bf16 resnet20_cifar train step b128: {t * 1e3:.1f} ms, {128 / t:.0f} images/s")
    m = torchvision.models.resnet18().eval()
    for batch in (1, 8, 32):
        xi = torch.randn(batch, 3, 224, 224)
        with torch.no_grad(), autocast():
            t = timed(lambda: m(xi), 5)
        print(f"bf16 resnet18 eval forward b{batch} 224x224: {t * 1e3:.1f} ms, {batch / t:.1f} images/s")

    m = timm.create_model("convnext_atto", num_classes=10)
    opt = torch.optim.AdamW(m.parameters(), lr=4e-3, weight_decay=0.05)
    x = torch.randn(32, 3, 64, 64); y = torch.arange(32) % 10
    m.train()

    def cstep():
        opt.zero_grad(set_to_none=False)
        with autocast():
            loss = F.cross_entropy(m(x), y)
        loss.backward(); opt.step()
    t = timed(cstep, 10)
    print(f"bf16 convnext_atto train step b32 64x64: {1e3 * t:8.1f} ms  {32 / t:8.1f} img/s")
    m = timm.create_model("convnext_atto", num_classes=1000).eval()
    x = torch.randn(8, 3, 224, 224)
    with torch.no_grad(), autocast():
        t = timed(lambda: m(x), 10)
    print(f"bf16 convnext_atto eval b8 224x224:      {1e3 * t:8.1f} ms  {8 / t:8.1f} img/s")

    for size in (1024, 2048):
        a, b = torch.randn(size, size), torch.randn(size, size)
        flops = 2 * size ** 3
        t = timed(lambda: torch.mm(a, b), 10)
        print(f"gemm {size} f32: {t * 1e3:.2f} ms, {flops / t / 1e9:.1f} GFLOP/s")
        with autocast():
            t = timed(lambda: torch.mm(a, b), 10)
        print(f"gemm {size} bf16: {t * 1e3:.2f} ms, {flops / t / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
