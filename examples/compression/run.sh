#!/usr/bin/env bash
# Bytes on the wire and final accuracy of each codec on the demo job
# (MNIST, base trained on digits 0-4, 4 non-IID workers, 10 rounds).
# Usage: examples/compression/run.sh   (from the repository root; ~10 minutes on 2 cores)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
make -C "$root" -s build
out=$(mktemp -d)
printf '| codec | error feedback | bytes per round (4 updates) | x smaller than fp32 | final accuracy |\n|---|---|---|---|---|\n'
run() {
  local codec=$1 ef=$2 flags=()
  [ "$ef" = no ] && flags=(--no-error-feedback)
  local tag="$codec-${ef//\//}"
  local log="$out/$tag.log"
  "$root/bin/fedtune" demo --codec "$codec" "${flags[@]}" --out "$out/$tag" >"$log" 2>&1
  local acc bytes ratio
  acc=$(sed -n 's/^final accuracy \([0-9.]*%\).*/\1/p' "$log")
  bytes=$(sed -n 's/^wire size *\([0-9]*\) bytes.*/\1/p' "$log")
  ratio=$(sed -n 's/.*, \([0-9.]*x\) smaller than fp32/\1/p' "$log")
  printf '| `%s` | %s | %s | %s | %s |\n' "$codec" "$ef" "$bytes" "$ratio" "$acc"
}
run fp32 n/a
run fp16 n/a
run int8 yes
run topk=0.1+fp32 yes
run topk=0.1+int8 yes
run topk=0.1+int8 no
run topk=0.01+int8 yes
run topk=0.01+int8 no
