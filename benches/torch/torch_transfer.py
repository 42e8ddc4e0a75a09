#!/usr/bin/env python3
"""PyTorch CPU reference for benches/transfer.rs.

Usage: python torch_transfer.py [threads]   (needs torch and torchvision)
ResNet-18, batch 16, 3x112x112, one step (forward, cross-entropy, backward; no
optimizer update), milliseconds:
- linear_probe: backbone requires_grad=False, head trains, model.train() (as
  a PyTorch user writes it: autograd stops at the head by itself, but the
  frozen BatchNorm statistics move)
- linear_probe_eval_backbone: the same with the backbone in eval() mode
- finetune: everything trains
"""
import sys
import torch, torch.nn as nn, torch.nn.functional as F
import torchvision
from torch_conv import timed


def step(model, x, y):
    model.zero_grad(set_to_none=False)
    loss = F.cross_entropy(model(x), y)
    loss.backward()


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, threads={threads}")
    x = torch.randn(16, 3, 112, 112)
    y = torch.arange(16) % 10
    m = torchvision.models.resnet18(num_classes=10)
    for p in m.parameters():
        p.requires_grad_(False)
    for p in m.fc.parameters():
        p.requires_grad_(True)
    m.train()
    print(f"linear_probe               {1e3 * timed(lambda: step(m, x, y), 10):8.1f} ms")
    m.eval(); m.fc.train()
    print(f"linear_probe_eval_backbone {1e3 * timed(lambda: step(m, x, y), 10):8.1f} ms")
    for p in m.parameters():
        p.requires_grad_(True)
    m.train()
    print(f"finetune                   {1e3 * timed(lambda: step(m, x, y), 10):8.1f} ms")


if __name__ == "__main__":
    main()
