#!/usr/bin/env bash
# Regional LLM: a small Llama-family base pretrained on English, adapted
# with federated LoRA to French, German and Spanish by workers that each
# hold their own share of text (Debian's manual pages in that language),
# against centralised LoRA on the union of the same workers' training text.
# One coordinator and six worker processes on 127.0.0.1 (two per language,
# labelled lang=fr, lang=de, lang=es); one job per language, running at the
# same time; federated evaluation on each worker's held-out text.
# Prints a Markdown report (tables, generated text); writes the plot to
# $out/perplexity.png.
# Usage: examples/regional-llm/run.sh [OUT_DIR]   (from the repository root)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/examples/regional-llm/out}
work=$(mktemp -d)
fedtune="$root/bin/fedtune"
cache=${FEDTUNE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fedtune}
export FEDTUNE_INSECURE=1 # a local run: no TLS
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
mkdir -p "$out" "$cache"
make -C "$root" -s build testdeps
echo "work dir: $work (logs: $work/*.log)" >&2

# The recipe. Federated: ROUNDS rounds x 2 workers x STEPS local steps of
# BATCH/2 sequences per language; centralised: ROUNDS x STEPS steps of
# BATCH sequences. Both see the same sequences in the same number of
# optimizer steps (one round's two workers together take BATCH sequences
# per step, as the centralised run does).
langs=(fr de es)
rounds=${ROUNDS:-16} steps=${STEPS:-10} batch=8 seq=128 bytes=1000000 agg=${AGGREGATION:-exact}
lora=(--lora-rank 8 --lora-alpha 16 --lora-targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj)
opt=(--optimizer adamw --lr 3e-3 --seq-len "$seq")
split=(--num-partitions 2 --held-out 0.1 --partition-seed 1 --max-bytes "$bytes")

base="$cache/regional-llm-base"
if [ ! -f "$base/model.safetensors" ]; then
  echo "1. pretraining the English base (cached in $base)" >&2
  "$fedtune" model pretrain --model llama --corpus man-en --max-bytes 3000000 --vocab-size 2048 --layers 4 --hidden 128 \
    --heads 4 --kv-heads 2 --ffn 384 --seq-len "$seq" --steps 600 --batch-size 16 --seed 1 -o "$base.tmp" >&2
  rm -rf "$base" && mv "$base.tmp" "$base"
else
  echo "1. English base from the cache: $base" >&2
fi

"$fedtune" coordinator --id coord-1 --data-dir "$work/coord" --fast \
  --grpc-addr 127.0.0.1:17270 --raft-addr 127.0.0.1:17271 --gossip-addr 127.0.0.1:18946 --http-addr 127.0.0.1:17272 >"$work/coordinator.log" 2>&1 &
pids+=("$!")
for lang in "${langs[@]}"; do
  for i in 0 1; do
    "$fedtune" worker --id "$lang-$i" --join 127.0.0.1:18946 --label "lang=$lang" --fast --state-dir "$work/state-$lang-$i" \
      --dataset "man-$lang" --partition-index "$i" "${split[@]}" >"$work/worker-$lang-$i.log" 2>&1 &
    pids+=("$!")
  done
done
export FEDTUNE_COORDINATOR=127.0.0.1:17270
for _ in $(seq 150); do
  [ "$("$fedtune" workers 2>/dev/null | grep -c alive)" = 6 ] && break
  sleep 0.2
done
"$fedtune" workers >&2

echo "2. federated LoRA: one job per language, at the same time" >&2
start=$(date +%s)
for lang in "${langs[@]}"; do
  "$fedtune" job submit --name "only-$lang" --model llama --base "$base" --dataset "man-$lang" --require "lang=$lang" --clients 2 \
    --rounds "$rounds" --steps "$steps" --batch-size $((batch / 2)) --lora-aggregation "$agg" --grad-clip 1 --evaluation federated --eval-group-by lang --round-timeout 10m \
    "${opt[@]}" "${lora[@]}" >&2
done
for lang in "${langs[@]}"; do
  "$fedtune" job status --watch "only-$lang" >&2
