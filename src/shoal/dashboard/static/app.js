// shoal dashboard: one page per hash (#overview, #tasks, ...), each drawn
// from the JSON API and redrawn every few seconds while it is shown.
"use strict";

const REFRESH_MS = 2000;
let timer = null;

function esc(value) {
  if (value === null || value === undefined) return "";
  return String(value).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;",
    '"': "&quot;", "'": "&#39;"}[c]));
}

async function api(path) {
  const response = await fetch(path, {credentials: "same-origin"});
  if (response.status === 401) { window.location = "/login"; throw new Error("log in"); }
  const type = response.headers.get("Content-Type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw new Error(body.error || body);
  return body;
}

function table(rows, columns, onclick) {
  if (!rows.length) return '<p class="muted">None.</p>';
  const head = columns.map(c => `<th>${esc(c[0])}</th>`).join("");
  const body = rows.map((r, i) => `<tr${onclick ? ` class="clickable" data-i="${i}"` : ""}>` +
    columns.map(c => `<td>${c[1](r)}</td>`).join("") + "</tr>").join("");
  return `<table><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
}

function bindRows(container, rows, onclick) {
  container.querySelectorAll("tr.clickable").forEach(tr =>
    tr.addEventListener("click", () => onclick(rows[Number(tr.dataset.i)])));
}

const st = s => `<span class="state-${esc(s)}">${esc(s)}</span>`;
// node ids are shown by their first 12 digits; task, actor and object ids whole
// (their first 16 digits are the submitting process's, the same for many)
const short = id => id ? `<span class="mono" title="${esc(id)}">${esc(id.slice(0, 12))}</span>` : "";
const full = id => id ? `<span class="mono">${esc(id)}</span>` : "";
const when = ms => ms ? new Date(ms).toLocaleTimeString() : "";
const gb = b => (b / 2 ** 30).toFixed(2) + " GiB";
const mb = b => (b / 1e6).toFixed(1) + " MB";

function bar(used, total, text) {
  const pct = total ? Math.min(100, 100 * used / total) : 0;
  return `<span class="bar"><span style="width:${pct.toFixed(0)}%"></span></span>${esc(text)}`;
}

function resourceBars(n) {
  const total = n.resources_total || {}, free = n.resources_available || {};
  return Object.keys(total).filter(k => total[k] > 0).sort().map(k => {
    const used = Math.max(0, total[k] - (k in free ? free[k] : total[k]));
    // "memory" is the schedulable resource (what tasks asked for), not the machine's use
    const text = k === "memory" ? `${gb(used)} / ${gb(total[k])}` : `${+used.toFixed(2)} / ${total[k]}`;
    return `<div>${esc(k === "memory" ? "memory (reserved)" : k)} ${bar(used, total[k], text)}</div>`;
  }).join("");
}

// ------------------------------------------------------------------ pages
const pages = {
  async overview(el) {
    const nodes = await api("/api/nodes?limit=1000");
    const alive = nodes.filter(n => n.state === "ALIVE" && !n.is_driver_node);
    el.innerHTML = `<section><h2>Nodes (${alive.length} alive)</h2>` + table(nodes, [
      ["node", n => short(n.node_id) + (n.is_head_node ? " (head)" : "") +
                     (n.is_driver_node ? " (driver)" : "")],
      ["address", n => esc(n.node_ip)], ["state", n => st(n.state)],
      ["resources used / total", resourceBars],
      ["machine memory", n => n.stats && n.stats.memory_total ?
        bar(n.stats.memory_used, n.stats.memory_total,
            `${gb(n.stats.memory_used)} / ${gb(n.stats.memory_total)}`) : ""],
      ["object store", n => n.stats && n.stats.object_store_capacity ?
        bar(n.stats.object_store_used, n.stats.object_store_capacity,
            `${mb(n.stats.object_store_used)} / ${mb(n.stats.object_store_capacity)}`) +
        (n.stats.spilled_bytes ? `<div class="muted">spilled ${mb(n.stats.spilled_bytes)}</div>` : "") : ""],
      ["workers", n => esc(n.stats ? n.stats.workers : "")],
      ["tasks", n => n.stats && n.stats.tasks ? esc(`${n.stats.tasks.running} running, ` +
        `${n.stats.tasks.queued + n.stats.tasks.waiting} pending, ${n.stats.tasks.ended} ended ` +
        `(${n.stats.tasks.failed} failed)`) : ""],
    ]) + "</section>";
  },

  async jobs(el) {
    const jobs = await api("/api/jobs?limit=1000");
    el.innerHTML = "<section><h2>Jobs</h2>" + table(jobs, [
      ["job", j => `<span class="mono">${esc(j.job_id)}</span>`], ["type", j => esc(j.type)],
      ["status", j => st(j.status)], ["entrypoint", j => `<code>${esc(j.entrypoint)}</code>`],
      ["started", j => when(j.start_time_ms)], ["ended", j => when(j.end_time_ms)],
      ["message", j => esc(j.message)],
      ["tasks", j => j.type === "DRIVER" ?
        `<a href="#tasks" data-job="${esc(j.job_id)}">its tasks</a>` : ""],
    ]) + "</section>";
    el.querySelectorAll("a[data-job]").forEach(a => a.addEventListener("click", () =>
      sessionStorage.setItem("taskJob", a.dataset.job)));
  },

  async tasks(el) {
    const filter = sessionStorage.getItem("taskState") || "";
    const job = sessionStorage.getItem("taskJob") || "";
    const query = (filter ? "&state=" + encodeURIComponent(filter) : "") +
      (job ? "&job_id=" + encodeURIComponent(job) : "");
    const [summary, tasks, jobs] = await Promise.all([api("/api/summary/tasks"),
      api("/api/tasks?limit=1000" + query), api("/api/jobs?limit=1000&type=DRIVER")]);
    const groups = Object.values(summary.summary);
    const states = ["", "RUNNING", "PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT", "FINISHED", "FAILED"];
    const jobIds = [""].concat(jobs.map(j => j.job_id));
    if (job && !jobIds.includes(job)) jobIds.push(job);
    el.innerHTML = `<section><h2>By function (${summary.total} tasks)</h2>` + table(groups, [
      ["function", g => esc(g.func_or_class_name)], ["type", g => esc(g.type)],
      ["states", g => Object.entries(g.state_counts).map(([s, n]) => `${st(s)}: ${n}`).join(", ")],
    ]) + `</section><section><h2>Tasks</h2><div class="toolbar">state
      <select id="state-filter">${states.map(s => `<option ${s === filter ? "selected" : ""}
      value="${s}">${s || "any"}</option>`).join("")}</select> job
      <select id="job-filter">${jobIds.map(j => `<option ${j === job ? "selected" : ""}
      value="${esc(j)}">${esc(j) || "any"}</option>`).join("")}</select>
      <span class="muted">click a row for its events, error and traceback</span></div>
      <div id="task-table"></div><div id="task-detail"></div></section>`;
    const container = el.querySelector("#task-table");
    container.innerHTML = table(tasks.slice().reverse(), [
      ["task", t => full(t.task_id)], ["name", t => esc(t.name)], ["state", t => st(t.state)],
      ["job", t => full(t.job_id)],
      ["node", t => short(t.node_id)], ["worker pid", t => esc(t.worker_pid)],
      ["submitted", t => when(t.creation_time_ms)],
      ["error", t => t.error_type ? `<span class="error">${esc(t.error_type)}: ${esc(t.error_message)}</span>` : ""],
    ], true);
    bindRows(container, tasks.slice().reverse(), showTask);
    el.querySelector("#state-filter").addEventListener("change", e => {
      sessionStorage.setItem("taskState", e.target.value); show();
    });
    el.querySelector("#job-filter").addEventListener("change", e => {
      sessionStorage.setItem("taskJob", e.target.value); show();
    });
    const open = sessionStorage.getItem("openTask");
    if (open) showTask({task_id: open});
  },

  async actors(el) {
    const actors = await api("/api/actors?limit=1000");
    el.innerHTML = "<section><h2>Actors</h2>" + table(actors, [
      ["actor", a => full(a.actor_id)], ["class", a => esc(a.class_name)],
      ["name", a => esc(a.name)], ["state", a => st(a.state)], ["node", a => short(a.node_id)],
      ["pid", a => esc(a.pid)], ["restarts", a => `${a.num_restarts} / ${a.max_restarts}`],
      ["calls", a => `${a.running_calls} running, ${a.pending_calls} waiting`],
      ["death cause", a => `<span class="error">${esc(a.death_cause)}</span>`],
      ["logs", a => `<a href="#logs" data-actor="${esc(a.actor_id)}">output</a>`],
    ]) + "</section>";
    el.querySelectorAll("a[data-actor]").forEach(a => a.addEventListener("click", () =>
      sessionStorage.setItem("logSource", "actor_id=" + a.dataset.actor)));
  },

  async objects(el) {
    const [summary, objects] = await Promise.all([api("/api/summary/objects"),
                                                  api("/api/objects?limit=500")]);
    objects.sort((a, b) => b.size - a.size);
    el.innerHTML = `<section><h2>Memory: ${summary.total_objects} objects, ` +
      `${mb(summary.total_size_bytes)}</h2>` + table(Object.values(summary.summary), [
        ["made by", g => esc(g.task)], ["objects", g => esc(g.total_objects)],
        ["size", g => mb(g.total_size_bytes)],
        ["where", g => esc(Object.entries(g.where_counts).map(([k, v]) => `${k}: ${v}`).join(", "))],
      ]) + "</section><section><h2>Largest objects</h2>" + table(objects.slice(0, 200), [
        ["object", o => full(o.object_id)], ["size", o => esc(o.size)], ["where", o => esc(o.where)],
        ["refs", o => esc(o.refs)], ["owner", o => esc(o.owner)], ["made by", o => esc(o.task)],
        ["node", o => short(o.node_id)],
      ]) + "</section>";
  },

  async placement(el) {
    const groups = await api("/api/placement_groups?limit=1000");
    el.innerHTML = "<section><h2>Placement groups</h2>" + table(groups, [
      ["group", g => full(g.placement_group_id)], ["name", g => esc(g.name)],
      ["state", g => st(g.state)], ["strategy", g => esc(g.strategy)],
      ["bundles", g => `<code>${esc(JSON.stringify(g.bundles))}</code>`],
      ["why pending", g => esc((g.stats || {}).infeasible_reason || "")],
    ]) + "</section>";
  },

  async logs(el) {
    const source = sessionStorage.getItem("logSource") || "";
    const workers = await api("/api/workers?limit=1000");
    const options = workers.filter(w => w.worker_type === "WORKER").map(w =>
      `<option value="pid=${w.pid}&node_id=${w.node_id}" ${source === `pid=${w.pid}&node_id=${w.node_id}` ?
      "selected" : ""}>worker pid ${w.pid}${w.actor_class ? " (" + esc(w.actor_class) + ")" : ""}
      ${w.is_alive ? "" : "(exited)"}</option>`).join("");
    el.innerHTML = `<section><h2>Logs</h2><div class="toolbar">
      <select id="log-source"><option value="">choose a worker</option>${options}
      ${source && !options.includes(source) ? `<option selected value="${esc(source)}">${esc(source)}</option>` : ""}
      </select><label><input type="checkbox" id="log-err"
      ${sessionStorage.getItem("logErr") === "1" ? "checked" : ""}> stderr</label></div>
      <pre id="log-text" class="muted">Choose a worker, or open an actor's or a task's output.</pre></section>`;
    el.querySelector("#log-source").addEventListener("change", e => {
      sessionStorage.setItem("logSource", e.target.value); show(); });
    el.querySelector("#log-err").addEventListener("change", e => {
      sessionStorage.setItem("logErr", e.target.checked ? "1" : "0"); show(); });
    if (source) {
      const err = sessionStorage.getItem("logErr") === "1" ? "&err=1" : "";
      el.querySelector("#log-text").textContent = await api(`/api/logs?${source}${err}&tail=1000`) ||
        "(nothing printed yet)";
    }
  },

  async timeline(el) {
    const events = await api("/api/timeline");
    const runs = events.filter(e => e.ph === "X");
    const names = {};
    events.filter(e => e.ph === "M").forEach(e => names[e.pid + ":" + (e.tid || "")] = e.args.name);
    el.innerHTML = `<section><h2>Timeline (${runs.length} runs)</h2>
      <p><a href="/api/timeline" download="timeline.json">Download</a> the Chrome trace for
      <a href="https://ui.perfetto.dev" target="_blank" rel="noopener">Perfetto</a>.</p>
      <div id="chart"></div></section>`;
    if (!runs.length) return;
    const tracks = [...new Set(runs.map(e => e.pid + ":" + e.tid))].sort();
    const t0 = Math.min(...runs.map(e => e.ts)), t1 = Math.max(...runs.map(e => e.ts + e.dur));
    const width = 1100, label = 250, row = 18, span = Math.max(1, t1 - t0);
    const x = ts => label + (width - label) * (ts - t0) / span;
    let svg = `<svg width="${width}" height="${tracks.length * row + 24}">`;
    tracks.forEach((t, i) => {
      const [pid] = t.split(":");
      svg += `<rect x="${label}" y="${i * row + 1}" width="${width - label}" height="${row - 2}"
        fill="${i % 2 ? "#f6f7fa" : "#eef1f7"}"></rect>`;
      svg += `<text x="0" y="${i * row + 13}">${esc((names[t] || t) + " · " + (names[pid + ":"] || "node"))}</text>`;
    });
    runs.forEach(e => {
      const i = tracks.indexOf(e.pid + ":" + e.tid);
      svg += `<rect x="${x(e.ts).toFixed(1)}" y="${i * row + 3}" width="${Math.max(1, x(e.ts + e.dur) - x(e.ts)).toFixed(1)}"
        height="${row - 6}" fill="${e.args.state === "FAILED" ? "#c62828" : "#2463eb"}"><title>${esc(e.name)}
        ${(e.dur / 1000).toFixed(2)} ms ${esc(e.args.error || "")}</title></rect>`;
    });
    svg += `<text x="${label}" y="${tracks.length * row + 18}">${((t1 - t0) / 1e6).toFixed(3)} s in all</text></svg>`;
    el.querySelector("#chart").innerHTML = svg;
  },

  async doctor(el) {
    const findings = await api("/api/doctor");
    el.innerHTML = "<section><h2>Why is it stuck</h2>" + (findings.length ?
      findings.map(f => `<div class="finding"><b>${esc(f.kind)}</b> ${esc(f.message)}</div>`).join("") :
      '<p class="muted">Nothing looks stuck: no pending work that cannot proceed, no stragglers.</p>') +
      "</section>";
  },
};

