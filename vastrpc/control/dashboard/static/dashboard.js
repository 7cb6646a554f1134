// The vastrpc dashboard: polls the control service's JSON API with the API key and follows a worker's log.
// Plain JavaScript, no build step; charts by uPlot (vendor/). The key lives in this tab's sessionStorage
// and travels only in the Authorization header, never in a URL or a cookie.
"use strict";

(function () {
  const POLL_MS = 2000;
  const LOG_LIMIT = 200000; // characters kept in the log view
  const KEY_ITEM = "vastrpc-api-key";
  const $ = (id) => document.getElementById(id);

  // What tests and curious users can read: the charts by endpoint, and the last answers.
  const state = { charts: {}, deployments: null, stats: null, log: null };
  window.vastrpcDashboard = state;

  function esc(value) {
    return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }

  function ago(seconds, now) {
    if (!seconds) return "—";
    const s = Math.max(0, now - seconds);
    if (s < 60) return `${s.toFixed(0)}s ago`;
    if (s < 3600) return `${(s / 60).toFixed(0)}m ago`;
    if (s < 86400) return `${(s / 3600).toFixed(1)}h ago`;
    return `${(s / 86400).toFixed(1)}d ago`;
  }

  function key() {
    return sessionStorage.getItem(KEY_ITEM);
  }

  class Unauthorized extends Error {}

  async function api(path, options = {}) {
    const response = await fetch(path, { ...options, headers: { Authorization: `Bearer ${key()}` }, cache: "no-store" });
    if (response.status === 401) throw new Unauthorized("the API key was refused");
    if (!response.ok) {
      let message = `${response.status}`;
      try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
      throw new Error(message);
    }
    return response;
  }

  // -- sign in ------------------------------------------------------------------------------

  function showLogin(message) {
    stopPolling();
    closeLog();
    sessionStorage.removeItem(KEY_ITEM);
    $("main").hidden = true;
    $("signout").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("status").textContent = "not signed in";
    $("key").focus();
  }

  async function signIn(candidate) {
    sessionStorage.setItem(KEY_ITEM, candidate);
    try {
      await api("/api/deployments");
    } catch (error) {
      showLogin(error instanceof Unauthorized ? "That is not this control service's API key." : `Cannot reach the control service: ${error.message}`);
      return;
    }
    $("login").hidden = true;
    $("main").hidden = false;
    $("signout").hidden = false;
    startPolling();
  }

  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const candidate = $("key").value.trim();
    $("key").value = "";
    if (candidate) signIn(candidate);
  });
  $("signout").addEventListener("click", () => showLogin(""));

  // -- polling ------------------------------------------------------------------------------

  let timers = [];

  function stopPolling() {
    timers.forEach(clearTimeout);
    timers = [];
  }

  function startPolling() {
    stopPolling();
    const loop = (fn) => {
      const tick = async () => {
        try {
          await fn();
          $("status").textContent = `live · updated ${new Date().toLocaleTimeString()}`;
        } catch (error) {
          if (error instanceof Unauthorized) return showLogin("The API key was refused; sign in again.");
          $("status").textContent = `cannot reach the control service (${error.message}); retrying`;
        }
        timers.push(setTimeout(tick, POLL_MS));
      };
      tick();
    };
    loop(refreshDeployments);
    loop(refreshStats);
  }

  // -- deployments, endpoints, revisions, workers ---------------------------------------------

  async function refreshDeployments() {
    const data = await (await api("/api/deployments")).json();
    state.deployments = data;
    const root = $("deployments");
    const seen = new Set();
    $("empty").hidden = data.deployments.length > 0;
    for (const deployment of data.deployments) {
      for (const endpoint of deployment.endpoints) {
        const name = `${deployment.name}:${endpoint.tag}`;
        seen.add(name);
        let card = root.querySelector(`.endpoint[data-endpoint="${CSS.escape(name)}"]`);
        if (!card) {
          card = document.createElement("section");
          card.className = "endpoint";
          card.dataset.endpoint = name;
          card.innerHTML = `<div class="info"></div><div class="charts">
            <div class="chart" data-kind="calls"></div><div class="chart" data-kind="latency"></div>
            <div class="chart" data-kind="errors"></div></div>`;
          root.appendChild(card);
        }
        card.dataset.state = endpoint.state;
        card.querySelector(".info").innerHTML = endpointHtml(name, endpoint, data.now);
      }
    }
    for (const card of root.querySelectorAll(".endpoint")) {
      if (!seen.has(card.dataset.endpoint)) {
        delete state.charts[card.dataset.endpoint];
        card.remove();
      }
    }
  }

  function endpointHtml(name, endpoint, now) {
    const failure = endpoint.failure ? `<p class="failure">${esc(endpoint.failure.step)}: ${esc(endpoint.failure.message)}</p>` : "";
    const label = endpoint.version_label ? ` · version <code>${esc(endpoint.version_label)}</code>` : "";
    const ttl = endpoint.ttl ? ` · ttl ${esc(endpoint.ttl)}s` : "";
    const workers = endpoint.workers.map((w) => `<tr data-worker-id="${esc(w.id)}" data-state="${esc(w.state)}">
        <td><code>${esc(w.id)}</code></td>
        <td><span class="badge ${esc(w.state)}">${esc(w.state)}</span>${w.failure ? ` <span class="error">${esc(w.failure.step)}: ${esc(w.failure.message)}</span>` : ""}</td>
        <td class="num">${w.score ? w.score.toFixed(1) : "—"}</td>
        <td class="num">${esc(w.calls_in_flight)}/${esc(w.capacity || "—")}</td>
        <td>${esc(w.host || "—")}</td>
        <td>${w.gpus.length ? esc(w.gpus.join(",")) : "—"}</td>
        <td class="num">${esc(w.pid || "—")}</td>
        <td><code>${esc(w.revision_id)}</code></td>
        <td>${ago(w.last_heartbeat, now)}</td>
        <td><button type="button" class="show-log" data-worker="${esc(w.id)}">log</button></td></tr>`).join("");
    const revisions = endpoint.revisions.map((r) => `<tr class="${r.live ? "live" : ""}" data-revision-id="${esc(r.id)}">
        <td><code>${esc(r.id)}</code></td>
        <td>${r.tier === null ? "?" : esc(r.tier)} <span class="muted">${esc(r.tier_name)}</span></td>
        <td>${ago(r.created_at, now)}</td><td><code>${esc(r.bundle)}</code></td></tr>`).join("");
    const more = endpoint.revision_count > endpoint.revisions.length ? `<p class="muted">${endpoint.revision_count - endpoint.revisions.length} older revisions not shown</p>` : "";
    return `<div class="endpoint-head">
        <h3>${esc(name)}</h3><span class="badge ${esc(endpoint.state)}">${esc(endpoint.state)}</span>
        <span class="muted">${endpoint.workers.length} worker${endpoint.workers.length === 1 ? "" : "s"} (want ${esc(endpoint.desired_workers)})${label}${ttl}</span>
      </div>${failure}
      <div class="columns">
        <div><table><thead><tr><th>worker</th><th>state</th><th>score</th><th>in flight</th><th>host</th><th>GPUs</th><th>pid</th><th>revision</th><th>heartbeat</th><th></th></tr></thead>
          <tbody>${workers || `<tr><td colspan="10" class="muted">no workers</td></tr>`}</tbody></table></div>
        <div><table><thead><tr><th>revision</th><th>tier</th><th>registered</th><th>bundle</th></tr></thead>
          <tbody>${revisions}</tbody></table>${more}</div>
      </div>`;
  }

  $("deployments").addEventListener("click", (event) => {
    const button = event.target.closest("button.show-log");
    if (button) openLog(button.dataset.worker);
  });

  // -- charts ---------------------------------------------------------------------------------

  const CHARTS = {
    // floor: the top of the y axis at least, so that an idle chart still has one.
    calls: { title: "calls per second", floor: 0.1, series: [["calls/s", "calls_per_s", "#2f62c8"]] },
    latency: {
      title: "latency (ms)",
      floor: 1,
      series: [["p50", "p50_ms", "#1a8f4c"], ["p95", "p95_ms", "#b87800"], ["p99", "p99_ms", "#c2352b"]],
    },
    errors: { title: "failed calls per second", floor: 0.1, series: [["errors/s", "errors_per_s", "#c2352b"]] },
  };

  async function refreshStats() {
    const data = await (await api("/api/stats")).json();
    state.stats = data;
    for (const columns of data.endpoints) {
      const name = `${columns.deployment}:${columns.tag}`;
      const card = $("deployments").querySelector(`.endpoint[data-endpoint="${CSS.escape(name)}"]`);
      if (!card) continue; // its card comes with the next deployments poll
      const charts = (state.charts[name] = state.charts[name] || {});
      for (const [kind, spec] of Object.entries(CHARTS)) {
        const series = [columns.t, ...spec.series.map(([, field]) => columns[field])];
        const element = card.querySelector(`.chart[data-kind="${kind}"]`);
        if (!charts[kind]) charts[kind] = makeChart(element, spec, series);
        else charts[kind].setData(series);
        // For tests and scripts: how many samples the chart holds and the largest value in them.
        const values = series.slice(1).flat().filter((v) => v !== null);
        element.dataset.points = String(columns.t.length);
        element.dataset.max = String(values.length ? Math.max(...values) : 0);
      }
    }
  }

  function makeChart(element, spec, data) {
    const width = Math.max(240, element.clientWidth || 320);
    const options = {
      title: spec.title,
      width,
      height: 170,
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max * 1.1, spec.floor)] } },
      series: [{}, ...spec.series.map(([label, , stroke]) => ({ label, stroke, width: 1.5, spanGaps: false }))],
      axes: [{}, { size: 50 }],
      legend: { live: true },
    };
    return new uPlot(options, data, element);
  }

  window.addEventListener("resize", () => {
    for (const charts of Object.values(state.charts)) {
      for (const chart of Object.values(charts)) {
        const element = chart.root.parentElement;
        if (element) chart.setSize({ width: Math.max(240, element.clientWidth), height: 170 });
      }
    }
  });

  // -- a worker's log, followed live -------------------------------------------------------------

  let following = null;

  function closeLog() {
    if (following) following.abort();
    following = null;
    state.log = null;
    $("log-panel").hidden = true;
  }

  $("log-close").addEventListener("click", closeLog);

  async function openLog(workerId) {
    closeLog();
    const controller = new AbortController();
    following = controller;
    state.log = { worker: workerId, open: false, ended: false };
    const pre = $("log");
    pre.textContent = "";
    $("log-worker").textContent = workerId;
    $("log-state").textContent = "connecting…";
    $("log-panel").hidden = false;
    $("log-panel").dataset.worker = workerId;
    try {
      const response = await api(`/api/logs?worker=${encodeURIComponent(workerId)}&tail=200`, { signal: controller.signal });
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffered = "";
      state.log.open = true;
      $("log-state").textContent = "following";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += decoder.decode(value, { stream: true });
        const lines = buffered.split("\n");
        buffered = lines.pop();
        for (const line of lines) {
          if (!line) continue;
          const item = JSON.parse(line);
          if (item.end) state.log.ended = true;
          if (item.text) append(pre, item.text);
        }
      }
      $("log-state").textContent = state.log.ended ? "the worker has stopped" : "the stream ended";
    } catch (error) {
      if (controller.signal.aborted) return;
      if (error instanceof Unauthorized) return showLogin("The API key was refused; sign in again.");
      $("log-state").textContent = `cannot follow this log: ${error.message}`;
    }
  }

  function append(pre, text) {
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.textContent = (pre.textContent + text).slice(-LOG_LIMIT);
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }

  // -- start ------------------------------------------------------------------------------------

  // A key in the address's fragment (never sent to the server) signs in once, then leaves the address.
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("key")) {
    sessionStorage.setItem(KEY_ITEM, fragment.get("key"));
    history.replaceState(null, "", location.pathname);
  }
  if (key()) signIn(key());
  else showLogin("");
})();
