#!/usr/bin/env python3
"""PyTorch CPU reference for BatchNorm2d, GroupNorm(32, 64) and GELU on 32x64x32x32 f32.

Usage: python torch_norm_act.py [threads]   (needs torch)
Forward in train mode (no_grad), and forward + backward (gradients for the
input and parameters given dy, through autograd). Prints median ms and GB/s,
counting 2 tensors moved forward (x in, y out) and 5 for forward + backward
(x in, y out, then x, dy in, dx out), as benches/norm_act.rs does.
"""
import sys
import torch
from torch_conv import timed  # same timing rule as the conv reference

REPS = 20

def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, threads={threads}")
    shape = (32, 64, 32, 32)
    x = torch.randn(*shape, requires_grad=True)
    dy = torch.randn(*shape)
    mb = x.numel() * 4 / 1e9
    mods = {"batch_norm2d": torch.nn.BatchNorm2d(64).train(),
            "group_norm_g32": torch.nn.GroupNorm(32, 64),
            "gelu": torch.nn.GELU()}
    print(f"{'op':16} {'fwd ms':>8} {'fwd GB/s':>9} {'fwd+bwd ms':>11} {'fwd+bwd GB/s':>13}")
    for name, m in mods.items():
        with torch.no_grad():
            tf = timed(lambda: m(x), REPS)
        inputs = [x] + [p for p in m.parameters()]
        def bwd():
            y = m(x)
            return torch.autograd.grad(y, inputs, dy)
        tfb = timed(bwd, REPS)
        print(f"{name:16} {tf*1e3:8.2f} {2*mb/tf:9.1f} {tfb*1e3:11.2f} {5*mb/tfb:13.1f}")

if __name__ == "__main__":
    main()
