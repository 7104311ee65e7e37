#!/usr/bin/env bash
# Prints the tables of examples/async/README.md from a results.csv of fedtune sim.
#   table.sh runs  CSV   one row per run (mnist-50.yaml: sync and async)
#   table.sh seeds CSV   sync and async side by side per seed (seeds.sh)
#   table.sh fairness DIR  one row per run of fairness*.yaml, with the updates
#                          per worker, Jain's index and the slower half's share
#                          from DIR/summary.json, and each language's accuracy
#                          when the CSV has accuracy_<lang> columns
# For each run: simulated time to 97% test accuracy, accuracy after the last
# round/version, and the mean accuracy over the evaluations of the last 100
# aggregated updates (less noisy than one evaluation).
set -euo pipefail
csv=$2 fair=
if [ "$1" = fairness ]; then
  csv=$2/results.csv
  # Per run: fewest and most updates of one worker, Jain's index, and the
  # share of the updates that came from the slower half of the fleet.
  fair=$(jq -r '.runs[] | . as $r | ([range(0; $r.speeds | length)] | sort_by($r.speeds[.])) as $o
    | ($o[($o | length) / 2 | floor:] | map($r.updates_per_worker[.]) | add) as $slow
    | "\($r.run) \($r.min_updates_per_worker) \($r.max_updates_per_worker) \($r.fairness) \($slow / ($r.updates_per_worker | add))"' "$2/summary.json" | tr '\n' ';')
fi
awk -F, -v what="$1" -v target=0.97 -v tail_updates=100 -v fair="$fair" '
NR == 1 { for (i = 1; i <= NF; i++) { col[$i] = i; name[i] = $i; if ($i ~ /^accuracy_/) groups[++ng] = i }; next }
{
  lbl = ""; for (i = 2; i < col["round"]; i++) lbl = lbl (i > 2 ? " " : "") name[i] "=" ($i == "" ? "none" : $i); label[$1] = lbl
  r = $1; mode[r] = $col["mode"]; seed[r] = ("seed" in col) ? $col["seed"] : 1
  n[r]++; acc[r, n[r]] = $col["accuracy"]; ups[r, n[r]] = $col["participants"]; t[r, n[r]] = $col["sim_time"]
  for (g = 1; g <= ng; g++) gacc[r, g, n[r]] = $groups[g]
  updates[r] += $col["participants"]; last_t[r] = $col["sim_time"]; stale[r] += $col["mean_staleness"]
  if (!(r in hit) && $col["accuracy"] + 0 >= target) { hit[r] = $col["sim_time"]; hit_n[r] = $col["round"] }
}
END {
  for (r = 1; r in n; r++) {
    s = 0; u = 0; k = 0
    for (i = n[r]; i >= 1 && u < tail_updates; i--) { s += acc[r, i]; u += ups[r, i]; k++ }
    tail[r] = 100 * s / k; final[r] = 100 * acc[r, n[r]]
    for (g = 1; g <= ng; g++) {  # per language, over the same evaluations
      s = 0; for (i = n[r]; i > n[r] - k; i--) s += gacc[r, g, i]; gtail[r, g] = 100 * s / k
    }
  }
  if (what == "fairness") {
    nf = split(fair, fr, ";")
    for (i = 1; i <= nf; i++) if (split(fr[i], f, " ") == 5) { lo[f[1]] = f[2]; hi[f[1]] = f[3]; jain[f[1]] = f[4]; slow[f[1]] = f[5] }
    for (r = 1; r in n; r++) if (r == 1 || last_t[r] + 0 < tmin) tmin = last_t[r] + 0
    # The time to 97% only where a run reached it (MNIST, not words).
    anyhit = 0; for (r in hit) anyhit = 1
    gh = ""; gs = ""; for (g = 1; g <= ng; g++) { gh = gh " " substr(name[groups[g]], 10) ", last 100 updates |"; gs = gs "---|" }
    printf "| run | updates per worker (fewest–most) | Jain\047s index | slower half\047s share |%s accuracy at %.0f s | final accuracy | mean of the last 100 updates |%s simulated time for all |\n", anyhit ? " time to 97% (simulated s) |" : "", tmin, gh
    print "|---|---|---|---|" (anyhit ? "---|" : "") "---|---|---|" gs "---|"
    for (r = 1; r in n; r++) {
      at = "-"; for (i = 1; i <= n[r] && t[r, i] + 0 <= tmin; i++) if (acc[r, i] != "") at = sprintf("%.2f%%", 100 * acc[r, i])
      gv = ""; for (g = 1; g <= ng; g++) gv = gv sprintf(" %.2f%% |", gtail[r, g])
      printf "| %s | %d–%d | %.3f | %.0f%% |%s %s | %.2f%% | %.2f%% |%s %.0f s |\n", label[r], lo[r], hi[r], jain[r], 100 * slow[r], anyhit ? " " ((r in hit) ? sprintf("%.0f", hit[r]) : "not reached") " |" : "", at, final[r], tail[r], gv, last_t[r]
    }
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
