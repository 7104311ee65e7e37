#!/usr/bin/env bash
# The experiment of mnist-50.yaml over five seeds (a seed changes the workers'
# speeds, data shares, sampling and initialisation): writes out-seeds/results.csv
# and prints the README's "Across seeds" table.
# Usage: examples/async/seeds.sh   (from the repository root; ~25 minutes on 2 cores)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
make -C "$root" -s build
"$root/bin/fedtune" sim --config "$here/mnist-50.yaml" --set seed=1,2,3,4,5 --out "$here/out-seeds"
"$here/table.sh" seeds "$here/out-seeds/results.csv"
