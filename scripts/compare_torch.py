#!/usr/bin/env python3
"""Ours beside PyTorch in one sitting: one table of speed ratios.

Usage: python3 scripts/compare_torch.py VENV [--rounds N] [--threads T] [--quick] [--bf16]

VENV is a Python virtual environment with torch and torchvision (for example
`python3 -m venv ~/tv && ~/tv/bin/pip install torch torchvision`). Each round
runs, interleaved, PyTorch's reference script and our criterion bench for
conv2d (shapes A-H and the depthwise 7x7), BatchNorm / GroupNorm / GELU, the
CIFAR ResNet-20 train step, ResNet-18 eval at batch 1, 8 and 32, and
timm's ConvNeXt-atto (train step b32 64x64, eval b8 224x224; VENV needs
timm too) beside ours; with `--bf16`, each of those but the norms again in
bf16 mixed precision: ours `_bf16` rows beside PyTorch under
`torch.autocast("cpu", dtype=torch.bfloat16)` (benches/torch/torch_autocast.py;
only meaningful on a CPU with AVX512-BF16: elsewhere PyTorch's autocast
emulates, 40-170x slower than its f32, and takes most of an hour); both
sides at T threads (default 2: OMP_NUM_THREADS and RAYON_NUM_THREADS). It
prints a Markdown table: the median time of each side over the rounds (ours:
criterion's median of each run; PyTorch's: its script's median of each run),
every run, and ours / PyTorch as a speed ratio (above 1: we are faster).
Paste the table into docs/benchmarks.md with the machine and the date.

`--quick` shortens criterion's measurement (for trying the script out).
"""
import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRITERION = ROOT / "target" / "criterion"
TORCH = ROOT / "benches" / "torch"

# (label, our criterion group/id, the PyTorch key parsed from its output)
CONV = ["A_n32_c3_32x32_k3", "B_n32_c16_32x32_k3", "C_n32_c64_32x32_k3", "D_n32_c128_16x16_k3",
        "E_n32_c256_8x8_k3", "F_n32_c64_32x32_k3s2_to128", "G_n8_c3_224x224_k7s2",
        "H_n32_c256_8x8_k1_to64", "DW_n32_c96_56x56_k7_dw"]
ROWS = []
for name in CONV:
    ROWS.append((f"conv2d fwd {name}", f"conv2d_fwd/{name}", f"conv:{name}:fwd"))
    ROWS.append((f"conv2d bwd {name}", f"conv2d_bwd/{name}", f"conv:{name}:bwd"))
for op in ["batch_norm2d", "group_norm_g32", "gelu"]:
    ROWS.append((f"{op} fwd", f"{op}_fwd/n32_c64_32x32", f"na:{op}:fwd"))
    ROWS.append((f"{op} fwd+bwd", f"{op}_fwd_bwd/n32_c64_32x32", f"na:{op}:both"))
# The GroupNorm kernels on a borrowed x (and dy), as PyTorch's script reads its
# one x and dy every call (our layer rows clone them first, and the kernel then
# reads 8 MB from memory that PyTorch's finds in cache).
ROWS.insert(-3, ("group_norm_g32 fwd, kernel on a borrowed x", "group_norm_g32_fwd/kernel/n32_c64_32x32",
                 "na:group_norm_g32:fwd"))
ROWS.insert(-2, ("group_norm_g32 fwd+bwd, kernels on a borrowed x, dy",
                 "group_norm_g32_fwd_bwd/kernel/n32_c64_32x32", "na:group_norm_g32:both"))
ROWS.append(("resnet20 train step b128", "resnet20_cifar_train_step/b128", "resnet:train"))
for b in (1, 8, 32):
    ROWS.append((f"resnet18 eval b{b}", f"resnet18_eval_forward/b{b}_224", f"resnet:eval{b}"))
ROWS.append(("convnext_atto train step b32 64", "convnext_atto_train_step/b32_64", "convnext:train"))
ROWS.append(("convnext_atto eval b8 224", "convnext_atto_eval_forward/b8_224", "convnext:eval"))
# bf16 mixed precision: ours under with_precision(Bf16), PyTorch under autocast.
for name in CONV:
    ROWS.append((f"bf16 conv2d fwd {name}", f"conv2d_fwd_bf16/{name}", f"bf16:conv:{name}:fwd"))
    ROWS.append((f"bf16 conv2d bwd {name}", f"conv2d_bwd_bf16/{name}", f"bf16:conv:{name}:bwd"))
ROWS.append(("bf16 resnet20 train step b128", "resnet20_cifar_train_step/b128_bf16", "bf16:resnet:train"))
for b in (1, 8, 32):
    ROWS.append((f"bf16 resnet18 eval b{b}", f"resnet18_eval_forward/b{b}_224_bf16", f"bf16:resnet:eval{b}"))
ROWS.append(("bf16 convnext_atto train step b32 64", "convnext_atto_train_step/b32_64_bf16",
             "bf16:convnext:train"))
ROWS.append(("bf16 convnext_atto eval b8 224", "convnext_atto_eval_forward/b8_224_bf16", "bf16:convnext:eval"))

# (cargo bench target, criterion filter, PyTorch script)
# (the criterion filters leave out our bf16 rows; --bf16 drops them)
SUITES = [("conv", "conv2d_(fwd|bwd)/", "torch_conv.py"), ("norm_act", "", "torch_norm_act.py"),
          ("resnet", "(b128|_224)$", "torch_resnet.py"), ("convnext", "(b32_64|b8_224)$", "torch_convnext.py")]
