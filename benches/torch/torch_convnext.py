#!/usr/bin/env python3
"""PyTorch CPU reference for benches/convnext.rs (needs torch and timm).

Usage: python torch_convnext.py [threads]
- timm convnext_atto train step (batch 32, 3x64x64, cross-entropy, AdamW): images/s
- timm convnext_atto eval forward (batch 8, 3x224x224, no_grad): images/s
"""
import sys
import torch, torch.nn.functional as F
import timm
from torch_conv import timed


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, timm {timm.__version__}, threads={threads}")
    m = timm.create_model("convnext_atto", num_classes=10)
    opt = torch.optim.AdamW(m.parameters(), lr=4e-3, weight_decay=0.05)
    x = torch.randn(32, 3, 64, 64)
    y = torch.arange(32) % 10
    m.train()

    def step():
        opt.zero_grad(set_to_none=False)
        F.cross_entropy(m(x), y).backward()
        opt.step()

    t = timed(step, 10)
    print(f"convnext_atto train step b32 64x64: {1e3 * t:8.1f} ms  {32 / t:8.1f} img/s")
    m = timm.create_model("convnext_atto", num_classes=1000).eval()
    x = torch.randn(8, 3, 224, 224)
    with torch.no_grad():
        t = timed(lambda: m(x), 10)
    print(f"convnext_atto eval b8 224x224:      {1e3 * t:8.1f} ms  {8 / t:8.1f} img/s")


if __name__ == "__main__":
    main()
