#!/usr/bin/env bash
# The README's quick start, scripted: 1 coordinator + 3 workers as processes
# on 127.0.0.1, a job fine-tuning a digits-0-4 base model, a kill -9 of the
# coordinator in the middle of the job, a restart, and the final export.
# Usage: examples/digits-cluster/run.sh [ROUNDS]   (from the repository root)
set -euo pipefail
rounds=${1:-6}
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
fedtune="$root/bin/fedtune"
# A local demo: no TLS (every node warns). README "Running securely" sets up certificates.
export FEDTUNE_INSECURE=1
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

make -C "$root" -s build
echo "work dir: $work (logs: $work/*.log)"

coordinator() {
  "$fedtune" coordinator --id coord-1 --data-dir "$work/coord" --fast \
    --grpc-addr 127.0.0.1:17070 --raft-addr 127.0.0.1:17071 --gossip-addr 127.0.0.1:17946 --http-addr 127.0.0.1:17072 >>"$work/coordinator.log" 2>&1 &
  coord_pid=$!
  pids+=("$coord_pid")
}
coordinator
for i in 0 1 2; do
  region=$([ "$i" = 2 ] && echo us || echo eu)
  "$fedtune" worker --id "worker-$i" --join 127.0.0.1:17946 --label "region=$region" --fast \
    --num-partitions 3 --partition-index "$i" --alpha 0.5 >"$work/worker-$i.log" 2>&1 &
  pids+=("$!")
done

export FEDTUNE_COORDINATOR=127.0.0.1:17070
"$fedtune" model pretrain --digits 0,1,2,3,4 -o "$work/base.safetensors"
for _ in $(seq 50); do
  [ "$("$fedtune" workers 2>/dev/null | grep -c alive)" = 3 ] && break
  sleep 0.2
done
"$fedtune" workers
"$fedtune" job submit --name digits --base "$work/base.safetensors" --rounds "$rounds" --clients 3

# Wait for two committed rounds, then kill -9 the coordinator mid-job.
until "$fedtune" job status digits | grep -qE '^ +2 '; do sleep 0.5; done
echo "--- kill -9 coordinator (pid $coord_pid) ---"
kill -9 "$coord_pid"
sleep 1
echo "--- restart on the same data dir ---"
coordinator
until "$fedtune" job status digits >/dev/null 2>&1; do sleep 0.2; done
"$fedtune" job status --watch digits
"$fedtune" model export --job digits -o "$work/final.safetensors"
"$fedtune" model inspect "$work/final.safetensors"
