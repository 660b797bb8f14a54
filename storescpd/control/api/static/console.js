// storescpd console: polls the same JSON endpoints as `storescpd ctl` and draws them.
// Everything a peer chose (AE titles, addresses, patient IDs, UIDs) goes into the page as
// textContent, never as markup. The bearer token, when the API asks for one, lives in this
// tab's sessionStorage only and travels in the Authorization header, never in a URL.
"use strict";

(() => {
  const TOKEN_KEY = "storescpd-token";
  const POLL_MS = 1000;           // associations and status: "at least every 2 s"
  const THROUGHPUT_MS = 2000;     // the API samples every 5 s and answers from memory
  const JOURNAL_MS = 10000;
  const WINDOW_S = 15 * 60;

  const $ = (id) => document.getElementById(id);
  const rates = new Map();        // association id -> {bytes, at, rate}
  let tokenWanted = null;         // the pending token question, shared by concurrent requests
  let tokenDeclined = false;

  class AuthNeeded extends Error {}

  // ---- formatting -------------------------------------------------------------------------
  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "kB", "MB", "GB", "TB"];
    let i = 0;
    while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return i === 0 ? `${Math.round(n)} B` : `${n.toFixed(1)} ${units[i]}`;
  }
  function duration(seconds) {
    let s = Math.max(0, Math.floor(seconds));
    const d = Math.floor(s / 86400); s -= d * 86400;
    const h = Math.floor(s / 3600); s -= h * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
    if (m) return `${m}m ${String(s).padStart(2, "0")}s`;
    return `${s}s`;
  }
  function parseTime(iso) {
    // The API writes +0200; Date.parse wants +02:00.
    return iso ? Date.parse(String(iso).replace(/([+-]\d\d)(\d\d)$/, "$1:$2")) : NaN;
  }
  // 24-hour local time; the date only when it is not today.
  function clock(iso) {
    const t = parseTime(iso);
    return Number.isNaN(t) ? (iso || "–") : clockOf(new Date(t));
  }
  function clockOf(d) {
    const two = (n) => String(n).padStart(2, "0");
    const time = `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
    if (d.toDateString() === new Date().toDateString()) return time;
    return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ${time.slice(0, 5)}`;
  }
  function count(n) { return Number(n || 0).toLocaleString(); }

  // ---- talking to the API -------------------------------------------------------------------
  function askToken(problem) {
    if (tokenWanted) return tokenWanted;
    const dialog = $("token-dialog");
    const input = $("token-input");
    $("token-problem").textContent = problem;
    input.value = "";
    tokenWanted = new Promise((resolve) => {
      dialog.addEventListener("close", () => {
        tokenWanted = null;
        if (dialog.returnValue === "ok" && input.value.trim()) {
          sessionStorage.setItem(TOKEN_KEY, input.value.trim());
          tokenDeclined = false;
          resolve(true);
        } else {
          tokenDeclined = true;
          resolve(false);
        }
      }, { once: true });
    });
    dialog.showModal();
    return tokenWanted;
  }

  async function api(method, path) {
    for (let attempt = 0; attempt < 3; attempt++) {
      const headers = { Accept: "application/json" };
      const token = sessionStorage.getItem(TOKEN_KEY);
      if (token) headers.Authorization = `Bearer ${token}`;
      const response = await fetch(path, { method, headers, cache: "no-store", credentials: "omit" });
      if (response.status !== 401) return response;
      if (token) sessionStorage.removeItem(TOKEN_KEY);
      if (tokenDeclined || !(await askToken(token ? "That token was not accepted." : ""))) break;
    }
    throw new AuthNeeded("this API needs its bearer token");
  }

  async function getJSON(path) {
    const response = await api("GET", path);
    if (!response.ok) throw new Error(`${path}: ${response.status} ${await detail(response)}`);
    return response.json();
  }

  async function detail(response) {
    try {
      const body = await response.json();
      return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail ?? body);
    } catch (e) {
      return response.statusText;
    }
  }

  function showNotice(message, withTokenButton) {
    const notice = $("notice");
    notice.replaceChildren(document.createTextNode(message));
    if (withTokenButton) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = "Enter token";
      button.addEventListener("click", () => { tokenDeclined = false; askToken("").then(() => refresh()); });
      notice.append(button);
    }
    notice.hidden = false;
  }

  function clearNotice() { $("notice").hidden = true; }

  function setConnection(ok, text) {
    const line = $("connection");
    line.textContent = text;
    line.classList.toggle("bad", !ok);
  }

  // ---- tables -------------------------------------------------------------------------------
  function labels(table) {
    return Array.from(table.tHead.rows[0].cells, (th) => th.textContent.trim());
  }

  // One row per key, kept across polls so that a button under the pointer stays where it is.
  function syncRows(table, items, key, fill) {
    const body = table.tBodies[0];
    const names = labels(table);
    const existing = new Map(Array.from(body.rows, (tr) => [tr.dataset.key, tr]));
    items.forEach((item, index) => {
      const k = String(key(item));
      let tr = existing.get(k);
      if (!tr) {
        tr = document.createElement("tr");
        tr.dataset.key = k;
        names.forEach((name, i) => {
          const td = tr.insertCell();
          td.dataset.label = name;
          const th = table.tHead.rows[0].cells[i];
          if (th.classList.contains("num")) td.classList.add("num");
        });
      }
      existing.delete(k);
      fill(tr.cells, item, tr);
      if (body.rows[index] !== tr) body.insertBefore(tr, body.rows[index] || null);
    });
    existing.forEach((tr) => tr.remove());
  }

  function cell(td, text, className) {
    td.textContent = text;
    if (className !== undefined) td.className = className;
  }

  // ---- status -------------------------------------------------------------------------------
  function renderStatus(s) {
    $("version").textContent = s.version;
    $("mode").textContent = s.process_mode + (s.stopping ? ` (stopping: ${s.stopping})` : "");
    $("uptime").textContent = duration(s.uptime_seconds);
    $("generation").textContent = `${s.generation ?? "–"} (loaded ${clock(s.config_loaded)})`;
    const last = s.last_reload || {};
    const reload = $("reload");
    reload.textContent = last.result ? `${last.result} ${clock(last.time)}` : "none since start";
    reload.title = last.message || "";
    reload.className = last.result ? `result-${last.result}` : "";
    $("free").textContent = bytes(s.output_free_bytes);
    $("output-directory").textContent = s.output_directory;
    $("output-directory").title = s.output_directory;
    const objects = s.totals.objects;
    $("stored").textContent = `${count(objects.success)} objects, ${bytes(s.totals.received_bytes)}` +
      (objects.failure ? `, ${count(objects.failure)} refused` : "");
    renderWorkers(s.workers);
  }

  function renderWorkers(workers) {
    $("worker-count").textContent = `(${workers.length})`;
    syncRows($("workers"), workers, (w) => w.pid, (c, w) => {
      cell(c[0], String(w.pid), "num");
      cell(c[1], w.kind);
      cell(c[2], w.state, `state-${w.state}`);
      cell(c[3], String(w.generation), "num");
      cell(c[4], count(w.associations_served), "num");
      cell(c[5], clock(w.started));
    });
  }

  // ---- associations -------------------------------------------------------------------------
  function rateOf(a, now) {
    const seen = rates.get(a.id);
    if (!seen) {
      rates.set(a.id, { bytes: a.bytes_received, at: now, rate: null });
      return null;
    }
    if (a.bytes_received !== seen.bytes && now > seen.at) {
      seen.rate = ((a.bytes_received - seen.bytes) * 1000) / (now - seen.at);
      seen.bytes = a.bytes_received;
      seen.at = now;
    } else if (now - seen.at > 3000) {
      seen.rate = 0;              // nothing arrived for a while
    }
    return seen.rate;
  }

  function renderAssociations(items) {
    const now = performance.now();
    const live = new Set(items.map((a) => a.id));
    rates.forEach((_, id) => { if (!live.has(id)) rates.delete(id); });
    $("association-count").textContent = `(${items.length})`;
    $("no-associations").hidden = items.length > 0;
    syncRows($("associations"), items, (a) => a.id, (c, a, tr) => {
      const rate = rateOf(a, now);
      cell(c[0], a.peer);
      cell(c[1], a.calling_ae);
      cell(c[2], a.called_ae);
      cell(c[3], a.state, `state-${a.state}`);
      cell(c[4], count(a.objects_received), "num");
      cell(c[5], bytes(a.bytes_received), "num");
      cell(c[6], rate === null ? "–" : `${bytes(rate)}/s`, "num");
      cell(c[7], duration((Date.now() - parseTime(a.started)) / 1000), "num");
      tr.title = `association ${a.id}, worker ${a.worker_pid}` +
        (a.last_sop_class ? `, last SOP class ${a.last_sop_class}` : "");
      let button = c[8].querySelector("button");
      if (!button) {
        c[8].className = "actions";
        button = document.createElement("button");
        button.type = "button";
        button.className = "abort";
        button.textContent = "Abort";
        button.addEventListener("click", () => abort(tr.dataset.key, button));
        c[8].append(button);
      }
      button.disabled = a.state === "aborting";
      button.dataset.caller = a.calling_ae;
      button.dataset.peer = a.peer;
    });
  }

  async function abort(id, button) {
    const question = `Abort association ${id} from ${button.dataset.caller || "?"} (${button.dataset.peer})?\n\n` +
      "The sender gets an A-ABORT; the object it is sending now is discarded, those already stored stay.";
    if (!window.confirm(question)) return;
    button.disabled = true;
    try {
      const response = await api("DELETE", `/associations/${encodeURIComponent(id)}`);
      if (response.status === 202) {
        setConnection(true, `abort of ${id} under way`);
      } else {
        showNotice(`abort of ${id}: ${await detail(response)}`, false);
      }
    } catch (e) {
      showNotice(`abort of ${id} not sent: ${e.message}`, e instanceof AuthNeeded);
      button.disabled = false;
    }
  }

  // ---- throughput chart ---------------------------------------------------------------------
  function niceCeiling(value) {
    if (!(value > 0)) return 1;
    const magnitude = 10 ** Math.floor(Math.log10(value));
    const step = [1, 2, 2.5, 5, 10].find((f) => f * magnitude >= value);
    return step * magnitude;
  }

  function drawChart(canvas, points, now, valueOf, color, unit) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    const style = getComputedStyle(document.body);
    const muted = style.getPropertyValue("--muted").trim();
    const line = style.getPropertyValue("--line").trim();
    g.font = `11px ${style.fontFamily}`;
    const left = 44, right = 8, top = 6, bottom = 18;
    const plotW = width - left - right, plotH = height - top - bottom;
    const values = points.map(valueOf);
    const max = niceCeiling(Math.max(0, ...values));
    const x = (t) => left + plotW * (1 - (now - t) / WINDOW_S);
    const y = (v) => top + plotH * (1 - v / max);

    g.strokeStyle = line;
    g.fillStyle = muted;
    g.lineWidth = 1;
    g.textAlign = "right";
    g.textBaseline = "middle";
    [0, max / 2, max].forEach((v) => {
      g.beginPath();
      g.moveTo(left, Math.round(y(v)) + 0.5);
      g.lineTo(left + plotW, Math.round(y(v)) + 0.5);
      g.stroke();
      g.fillText(v >= 10 || v === 0 ? String(Math.round(v)) : v.toPrecision(2), left - 6, y(v));
    });
    g.textAlign = "center";
    g.textBaseline = "alphabetic";
    [[15, "−15 min"], [10, "−10"], [5, "−5"], [0, "now"]].forEach(([minutes, text]) => {
      const px = Math.min(Math.max(x(now - minutes * 60), left + 20), left + plotW - 12);
      g.fillText(text, px, height - 4);
    });

    if (!points.length) {
      g.fillText("collecting: a point every 5 s", left + plotW / 2, top + plotH / 2);
    } else {
      g.strokeStyle = color;
      g.fillStyle = color;
      g.lineWidth = 1.5;
      g.beginPath();
      let previous = null;
      points.forEach((p, i) => {
        const px = x(p.time), py = y(values[i]);
        // a gap (the supervisor did not answer) breaks the line instead of bridging it
        if (previous === null || p.time - previous > 3 * p.seconds) g.moveTo(px, py); else g.lineTo(px, py);
        previous = p.time;
      });
      g.stroke();
      if (points.length < 30) {
        points.forEach((p, i) => { g.beginPath(); g.arc(x(p.time), y(values[i]), 2, 0, 2 * Math.PI); g.fill(); });
      }
    }
    const latest = values.length ? values[values.length - 1] : null;
    canvas.dataset.points = String(points.length);
    canvas.setAttribute("aria-label", latest === null ? `${unit}: no data yet` :
      `${unit} over the last 15 minutes: now ${latest.toFixed(2)}, peak ${Math.max(...values).toFixed(2)}`);
    return latest;
  }

  let lastThroughput = null;
  function renderThroughput(data) {
    lastThroughput = data;
    const now = data.now;
    const style = getComputedStyle(document.body);
    const objects = drawChart($("chart-objects"), data.points, now, (p) => p.objects_per_second,
      style.getPropertyValue("--objects").trim(), "objects per second");
    // One unit for the whole axis, chosen by the peak: a quiet night reads in kB/s, a busy day in MB/s.
    const peak = Math.max(0, ...data.points.map((p) => p.bytes_per_second));
    const [unit, scale] = peak >= 1e9 ? ["GB/s", 1e9] : peak >= 1e6 ? ["MB/s", 1e6] : ["kB/s", 1e3];
    const received = drawChart($("chart-bytes"), data.points, now, (p) => p.bytes_per_second / scale,
      style.getPropertyValue("--bytes").trim(), `received ${unit}`);
    $("bytes-unit").textContent = unit;
    $("objects-now").textContent = objects === undefined || objects === null ? "" : `now ${objects.toFixed(1)}`;
    $("bytes-now").textContent = received === undefined || received === null ? "" : `now ${received.toFixed(1)}`;
  }

  // ---- the journal (when the daemon keeps one) ----------------------------------------------
  function renderReceipts(data) {
    const items = data.receipts || [];
    syncRows($("receipts"), items, (r) => `${r.sop_instance_uid} ${r.received_at}`, (c, r) => {
      cell(c[0], clock(r.received_at));
      cell(c[1], r.calling_ae);
      cell(c[2], r.modality || "");
      cell(c[3], r.patient_id || "");
      cell(c[4], r.sop_instance_uid);
      cell(c[5], bytes(r.size), "num");
      cell(c[6], String(r.status));
    });
  }

  function renderStudies(data) {
    const items = data.studies || [];
    syncRows($("studies"), items, (st) => st.study_instance_uid, (c, st) => {
      cell(c[0], clock(st.last_received));
      cell(c[1], st.patient_id || "");
      cell(c[2], st.study_instance_uid);
      cell(c[3], (st.calling_aes || []).join(", "));
      cell(c[4], count(st.objects), "num");
      cell(c[5], bytes(st.bytes), "num");
      cell(c[6], st.ended ? "yes" : "no");
    });
  }

  // ---- the loops ----------------------------------------------------------------------------
  let journal = false;

  async function refresh() {
    try {
      const [status, associations] = await Promise.all([getJSON("/status"), getJSON("/associations")]);
      renderStatus(status);
      renderAssociations(associations);
      journal = Boolean(status.journal);
      $("receipts-section").hidden = !journal;
      $("studies-section").hidden = !journal;
      clearNotice();
      setConnection(true, `live · updated ${clockOf(new Date())}`);
    } catch (e) {
      if (e instanceof AuthNeeded) {
        setConnection(false, "waiting for the bearer token");
        showNotice("This API needs its bearer token to show anything.", true);
      } else {
        setConnection(false, `cannot reach storescpd (${e.message}); retrying`);
      }
    }
  }

  async function refreshThroughput() {
    try {
      renderThroughput(await getJSON("/throughput"));
    } catch (e) {
      // the status line already says why the API is out of reach
    }
  }

  async function refreshJournal() {
    if (!journal) return;
    try {
      const [receipts, studies] = await Promise.all([getJSON("/receipts?limit=10"), getJSON("/studies?limit=10")]);
      renderReceipts(receipts);
      renderStudies(studies);
    } catch (e) {
      // shown by the status line on the next poll if the API is gone
    }
  }

  function every(ms, task) {
    const run = async () => {
      if (!document.hidden && !tokenWanted) await task();
      setTimeout(run, ms);
    };
    run();
  }

  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  window.addEventListener("resize", () => { if (lastThroughput) renderThroughput(lastThroughput); });
  every(POLL_MS, refresh);
  every(THROUGHPUT_MS, refreshThroughput);
  every(JOURNAL_MS, refreshJournal);
})();
