#!/usr/bin/env bash
# Prints the tables of examples/async/README.md from a results.csv of fedtune sim.
#   table.sh runs  CSV   one row per run (mnist-50.yaml: sync and async)
#   table.sh seeds CSV   sync and async side by side per seed (seeds.sh)
#   table.sh fairness DIR  one row per run of fairness.yaml, with the updates
#                          per worker and Jain's index from DIR/summary.json
# For each run: simulated time to 97% test accuracy, accuracy after the last
# round/version, and the mean accuracy over the evaluations of the last 100
# aggregated updates (less noisy than one evaluation).
set -euo pipefail
csv=$2 fair=
if [ "$1" = fairness ]; then
  csv=$2/results.csv
  fair=$(jq -r '.runs[] | "\(.run) \(.min_updates_per_worker) \(.max_updates_per_worker) \(.fairness)"' "$2/summary.json" | tr '\n' ';')
fi
awk -F, -v what="$1" -v target=0.97 -v tail_updates=100 -v fair="$fair" '
NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
{
  r = $1; mode[r] = $col["mode"]; seed[r] = ("seed" in col) ? $col["seed"] : 1
  part[r] = ("partition" in col) ? $col["partition"] : "iid"; win[r] = ("fair_window" in col) ? $col["fair_window"] : 1
  n[r]++; acc[r, n[r]] = $col["accuracy"]; ups[r, n[r]] = $col["participants"]
  updates[r] += $col["participants"]; last_t[r] = $col["sim_time"]; stale[r] += $col["mean_staleness"]
  if (!(r in hit) && $col["accuracy"] + 0 >= target) { hit[r] = $col["sim_time"]; hit_n[r] = $col["round"] }
}
END {
  for (r = 1; r in n; r++) {
    s = 0; u = 0; k = 0
    for (i = n[r]; i >= 1 && u < tail_updates; i--) { s += acc[r, i]; u += ups[r, i]; k++ }
    tail[r] = 100 * s / k; final[r] = 100 * acc[r, n[r]]
  }
  if (what == "fairness") {
    nf = split(fair, fr, ";")
    for (i = 1; i <= nf; i++) if (split(fr[i], f, " ") == 4) { lo[f[1]] = f[2]; hi[f[1]] = f[3]; jain[f[1]] = f[4] }
    print "| partition | fair_window | updates per worker (fewest–most) | Jain\047s index | time to 97% (simulated s) | final accuracy | mean of the last 100 updates | simulated time for 800 updates |"
    print "|---|---|---|---|---|---|---|---|"
    for (r = 1; r in n; r++)
      printf "| %s | %s | %d–%d | %.3f | %s | %.2f%% | %.2f%% | %.0f s |\n", part[r], win[r], lo[r], hi[r], jain[r], (r in hit) ? sprintf("%.0f", hit[r]) : "not reached", final[r], tail[r], last_t[r]
    exit
  }
  if (what == "runs") {
    printf "| mode | time to 97%% (simulated s) | rounds/versions to 97%% | final accuracy (%d updates) | mean of the last %d updates | simulated time for them | mean staleness |\n", updates[1], tail_updates
    print "|---|---|---|---|---|---|---|"
    for (r = 1; r in n; r++)
      printf "| %s | %s | %s | %.2f%% | %.2f%% | %.0f s | %.2f |\n", mode[r], (r in hit) ? sprintf("%.0f", hit[r]) : "not reached", (r in hit_n) ? hit_n[r] : "-", final[r], tail[r], last_t[r], stale[r] / n[r]
    if ((1 in hit) && (2 in hit)) printf "\nasync reaches 97%% in %.2f× the simulated time of sync\n", hit[2] / hit[1]
    exit
  }
  print "| seed | sync: 97% at | async: 97% at | ratio | sync final | async final | difference | sync, last 100 updates | async, last 100 updates | difference |"
  print "|---|---|---|---|---|---|---|---|---|---|"
  for (r = 1; r in n; r++) { if (mode[r] == "sync") sync[seed[r]] = r; else async[seed[r]] = r; if (seed[r] + 0 > top) top = seed[r] + 0 }
  for (sd = 1; sd <= top; sd++) {
    if (!(sd in sync) || !(sd in async)) continue
    a = async[sd]; y = sync[sd]
    ratio = ((a in hit) && (y in hit)) ? hit[a] / hit[y] : 0
    printf "| %d | %.0f s | %s | %s | %.2f%% | %.2f%% | %+.2f | %.2f%% | %.2f%% | %+.2f |\n", sd, hit[y], (a in hit) ? sprintf("%.0f s", hit[a]) : "not reached", ratio ? sprintf("%.2f×", ratio) : "-", final[y], final[a], final[a] - final[y], tail[y], tail[a], tail[a] - tail[y]
    m++; mr += ratio; my += final[y]; ma += final[a]; ty += tail[y]; ta += tail[a]; hy += hit[y]; ha += hit[a]
  }
  printf "| mean | %.0f s | %.0f s | %.2f× | %.2f%% | %.2f%% | %+.2f | %.2f%% | %.2f%% | %+.2f |\n", hy / m, ha / m, mr / m, my / m, ma / m, (ma - my) / m, ty / m, ta / m, (ta - ty) / m
}' "$csv"
