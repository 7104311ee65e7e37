#!/usr/bin/env bash
# The experiment of mnist-50.yaml over several seeds (a seed changes the
# workers' speeds, data shares, sampling and initialisation): writes
# OUT/results.csv and prints the README's "Across seeds" table.
# Usage: examples/async/seeds.sh [SEEDS [OUT]]   (from the repository root)
#   default: seeds 1,2,3,4,5 into out-seeds (~22 minutes on 2 cores);
#   examples/async/seeds.sh 8,9,10,11,12 out-fresh   the seeds chosen in advance
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
seeds=${1:-1,2,3,4,5}
out=$here/${2:-out-seeds}
make -C "$root" -s build
"$root/bin/fedtune" sim --config "$here/mnist-50.yaml" --set seed="$seeds" --out "$out"
"$here/table.sh" seeds "$out/results.csv"
