#!/usr/bin/env python3
"""How much Winograd's transforms magnify bf16 rounding: a numerical model.

Usage: VENV/bin/python scripts/winograd_bf16_error.py   (needs torch)

For 3x3 convolutions of ReLU'd N(0,1) inputs and Kaiming weights, compares
against the exact f64 result: im2col in bf16 (inputs rounded, exact sums)
and Winograd F(2x2,3x3) and F(4x4,3x3) with the transformed weights U and
inputs V rounded to bf16 (Lavin & Gray's matrices, exact sums). Prints the
RMS errors, their ratio, and the largest error over S = sum of |w*x| per
output (the stated bound of bf16 products is (2^-7 + 2^-16) * S). A model of
the arithmetic, not of our kernels: docs/benchmarks.md, issue 25, has its
output and what it decided.
"""
import torch
torch.manual_seed(0)
D = torch.float64
def r(t):  # round to bf16 (nearest even) and back
    return t.to(torch.float32).to(torch.bfloat16).to(D)
F2 = dict(BT=[[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]], G=[[1,0,0],[.5,.5,.5],[.5,-.5,.5],[0,0,1]], AT=[[1,1,1,0],[0,1,-1,-1]], m=2)
F4 = dict(BT=[[4,0,-5,0,1,0],[0,-4,-4,1,1,0],[0,4,-4,-1,1,0],[0,-2,-1,2,1,0],[0,2,-1,-2,1,0],[0,4,0,-5,0,1]],
          G=[[1/4,0,0],[-1/6,-1/6,-1/6],[-1/6,1/6,-1/6],[1/24,1/12,1/6],[1/24,-1/12,1/6],[0,0,1]],
          AT=[[1,1,1,1,1,0],[0,1,-1,2,-2,0],[0,1,1,4,4,0],[0,1,-1,8,-8,1]], m=4)
def run(cin, cout, tiles, relu=True):
    out = {}
    w = torch.randn(cout, cin, 3, 3, dtype=D) * (2.0 / (9 * cin)) ** 0.5
    for name, T in (("F2", F2), ("F4", F4)):
        BT, G, AT = (torch.tensor(T[k], dtype=D) for k in ("BT", "G", "AT")); m = T["m"]

        a = m + 2
        d = torch.randn(tiles, cin, a, a, dtype=D)
        if relu: d = d.clamp(min=0)
        # exact: valid 3x3 conv of each a×a patch → m×m outputs
        y = torch.nn.functional.conv2d(d, w)                      # [tiles, cout, m, m]
        s = torch.nn.functional.conv2d(d.abs(), w.abs())           # sum of |products|
        y_im2col = torch.nn.functional.conv2d(r(d), r(w))          # bf16 inputs, exact sums
        U = torch.einsum("ij,ocjk,lk->ocil", G, w, G)              # [cout, cin, a, a]
        V = torch.einsum("ij,tcjk,lk->tcil", BT, d, BT)            # [tiles, cin, a, a]
        M = torch.einsum("ocij,tcij->toij", r(U), r(V))
        y_w = torch.einsum("ij,tojk,lk->toil", AT, M, AT)
        M32 = torch.einsum("ocij,tcij->toij", U, V)
        y_w32 = torch.einsum("ij,tojk,lk->toil", AT, M32, AT)
        rms = lambda e: e.pow(2).mean().sqrt().item()
        out[name] = dict(im2col=rms(y_im2col - y), wino=rms(y_w - y), wino_f64=rms(y_w32 - y),
                         max_rel_S_im2col=((y_im2col - y).abs() / s).max().item(),
                         max_rel_S_wino=((y_w - y).abs() / s).max().item(), yrms=rms(y))
    return out
for cin in (16, 64, 256):
    o = run(cin, 64, 512)
    for k, v in o.items():
        print(f"cin={cin:3} {k}: rms err im2col-bf16 {v['im2col']:.3e}, winograd-bf16 {v['wino']:.3e} "
              f"(x{v['wino']/v['im2col']:.2f}); max err/S im2col {v['max_rel_S_im2col']:.2e}, winograd {v['max_rel_S_wino']:.2e}; y rms {v['yrms']:.3f}")
