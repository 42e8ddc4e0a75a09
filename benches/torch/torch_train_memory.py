#!/usr/bin/env python3
"""PyTorch twin of examples/train_step_memory.rs: the CIFAR ResNet-20 train
step at batch 128, minor page faults per steady-state step, time per step,
and the peak resident set (max RSS).

Usage: python torch_train_memory.py [steps] [threads]   (needs torch, torchvision)
"""
import resource
import sys
import time

import torch
import torch.nn.functional as F

from torch_resnet import cifar_resnet


def main():
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = cifar_resnet(20)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(128, 3, 32, 32)
    y = torch.arange(128) % 10

    def step():
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()

    for _ in range(2):
        step()
    f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    for _ in range(steps):
        step()
    secs = (time.perf_counter() - t0) / steps
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / steps
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"torch {torch.__version__} resnet20 b128 train step ({threads} threads): {secs * 1e3:.1f} ms/step, "
        f"{faults:.0f} minor faults/step ({faults * 4096 / 2**20:.1f} MiB of fresh pages), max RSS {rss:.0f} MiB"
    )


if __name__ == "__main__":
    main()