# With --bf16: PyTorch's autocast script; its rows are ours of the benches above.
BF16_SUITE = (None, "", "torch_autocast.py")


def run(cmd, env):
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return out.stdout


def ours_ms(ident, since):
    """Criterion's median (ms) of `group/id` if it ran after time `since`, else None."""
    est = CRITERION / ident / "new" / "estimates.json"
    if not est.exists() or est.stat().st_mtime < since:
        return None
    return json.loads(est.read_text())["median"]["point_estimate"] / 1e6


def parse_torch(script, text):
    """{key: ms} from a reference script's output."""
    found = {}
    if script == "torch_autocast.py":
        # The other scripts' formats with "bf16 " in front.
        lines = "\n".join(l[5:] for l in text.splitlines() if l.startswith("bf16 "))
        for inner in ("torch_conv.py", "torch_resnet.py", "torch_convnext.py"):
            found.update({f"bf16:{k}": v for k, v in parse_torch(inner, lines).items()})
        return found
    for line in text.splitlines():
        p = line.split()
        if script == "torch_conv.py" and len(p) == 5 and p[0] in CONV:
            found[f"conv:{p[0]}:fwd"] = float(p[1])
            found[f"conv:{p[0]}:bwd"] = float(p[3])
        elif script == "torch_norm_act.py" and len(p) == 5 and p[0] in ("batch_norm2d", "group_norm_g32", "gelu"):
            found[f"na:{p[0]}:fwd"] = float(p[1])
            found[f"na:{p[0]}:both"] = float(p[3])
        elif script == "torch_resnet.py":
            m = re.match(r"resnet20_cifar train step b128: ([\d.]+) ms", line)
            if m:
                found["resnet:train"] = float(m.group(1))
            m = re.match(r"resnet18 eval forward b(\d+) 224x224: ([\d.]+) ms", line)
            if m:
                found[f"resnet:eval{m.group(1)}"] = float(m.group(2))
        elif script == "torch_convnext.py":
            m = re.match(r"convnext_atto (train step|eval) b\d+ \d+x\d+:\s+([\d.]+) ms", line)
            if m:
                found["convnext:train" if m.group(1) == "train step" else "convnext:eval"] = float(m.group(2))
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("venv", type=pathlib.Path, help="virtual environment with torch and torchvision")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--bf16", action="store_true", help="also the bf16 rows beside PyTorch's autocast")
    args = ap.parse_args()
    suites = SUITES
    if args.bf16:
        suites = [(b, "conv2d_" if b == "conv" else "", s) for b, _, s in SUITES] + [BF16_SUITE]
    rows = [r for r in ROWS if args.bf16 or not r[0].startswith("bf16 ")]
    python = args.venv / "bin" / "python"
    if not python.exists():
        sys.exit(f"{python} does not exist: give the venv that has torch (see --help)")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), RAYON_NUM_THREADS=str(args.threads))
    timing = ["--warm-up-time", "0.5", "--measurement-time", "1"] if args.quick else []
    print("building the benches ...", file=sys.stderr)
    run(["cargo", "bench", "--no-run"], env)
    ours = {key: [] for _, key, _ in rows}
    torch = {key: [] for _, _, key in rows}
    for r in range(args.rounds):
        for bench, flt, script in suites:
            then = f", then cargo bench --bench {bench}" if bench else ""
            print(f"round {r + 1}/{args.rounds}: {script}{then}", file=sys.stderr)
            for k, v in parse_torch(script, run([python, TORCH / script, str(args.threads)], env)).items():
                if k in torch:
                    torch[k].append(v)
            if bench is None:
                continue
            cmd = ["cargo", "bench", "--bench", bench, "--"] + ([flt] if flt else []) + timing
            started = time.time()
            run(cmd, env)
            for _, key, _ in rows:
                t = ours_ms(key, started) if key_in_bench(key, bench) else None
                if t is not None:
                    ours[key].append(t)
    fmt = lambda xs: ", ".join(f"{x:.3g}" for x in xs)
    print(f"| {'':28} | ours ms (median) | PyTorch ms (median) | ours / PyTorch (speed) | ours runs | PyTorch runs |")
    print("| --- | ---: | ---: | ---: | --- | --- |")
    for label, ok, tk in rows:
        o, t = ours[ok], torch[tk]
        if not o or not t:
            print(f"| {label} | {'-' if not o else f'{statistics.median(o):.3g}'} | "
                  f"{'-' if not t else f'{statistics.median(t):.3g}'} | n/a | {fmt(o)} | {fmt(t)} |")
            continue
        mo, mt = statistics.median(o), statistics.median(t)
        print(f"| {label} | {mo:.3g} | {mt:.3g} | **{mt / mo:.2f}** | {fmt(o)} | {fmt(t)} |")


def key_in_bench(key, bench):
    """Whether our criterion id `key` belongs to the cargo bench `bench`."""
    group = key.split("/")[0]
    if bench == "conv":
        return group.startswith("conv2d_")
    if bench == "norm_act":
        return group.startswith(("batch_norm2d", "group_norm", "gelu"))
    if bench == "convnext":
        return group.startswith("convnext")
    return group.startswith(("resnet20", "resnet18"))


if __name__ == "__main__":
    main()
