#!/usr/bin/env bash
# The languages example through a real cluster: one coordinator and nine
# worker processes on 127.0.0.1 (three per language, labelled lang=fr,
# lang=de, lang=es, each holding a third of its language's words), LoRA jobs
# submitted with the CLI, adapters exported merged and scored with
# `fedtune model eval`. Prints the table of bits per character (BPC) on each
# language's held-out words.
# Usage: examples/languages/cluster.sh [ROUNDS]   (from the repository root; needs make words)
set -euo pipefail
rounds=${1:-10}
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
fedtune="$root/bin/fedtune"
export FEDTUNE_INSECURE=1 # a local run: no TLS (README "Running securely" sets up certificates)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

make -C "$root" -s build words
echo "work dir: $work (logs: $work/*.log)" >&2

"$fedtune" coordinator --id coord-1 --data-dir "$work/coord" --fast \
  --grpc-addr 127.0.0.1:17170 --raft-addr 127.0.0.1:17171 --gossip-addr 127.0.0.1:17946 --http-addr 127.0.0.1:17172 >"$work/coordinator.log" 2>&1 &
pids+=("$!")
langs=(fr de es)
for lang in "${langs[@]}"; do
  for i in 0 1 2; do
    "$fedtune" worker --id "$lang-$i" --join 127.0.0.1:17946 --label "lang=$lang" --fast --state-dir "$work/state-$lang-$i" \
      --dataset "words-$lang" --partition iid --num-partitions 3 --partition-index "$i" --partition-seed 7 >"$work/worker-$lang-$i.log" 2>&1 &
    pids+=("$!")
  done
done
export FEDTUNE_COORDINATOR=127.0.0.1:17170

echo "1. base: words-mlp trained centrally on English words only" >&2
"$fedtune" model pretrain --model words-mlp --dataset words-en --epochs 4 --lr 0.5 -o "$work/base.safetensors" >&2
for _ in $(seq 100); do
  [ "$("$fedtune" workers 2>/dev/null | grep -c alive)" = 9 ] && break
  sleep 0.2
done
"$fedtune" workers >&2

# LoRA rank 2, alpha 4 on both layers; one local epoch per round.
lora=(--model words-mlp --base "$work/base.safetensors" --rounds "$rounds" --lora-rank 2 --lora-alpha 4
  --epochs 1 --batch-size 32 --lr 0.1 --momentum 0.9 --round-timeout 5m)
echo "2. one shared adapter for all nine workers, naive then exact aggregation" >&2
"$fedtune" job submit --name shared-naive --dataset words-fr+de+es --clients 9 --lora-aggregation naive "${lora[@]}" --watch >&2
"$fedtune" job submit --name shared-exact --dataset words-fr+de+es --clients 9 --lora-aggregation exact "${lora[@]}" --watch >&2
echo "3. one adapter per language: three jobs at once, each on its lang= workers" >&2
for lang in "${langs[@]}"; do
  "$fedtune" job submit --name "only-$lang" --dataset "words-$lang" --clients 3 --require "lang=$lang" "${lora[@]}" >&2
done
for lang in "${langs[@]}"; do
  "$fedtune" job status --watch "only-$lang" >&2
done

bpc() { # FILE LANG: bits per character of a full model on LANG's held-out words
  "$fedtune" model eval --model words-mlp --dataset "words-$2" "$1" | sed -E 's/.* = ([0-9.]+) bits per example/\1/'
}
for job in shared-naive shared-exact "${langs[@]/#/only-}"; do
  "$fedtune" model export --job "$job" --merged -o "$work/$job.safetensors" >&2
done
"$fedtune" model export --job only-fr -o "$work/adapter-fr.safetensors" >&2
echo "| model (through the cluster, $rounds rounds) | fr | de | es |"
echo "|---|---|---|---|"
row() { # NAME FILE-FOR-fr FILE-FOR-de FILE-FOR-es
  printf '| %s | %s | %s | %s |\n' "$1" "$(bpc "$2" fr)" "$(bpc "$3" de)" "$(bpc "$4" es)"
}
row "base (English only)" "$work/base.safetensors" "$work/base.safetensors" "$work/base.safetensors"
row "shared adapter, naive average of A and B" "$work/shared-naive.safetensors" "$work/shared-naive.safetensors" "$work/shared-naive.safetensors"
row "shared adapter, exact (SVD of averaged B·A)" "$work/shared-exact.safetensors" "$work/shared-exact.safetensors" "$work/shared-exact.safetensors"
row "per-language adapter (job with --require lang=…)" "$work/only-fr.safetensors" "$work/only-de.safetensors" "$work/only-es.safetensors"
echo
ab=$(stat -c %s "$work/adapter-fr.safetensors")
mb=$(stat -c %s "$work/base.safetensors")
echo "adapter file $ab bytes = $(awk "BEGIN{printf \"%.1f\", 100*$ab/$mb}")% of the model's $mb bytes (safetensors, F32, with headers)"
