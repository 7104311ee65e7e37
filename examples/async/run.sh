#!/usr/bin/env bash
# Sync rounds vs asynchronous buffered aggregation (FedBuff) on MNIST with 50
# workers whose speeds differ up to 10×, in simulated time: writes
# out/results.csv, the plots in plots/, and prints the README's table.
# Usage: examples/async/run.sh   (from the repository root; ~5 minutes on 2 cores)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
make -C "$root" -s build
"$root/bin/fedtune" sim --config "$here/mnist-50.yaml" --out "$here/out"
"$root/bin/fedtune" plot "$here/out/results.csv" -o "$here/plots" >/dev/null
"$here/table.sh" runs "$here/out/results.csv"
