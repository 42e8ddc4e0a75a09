#!/usr/bin/env python3
"""Prints GFLOP/s of the conv benches from criterion's saved estimates.

Usage: python3 scripts/bench_table.py [torch_conv.py output file]
Reads target/criterion/<group>/<id>/new/estimates.json (median time) and the
FLOP count criterion stored as throughput; with PyTorch's output, adds its
columns and the ratio ours / PyTorch.
"""
import json, pathlib, sys

root = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"


def gflops(group, ident):
    d = root / group / ident / "new"
    est = json.loads((d / "estimates.json").read_text())
    bench = json.loads((d / "benchmark.json").read_text())
    flops = bench["throughput"]["Elements"]
    return flops / est["median"]["point_estimate"]  # FLOP per ns = GFLOP/s


torch = {}
if len(sys.argv) > 1:
    for line in open(sys.argv[1]):
        parts = line.split()
        if len(parts) == 5 and parts[0][1] == "_":
            torch[parts[0]] = (float(parts[2]), float(parts[4]))
        elif len(parts) == 3 and parts[0] == "sgemm_2048":
            torch["sgemm"] = float(parts[2])

sg = {p.name: gflops("sgemm", p.name) for p in (root / "sgemm").iterdir() if (p / "new").exists()}
for k, v in sorted(sg.items()):
    print(f"sgemm {k}: {v:.0f} GFLOP/s" + (f" (PyTorch {torch['sgemm']:.0f})" if "sgemm" in torch else ""))
ceiling = max(sg.values()) if sg else float("nan")
print()
print("| shape | fwd GFLOP/s | PyTorch fwd | ratio | % of ceiling | bwd GFLOP/s | PyTorch bwd | ratio | % of ceiling |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for p in sorted((root / "conv2d_fwd").iterdir()):
    if not (p / "new").exists():
        continue
    f, b = gflops("conv2d_fwd", p.name), gflops("conv2d_bwd", p.name)
    tf, tb = torch.get(p.name, (float("nan"), float("nan")))
    print(f"| {p.name} | {f:.0f} | {tf:.0f} | {f / tf:.2f} | {100 * f / ceiling:.0f}% | {b:.0f} | {tb:.0f} | {b / tb:.2f} | {100 * b / ceiling:.0f}% |")
