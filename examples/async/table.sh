#!/usr/bin/env bash
# Prints the tables of examples/async/README.md from a results.csv of fedtune sim.
#   table.sh runs  CSV   one row per run (mnist-50.yaml: sync and async)
#   table.sh seeds CSV   sync and async side by side per seed (seeds.sh)
# For each run: simulated time to 97% test accuracy, accuracy after the last
# round/version, and the mean accuracy over the evaluations of the last 100
# aggregated updates (less noisy than one evaluation).
set -euo pipefail
awk -F, -v what="$1" -v target=0.97 -v tail_updates=100 '
NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
{
  r = $1; mode[r] = $col["mode"]; seed[r] = ("seed" in col) ? $col["seed"] : 1
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
}' "$2"