done
fed_secs=$(($(date +%s) - start))
# Every worker evaluates the last model once the job is done.
sleep 15
for lang in "${langs[@]}"; do
  "$fedtune" model export --job "only-$lang" -o "$out/fed-$lang" >&2
  "$fedtune" model export --job "only-$lang" --merged -o "$work/merged-$lang" >&2
done

echo "3. centralised LoRA on the union of the same workers' training text" >&2
central_steps=$((rounds * steps))
start=$(date +%s)
for lang in "${langs[@]}"; do
  "$fedtune" model train "$base" --corpus "man-$lang" --split train "${split[@]}" --steps "$central_steps" --batch-size "$batch" \
    "${opt[@]}" "${lora[@]}" --clip-norm 1 -o "$out/central-$lang" >&2
done
central_secs=$(($(date +%s) - start))

ppl() { # LANG [ADAPTER]: perplexity on the workers' held-out text of LANG
  local a=()
  [ -n "${2:-}" ] && a=(--adapter "$2")
  "$fedtune" model eval "$base" "${a[@]}" --corpus "man-$1" --split held-out "${split[@]}" --seq-len "$seq" | sed -n 's/^perplexity //p'
}
echo "## Held-out perplexity (the workers' held-out manual pages; lower is better)"
echo
echo "| model | fr | de | es |"
echo "|---|---|---|---|"
declare -A P
for lang in "${langs[@]}"; do
  P[base-$lang]=$(ppl "$lang")
  P[fed-$lang]=$(ppl "$lang" "$out/fed-$lang")
  P[central-$lang]=$(ppl "$lang" "$out/central-$lang")
done
(cd "$root" && go run ./examples/regional-llm/plot -coordinator 127.0.0.1:17270 -o "$out/perplexity.png" \
  -ref "${P[central-fr]}" -ref "${P[central-de]}" -ref "${P[central-es]}" "${langs[@]/#/only-}") >&2
for m in base fed central; do
  case $m in
  base) label="English base" ;;
  fed) label="federated LoRA ($rounds rounds x 2 workers x $steps steps x $((batch / 2)) sequences, $agg aggregation)" ;;
  central) label="centralised LoRA ($central_steps steps x $batch sequences, same data)" ;;
  esac
  printf '| %s | %s | %s | %s |\n' "$label" "${P[$m-fr]}" "${P[$m-de]}" "${P[$m-es]}"
done
echo
for lang in "${langs[@]}"; do
  awk -v l="$lang" -v b="${P[base-$lang]}" -v f="${P[fed-$lang]}" -v c="${P[central-$lang]}" \
    'BEGIN{printf "- %s: federated %.1f%% below the base; %.1f%% from centralised\n", l, 100*(b-f)/b, 100*(f-c)/c}'
done
echo
ab=$(stat -c %s "$out/fed-fr/adapter_model.safetensors")
mb=$(stat -c %s "$work/merged-fr/model.safetensors")
echo "Adapter file $ab bytes = $(awk "BEGIN{printf \"%.1f\", 100*$ab/$mb}")% of the model's $mb bytes (safetensors, F32)."
echo "Federated jobs took ${fed_secs}s (three at once, six workers on this machine); centralised training ${central_secs}s."
echo
echo "## Federated evaluation committed by the cluster (job status)"
echo
echo '```'
for lang in "${langs[@]}"; do
  echo "only-$lang: $("$fedtune" job status "only-$lang" | tail -n 1)"
done
echo '```'
echo
echo "## Generated text (greedy), before and after"
echo
declare -A prompts=([fr]="La commande" [de]="Der Befehl" [es]="La orden")
for lang in "${langs[@]}"; do
  echo "**$lang**, base: \`$("$fedtune" model generate "$base" --prompt "${prompts[$lang]}" --max-tokens 30 --temperature 0 | tr '\n' ' ')\`"
  echo
  echo "**$lang**, federated adapter: \`$("$fedtune" model generate "$base" --adapter "$out/fed-$lang" --prompt "${prompts[$lang]}" --max-tokens 30 --temperature 0 | tr '\n' ' ')\`"
  echo
done
