#!/usr/bin/env bash
# Whole networks beside PyTorch at several thread counts, without cargo: for a
# lent many-core machine where only Python and PyTorch are installed.
#
# Usage: scripts/scaling.sh BENCH_BINARY [THREADS...]   (default threads: 1 16)
#   BENCH_BINARY: the criterion binary of benches/resnet.rs, built here with
#   `cargo bench --bench resnet --no-run` (target/release/deps/resnet-<hash>).
# For each thread count, interleaved over ROUNDS (default 2) rounds: our
# ResNet-20 train step (b128) and ResNet-18 eval (b1, b8, b32), then PyTorch's
# (benches/torch/torch_resnet.py), both at that many threads. Prints the raw
# lines; docs/benchmarks.md takes the medians as speed ratios.
set -uo pipefail
bin=$1; shift
threads=${*:-1 16}
rounds=${ROUNDS:-2}
root=$(cd "$(dirname "$0")/.." && pwd)
echo "machine: $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
python3 -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)' 2>&1
for r in $(seq 1 "$rounds"); do
  for t in $threads; do
    echo "== round $r threads $t ours"
    RAYON_NUM_THREADS=$t OMP_NUM_THREADS=$t "$bin" --bench --warm-up-time 1 --measurement-time 3 2>&1 \
      | grep -E '^(resnet|[[:space:]]+time: +\[[0-9])' | paste - - | sed 's/  */ /g'
    echo "== round $r threads $t torch"
    (cd "$root/benches/torch" && OMP_NUM_THREADS=$t timeout 300 python3 torch_resnet.py "$t" 2>&1 | tail -5)
  done
done
