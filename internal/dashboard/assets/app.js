// fedtune dashboard: renders /api/state (pushed over /api/events) with no
// libraries. Field names are the protobuf ones (protojson, proto names):
// 64-bit integers arrive as strings.
"use strict";

const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const num = (v) => Number(v ?? 0);
const pct = (v) => (v === undefined ? "–" : (100 * v).toFixed(2) + "%");
const ago = (ms) => {
  const s = Math.max(0, Math.round(ms / 1000));
  return s < 60 ? s + "s" : s < 3600 ? Math.floor(s / 60) + "m" : Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0");
};
const statusName = (s) => String(s || "").replace("JOB_STATUS_", "").toLowerCase();

function render(st) {
  const c = st.cluster || {};
  const now = num(st.now_unix_ms);
  $("#node").innerHTML = `node <b>${esc(c.node)}</b> · ${esc(c.state)} · leader <b>${esc(c.leader_id || "none")}</b>`;
  $("#raft").innerHTML = `term <b>${esc(c.term ?? 0)}</b> · last index <b>${esc(c.last_index ?? 0)}</b> · commit index <b>${esc(c.commit_index ?? 0)}</b> · applied index <b>${esc(c.applied_index ?? 0)}</b> · snapshot at ${esc(c.last_snapshot_index ?? 0)}`;
  $("#servers tbody").innerHTML = (c.servers || []).map((s) => `<tr>
    <td>${esc(s.id)}</td><td>${esc(s.address)}</td><td>${esc(s.grpc_addr || "")}</td><td>${esc(s.suffrage)}</td>
    <td>${s.id === c.leader_id ? '<span class="pill lead">leader</span>' : "follower"}</td>
    <td>${s.alive ? '<span class="pill ok">alive</span>' : '<span class="pill bad">unreachable</span>'}</td></tr>`).join("");

  const ws = st.workers || [];
  $("#worker-count").textContent = `${ws.filter((w) => w.alive).length} alive of ${ws.length}`;
  $("#workers tbody").innerHTML = ws.map((w) => {
    const l = w.labels || {};
    const dev = l.device === "gpu" ? `gpu ${esc(l.gpu || "")}${l.gpu_free_mb ? ` (${esc(l.gpu_free_mb)} MB free)` : ""}` : esc(l.device || "–");
    const state = w.alive ? (l.idle === "false" ? '<span class="pill warn">busy</span>' : '<span class="pill ok">alive</span>') : '<span class="pill bad">gone</span>';
    const labels = Object.keys(l).sort().filter((k) => !["device", "gpu", "gpu_free_mb"].includes(k)).map((k) => `<span class="label">${esc(k)}=${esc(l[k])}</span>`).join("");
    return `<tr><td>${esc(w.id)}</td><td>${state}</td><td>${dev}</td><td>${labels}</td><td>${esc(w.gossip_addr || "")}</td><td>${w.last_seen_unix_ms ? ago(now - num(w.last_seen_unix_ms)) + " ago" : ""}</td></tr>`;
  }).join("");

  const jobs = st.jobs || [];
  if (jobs.length) $("#jobs").innerHTML = jobs.map((j) => job(j, (st.ledgers || {})[j.spec.name] || [], now, (st.concurrency || {})[j.spec.name], (st.conditions || {})[j.spec.name] || [])).join("");
}

