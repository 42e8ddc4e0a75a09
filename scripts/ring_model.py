#!/usr/bin/env python3
"""The ring all-reduce time model of docs/distributed.md, as tables.

    t_ring(N) = k * 2(N-1) * alpha  +  2(N-1)/N * bytes / bandwidth

for N nodes, a model's f32 gradient of `bytes` sent in k buckets of at most
2^22 values (cnn_train::distributed::BUCKET_VALUES; tensors go whole into a
bucket, which gives 1, 4 and 8 buckets for the models below), and per-message latency
alpha. Beside it, the compute of one step, measured on one node (the
`distributed_step` example): with the per-node batch fixed (weak scaling) it
stays the same; with the global batch fixed (strong scaling) it is divided by
N (ideal). Prints Markdown. Usage: python3 scripts/ring_model.py
"""

# name, parameters (trainable), buckets, measured step (s) on one node, its batch
MODELS = [
    ("ResNet-20", 272_474, 1, 0.195, "128 at 32×32"),
    ("ResNet-18", 11_689_512, 4, 1.057, "32 at 224×224"),
    ("ResNet-50", 25_557_032, 8, 4.089, "32 at 224×224"),
]
# name, bandwidth (bytes/s), latency per message (s)
LINKS = [("10 Gbit/s Ethernet (α = 30 µs)", 10e9 / 8, 30e-6), ("100 Gbit/s InfiniBand (α = 3 µs)", 100e9 / 8, 3e-6)]
NODES = [2, 4, 8, 16, 32, 64]


def ring(params, k, n, bandwidth, alpha):
    size = 4 * params
    return k * 2 * (n - 1) * alpha + 2 * (n - 1) / n * size / bandwidth


def crossover(params, k, compute, bandwidth, alpha, strong):
    """The first N (up to 4096) where the ring takes longer than the compute."""
    for n in range(2, 4097):
        c = compute / n if strong else compute
        if ring(params, k, n, bandwidth, alpha) > c:
            return str(n)
    return "> 4096"


for link, bw, alpha in LINKS:
    print(f"\n**{link}**: ring time per step, ms (share of the step with the per-node batch fixed)\n")
    print("| model | gradient | step on one node | " + " | ".join(f"N = {n}" for n in NODES) + " | comm > compute from N (per-node batch fixed / global batch fixed) |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in NODES) + " | --- |")
    for name, params, k, step, batch in MODELS:
        cells = []
        for n in NODES:
            t = ring(params, k, n, bw, alpha)
            cells.append(f"{1e3 * t:.1f} ({100 * t / (t + step):.0f}%)")
        weak = crossover(params, k, step, bw, alpha, strong=False)
        strong = crossover(params, k, step, bw, alpha, strong=True)
        print(f"| {name} | {4 * params / 1e6:.1f} MB | {1e3 * step:.0f} ms (batch {batch}) | " + " | ".join(cells) + f" | {weak} / {strong} |")