async function showTask(t) {
  sessionStorage.setItem("openTask", t.task_id);
  const box = document.querySelector("#task-detail");
  if (!box) return;
  try {
    const row = await api("/api/tasks/" + encodeURIComponent(t.task_id));
    box.innerHTML = `<h2>Task ${esc(row.name)} <span class="mono">${esc(row.task_id)}</span> ${st(row.state)}</h2>` +
      table(row.events || [], [["state", e => st(e.state)], ["at", e => when(e.created_ms)],
        ["where", e => (e.node_id ? "node " + short(e.node_id) : "") +
                       (e.worker_pid ? ` pid ${esc(e.worker_pid)}` : "")]]) +
      (row.error_type ? `<p class="error">${esc(row.error_type)}: ${esc(row.error_message)}</p>` +
        (row.error_traceback ? `<pre class="traceback">${esc(row.error_traceback)}</pre>` : "") : "") +
      (row.worker_pid ? `<p><a href="#logs" id="task-logs">This task's output</a></p>` : "");
    const link = box.querySelector("#task-logs");
    if (link) link.addEventListener("click", () =>
      sessionStorage.setItem("logSource", "task_id=" + row.task_id));
  } catch (e) {
    box.innerHTML = `<p class="error">${esc(e.message)}</p>`;
  }
}

async function show() {
  clearTimeout(timer);
  const name = (location.hash || "#overview").slice(1);
  const page = pages[name] || pages.overview;
  document.querySelectorAll("#nav a").forEach(a =>
    a.classList.toggle("active", a.getAttribute("href") === "#" + name));
  const el = document.querySelector("#page");
  try {
    await page(el);
    document.querySelector("#status").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    document.querySelector("#status").textContent = "error: " + e.message;
  }
  if (name !== "logs" && name !== "timeline") timer = setTimeout(show, REFRESH_MS);
}

window.addEventListener("hashchange", () => { sessionStorage.removeItem("openTask"); show(); });
show();