// limit: an async job's current limit on workers training at once (the
// server's coordinator.ConcurrencyAt). conds: why the job is not
// progressing (the server's conditions), shown as warnings.
function job(j, ledger, now, limit, conds) {
  const s = j.spec || {};
  const h = j.history || [];
  const status = statusName(j.status);
  const cls = status === "done" ? "ok" : status === "failed" || status === "cancelled" ? "bad" : "lead";
  const cmd = { running: `fedtune job pause ${s.name} · fedtune job cancel ${s.name}`, paused: `fedtune job resume ${s.name}` }[status];
  const warn = conds.map((c) => `<p class="condition"><span class="pill bad">!</span> ${esc(c)}</p>`).join("");
  const win = s.async && num(s.async.fair_window) > 1 ? `, ≤ ${esc(s.async.max_per_worker)} per worker in ${esc(s.async.fair_window)} versions` : "";
  const sched = s.async && num(s.async.concurrency_final) ? `, ${esc(s.async.concurrency)} → ${esc(s.async.concurrency_final)} training at once` : "";
  const drift = s.async && num(s.async.drift_correction) ? `, drift correction ${esc(s.async.drift_correction)}` : "";
  const mode = s.async ? ` · async, versions of ${esc(s.async.buffer_size)}${sched}, ${esc(s.async.staleness)} staleness${win}${drift}` : "";
  const lora = s.lora ? ` · LoRA rank ${esc(s.lora.rank)} α ${esc(s.lora.alpha)} (${esc(s.lora.aggregation)})` : "";
  const dp = s.dp ? ` · DP-FedAvg σ ${esc(s.dp.noise_multiplier)}, clip ${esc(s.dp.clip_norm)}` : "";
  const sa = s.secagg ? " · secure aggregation" : "";
  const sel = Object.entries(s.selector || {}).map(([k, v]) => `<span class="label">${esc(k)}=${esc(v)}</span>`).join("");
  const last = h.length ? h[h.length - 1].metrics || {} : {};
  let open = "";
  const a = s.async, st = j.async;
  if (a && st && status === "running") {
    const buf = (st.buffer || []).length, k = num(a.buffer_size) || 1;
    const training = (st.assignments || []).map((x) => `<span class="label">${esc(x.worker)} ← v${esc(x.version ?? 0)}</span>`).join("");
    open = `<p>async: version <b>${h.length}</b>, buffer <b>${buf}</b> of ${k} updates
      <div class="bar"><div style="width:${(100 * Math.min(1, buf / k)).toFixed(1)}%"></div></div>
      training now (${(st.assignments || []).length} of ${esc(limit ?? a.concurrency)}): ${training || '<span class="muted">none</span>'}</p>`;
  }
  const r = j.open_round;
  if (r) {
    const start = num(r.started_unix_nano) / 1e6, end = num(r.deadline_unix_nano) / 1e6;
    const frac = Math.min(1, Math.max(0, (now - start) / Math.max(1, end - start)));
    const got = (r.updates || []).length, want = num(s.clients_per_round) || 1;
    open = `<p>round <b>${esc(r.number)}</b>${num(r.attempt) ? ` (attempt ${num(r.attempt) + 1})` : ""}: <b>${got}</b> of ${want} updates from ${(r.selected || []).length} selected
      <div class="bar"><div style="width:${(100 * Math.min(1, got / want)).toFixed(1)}%"></div></div>
      ${r.secagg ? `secure aggregation phase <b>${["", "keys", "shares", "masked updates", "unmasking"][num(r.secagg.phase)] || esc(r.secagg.phase)}</b> · ` : ""}deadline in ${ago(end - now)}<div class="bar deadline"><div style="width:${(100 * frac).toFixed(1)}%"></div></div></p>`;
  }
  const rows = h.slice(-8).reverse().map((x) => `<tr><td class="num">${esc(x.number)}</td><td class="num">${esc(x.updates ?? 0)}</td><td class="num">${esc(x.samples ?? 0)}</td>
    <td class="num">${pct((x.metrics || {}).test_accuracy)}</td><td class="num">${((x.metrics || {}).test_loss ?? NaN).toFixed(4)}</td>
    <td class="num">${((num(x.committed_unix_nano) - num(x.started_unix_nano)) / 1e9).toFixed(1)}s</td></tr>`).join("");
  const led = ledger.map((w) => `<tr><td>${esc(w.worker)}</td><td class="num">${w.rounds}</td><td class="num">${w.kept}</td><td class="num">${w.samples}</td>
    <td class="num">${w.weight.toFixed(3)}</td><td class="num">${w.mean_cosine.toFixed(3)}</td></tr>`).join("");
  return `<div class="job" data-job="${esc(s.name)}">
    <div>
      <h3>${esc(s.name)} <span class="pill ${cls}">${esc(status)}</span></h3>
      <div class="meta">${esc(s.model)} on ${esc(s.dataset)} · ${esc(s.aggregator)} · ${esc(s.codec)}${mode}${lora}${dp}${sa} · ${h.length}/${esc(s.rounds)} ${s.async ? "versions" : "rounds of " + esc(s.clients_per_round)} ${sel}</div>
      <div class="bar"><div style="width:${(100 * h.length / Math.max(1, num(s.rounds))).toFixed(1)}%"></div></div>
      <p>test accuracy <b>${pct(last.test_accuracy)}</b> (base ${pct((j.base_metrics || {}).test_accuracy)})${j.error ? ` · <span class="pill bad">${esc(j.error)}</span>` : ""}${j.note ? ` · ${esc(status)}: ${esc(j.note)}` : ""}</p>
      ${s.dp ? `<p class="privacy">privacy spent: ε <b>${last.dp_epsilon === undefined ? "0" : num(last.dp_epsilon).toFixed(3)}</b> at δ ${esc(s.dp.delta)}${num(s.dp.epsilon) ? ` of a budget of ${esc(s.dp.epsilon)}` : ""}</p>` : ""}
      ${warn}${open}
      ${cmd ? `<p class="muted">operate: <code>${esc(cmd)}</code></p>` : ""}
      <table><thead><tr><th class="num">round</th><th class="num">updates</th><th class="num">samples</th><th class="num">test acc</th><th class="num">test loss</th><th class="num">time</th></tr></thead><tbody>${rows}</tbody></table>
    </div>
    <div>
      ${chart(j)}
      <div class="legend"><span class="acc">━ test accuracy</span><span class="loss">╍ test loss</span></div>
      <h3 style="margin-top:10px">Contribution ledger</h3>
      <table class="ledger"><thead><tr><th>worker</th><th class="num">rounds</th><th class="num">kept</th><th class="num">samples</th><th class="num">weight</th><th class="num">cosine</th></tr></thead><tbody>${led || '<tr><td colspan="6" class="muted">no committed rounds yet</td></tr>'}</tbody></table>
    </div></div>`;
}

// chart draws test accuracy (left axis, 0–100%) and test loss (right axis,
// 0–max) by committed round, round 0 being the base model.
function chart(j) {
  const pts = [{ n: 0, m: j.base_metrics || {} }].concat((j.history || []).map((x) => ({ n: num(x.number), m: x.metrics || {} })));
  const W = 520, H = 220, L = 40, R = 44, T = 10, B = 26;
  // The x axis spans the rounds so far (at least 5; the bar shows the rest).
  const maxN = Math.max(5, ...pts.map((p) => p.n));
  const losses = pts.map((p) => p.m.test_loss).filter((v) => v !== undefined);
  const maxLoss = Math.max(1e-9, ...losses) * 1.1;
  const x = (n) => L + ((W - L - R) * n) / maxN;
  const ya = (a) => T + (H - T - B) * (1 - a);
  const yl = (l) => T + (H - T - B) * (1 - l / maxLoss);
  const line = (f, key, cls) => {
    const p = pts.filter((q) => q.m[key] !== undefined).map((q) => `${x(q.n).toFixed(1)},${f(q.m[key]).toFixed(1)}`);
    return p.length ? `<polyline class="${cls}" points="${p.join(" ")}"/>` : "";
  };
  let grid = "";
  for (let i = 0; i <= 4; i++) {
    const yy = T + ((H - T - B) * i) / 4;
    grid += `<line class="grid" x1="${L}" x2="${W - R}" y1="${yy}" y2="${yy}"/><text x="${L - 6}" y="${yy + 4}" text-anchor="end">${100 - 25 * i}%</text>
      <text x="${W - R + 6}" y="${yy + 4}">${(maxLoss * (1 - i / 4)).toFixed(2)}</text>`;
  }
  const ticks = [0, Math.round(maxN / 2), maxN].map((n) => `<text x="${x(n)}" y="${H - 8}" text-anchor="middle">${n}</text>`).join("");
  return `<svg class="chart" viewBox="0 0 ${W} ${H}" preserveAspectRatio="none" role="img" aria-label="accuracy and loss by round">${grid}${ticks}
    <text x="${(L + W - R) / 2}" y="${H - 8}" text-anchor="middle" dx="60">round</text>${line(yl, "test_loss", "loss")}${line(ya, "test_accuracy", "acc")}</svg>`;
}

function poll() {
  fetch("api/state", { cache: "no-store" }).then((r) => r.json()).then(render).catch(() => { $("#conn").className = "pill bad"; $("#conn").textContent = "offline"; });
}

function connect() {
  if (!window.EventSource) {
    $("#conn").textContent = "polling";
    poll();
    setInterval(poll, 2000);
    return;
  }
  const es = new EventSource("api/events");
  es.onmessage = (e) => {
    $("#conn").className = "pill ok";
    $("#conn").textContent = "live";
    render(JSON.parse(e.data));
  };
  es.onerror = () => { $("#conn").className = "pill warn"; $("#conn").textContent = "reconnecting…"; };
}

try {
  render(JSON.parse(document.getElementById("state").textContent));
} catch (e) {
  // served without an inlined state: the event stream brings it
}
connect();
