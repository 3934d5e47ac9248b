// The dashboard: every second, read /metrics (Prometheus text, summed over all workers) and
// /dashboard/status.json, keep five minutes of samples, and show totals, rates and ratios from their deltas.
// hit_ratio is the service's own (/metrics/cache): reads answered without the database (lru, redis, negative,
// bloom) over all reads; the item ratio and the 404s answered without the DB are shown beside it.
"use strict";

(() => {
  const TIERS = ["lru", "redis", "db", "negative", "bloom"];
  const HIT_TIERS = ["lru", "redis", "negative", "bloom"];
  const WINDOW_MS = 5 * 60 * 1000; // the hit ratio's window and the chart's width
  const RATE_MS = 10 * 1000; // "per second" figures: over the last ten seconds
  const LAG_MS = 60 * 1000; // invalidation lag: over the last minute
  const REFRESH_MS = 1000;
  const history = []; // samples, oldest first
  let status = null; // the last /dashboard/status.json
  const byId = (id) => document.getElementById(id);
  const number = new Intl.NumberFormat("en-US");

  // Prometheus text format: `name{label="value",...} value`; comments and blank lines skipped.
  function parseMetrics(text) {
    const samples = [];
    for (const line of text.split("\n")) {
      if (line === "" || line.startsWith("#")) continue;
      const match = /^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
      if (!match) continue;
      const labels = {};
      for (const pair of (match[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
      samples.push({ name: match[1], labels, value: Number(match[3]) });
    }
    return samples;
  }

  // The sum of every series of `name` whose labels include `want`; null when there is none.
  function total(samples, name, want = {}) {
    let sum = null;
    for (const s of samples) {
      if (s.name !== name) continue;
      if (Object.entries(want).some(([k, v]) => s.labels[k] !== v)) continue;
      sum = (sum ?? 0) + s.value;
    }
    return sum;
  }

  function sampleOf(samples, t) {
    const reads = {};
    for (const tier of TIERS) reads[tier] = total(samples, "cache_requests_total", { tier }) ?? 0;
    const buckets = new Map();
    for (const s of samples) {
      if (s.name === "cache_invalidation_lag_seconds_bucket") {
        buckets.set(s.labels.le, (buckets.get(s.labels.le) ?? 0) + s.value);
      }
    }
    return {
      t,
      reads,
      dbLoads: total(samples, "cache_db_loads_total") ?? 0,
      waits: total(samples, "cache_stampede_waits_total") ?? 0,
      applied: total(samples, "cache_invalidations_total", { result: "applied" }) ?? 0,
      lagSum: total(samples, "cache_invalidation_lag_seconds_sum") ?? 0,
      lagCount: total(samples, "cache_invalidation_lag_seconds_count") ?? 0,
      buckets,
      l1: total(samples, "cache_l1_entries"),
      breaker: total(samples, "cache_circuit_open"),
      listener: total(samples, "cache_listener_subscribed"),
      redisErrors: total(samples, "cache_redis_errors_total") ?? 0,
      catchingUp: total(samples, "cache_redis_catching_up"),
      changelogLag: total(samples, "cache_changelog_lag_seconds"),
    };
  }

  const sum = (reads, tiers) => tiers.reduce((acc, tier) => acc + reads[tier], 0);
  const readsOf = (sample) => sum(sample.reads, TIERS);

  // The oldest kept sample no older than `ms` before the newest one.
  function since(ms) {
    const newest = history[history.length - 1];
    return history.find((s) => s.t >= newest.t - ms) ?? newest;
  }

  function delta(from, to, pick) {
    return pick(to) - pick(from);
  }

  const percent = (part, whole) => (whole > 0 ? `${((100 * part) / whole).toFixed(1)}%` : "\u2014");

  function seconds(ms) {
    return ms >= 60000 ? `${Math.round(ms / 60000)} min` : `${Math.round(ms / 1000)} s`;
  }

  function duration(s) {
    if (s === null || !Number.isFinite(s)) return "\u2014";
    const ms = s * 1000;
    if (ms >= 1000) return `${s.toFixed(2)} s`;
    return `${ms.toFixed(ms < 10 ? 2 : ms < 100 ? 1 : 0)} ms`;
  }

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
  }

  function show(id, text, value = text, tone = "") {
    const el = byId(id);
    el.textContent = text;
    el.dataset.value = value === null ? "" : String(value);
    el.classList.remove("ok", "bad", "warn");
    if (tone) el.classList.add(tone);
  }

  function renderRatio(newest) {
    const first = since(WINDOW_MS);
    const d = (tiers) => delta(first, newest, (s) => sum(s.reads, tiers));
    const reads = d(TIERS);
    const span = newest.t - first.t;
    byId("window").textContent = span >= WINDOW_MS - REFRESH_MS ? "last 5 minutes" : `last ${seconds(span)}`;
    show("hit-ratio", reads > 0 ? percent(d(HIT_TIERS), reads) : "no reads yet", reads > 0 ? d(HIT_TIERS) / reads : null);
    show("item-hit-ratio", percent(d(["lru", "redis"]), d(["lru", "redis", "db"])));
    const absent = d(["negative", "bloom"]);
    show("absent", `${number.format(absent)} (${percent(absent, reads)} of reads)`, absent);
    show("hit-ratio-total", percent(sum(newest.reads, HIT_TIERS), readsOf(newest)));
  }

  function renderTiers(newest) {
    const first = since(WINDOW_MS);
    const recent = since(RATE_MS);
    const windowReads = delta(first, newest, readsOf);
    const rows = byId("tiers");
    if (!rows.children.length) {
      for (const tier of TIERS) {
        const row = rows.insertRow();
        row.insertCell().innerHTML = `<span class="${tier}">${tier}</span>`;
        row.insertCell().id = `reads-${tier}-total`;
        row.insertCell().id = `reads-${tier}-rate`;
        const bar = document.createElement("div");
        bar.className = `bar ${tier}`;
        bar.id = `reads-${tier}-bar`;
        row.insertCell().append(bar);
      }
    }
    for (const tier of TIERS) {
      const n = newest.reads[tier];
      show(`reads-${tier}-total`, number.format(n), n);
      const rate = perSecond(recent, newest, (s) => s.reads[tier]);
      show(`reads-${tier}-rate`, rate === null ? "\u2014" : rate.toFixed(1), rate);
      const share = windowReads > 0 ? delta(first, newest, (s) => s.reads[tier]) / windowReads : 0;
      byId(`reads-${tier}-bar`).style.width = `${(100 * share).toFixed(1)}%`; // CSSOM: allowed by the CSP
    }
  }

  function perSecond(from, to, pick) {
    const ms = to.t - from.t;
    return ms > 0 ? (1000 * delta(from, to, pick)) / ms : null;
  }

  // The smallest bucket bound under which `q` of the window's observations fell.
  function quantile(from, to, q) {
    const count = to.lagCount - from.lagCount;
    if (count <= 0) return null;
    const bounds = [...to.buckets.keys()].sort((a, b) => Number(a) - Number(b));
    for (const le of bounds) {
      if ((to.buckets.get(le) ?? 0) - (from.buckets.get(le) ?? 0) >= q * count) return Number(le);
    }
    return null;
  }

  function renderDatabase(newest) {
    show("db-loads", number.format(newest.dbLoads), newest.dbLoads);
    const rate = perSecond(since(RATE_MS), newest, (s) => s.dbLoads);
    show("db-loads-rate", rate === null ? "\u2014" : rate.toFixed(1), rate);
    show("stampede-waits", number.format(newest.waits), newest.waits);
  }

  function renderInvalidation(newest) {
    const first = since(LAG_MS);
    show("invalidations", number.format(newest.applied), newest.applied);
    const count = newest.lagCount - first.lagCount;
    const mean = count > 0 ? (newest.lagSum - first.lagSum) / count : null;
    show("lag-mean", count > 0 ? duration(mean) : "no writes", mean);
    const p99 = quantile(first, newest, 0.99);
    show("lag-p99", p99 === null ? "\u2014" : `\u2264 ${duration(p99)}`, p99);
    const behind = newest.changelogLag;
    if (behind === null) show("changelog-lag", "\u2014", null);
    // Under a second: the follower's own polling, not a backlog.
    else show("changelog-lag", behind < 1 ? "caught up" : `behind by ${duration(behind)}`, behind, behind > 5 ? "warn" : "");
  }

  function renderRedis(newest) {
    if (newest.breaker === null) show("breaker", "\u2014", null);
    else if (newest.breaker > 0) show("breaker", "open: reads go to the DB", 1, "bad");
    else show("breaker", "closed", 0, "ok");
    if (newest.listener === null) show("listener", "\u2014", null);
    else if (newest.listener > 0) show("listener", "subscribed", 1, "ok");
    else show("listener", "not subscribed: L1 bypassed", 0, "warn");
    show("redis-errors", number.format(newest.redisErrors), newest.redisErrors, newest.redisErrors ? "warn" : "");
    if (newest.catchingUp === null) show("catching-up", "\u2014", null);
    else if (newest.catchingUp > 0) show("catching-up", "yes: reads go to the DB", 1, "warn");
    else show("catching-up", "no", 0, "ok");
    const redis = status?.redis;
    if (!redis) show("redis-memory", "unknown", null);
    else if (redis.error) show("redis-memory", `unavailable (${redis.error})`, null, "bad");
    else if (redis.embedded) show("redis-memory", "embedded: not reported", null);
    else if (typeof redis.used_memory === "number") {
      const limit = redis.maxmemory ? ` of ${bytes(redis.maxmemory)}, ${redis.maxmemory_policy}` : "";
      show("redis-memory", `${bytes(redis.used_memory)}${limit}`, redis.used_memory);
    } else show("redis-memory", redis.used_memory_human ?? "unknown", null);
  }

  function renderL1(newest) {
    const entries = newest.l1;
    show("l1-entries", entries === null ? "\u2014" : number.format(entries), entries);
    const perWorker = status?.l1?.capacity_per_worker;
    const capacity = perWorker && status.workers ? perWorker * status.workers : null;
    show(
      "l1-capacity",
      capacity ? `${status.workers} \u00d7 ${number.format(perWorker)}` : "\u2014",
      capacity,
    );
    byId("l1-fill").style.width = capacity && entries ? `${Math.min(100, (100 * entries) / capacity)}%` : "0";
  }

  // Per refresh interval: reads per second by tier, and the hit ratio of that interval's reads.
  function intervalsOf(samples) {
    const intervals = [];
    for (let i = 1; i < samples.length; i += 1) {
      const [a, b] = [samples[i - 1], samples[i]];
      const rates = TIERS.map((tier) => (1000 * (b.reads[tier] - a.reads[tier])) / (b.t - a.t));
      const reads = readsOf(b) - readsOf(a);
      const ratio = reads > 0 ? (sum(b.reads, HIT_TIERS) - sum(a.reads, HIT_TIERS)) / reads : null;
      intervals.push({ from: a.t, to: b.t, rates, ratio });
    }
    return intervals;
  }

  function drawChart() {
    const canvas = byId("chart");
    const scale = window.devicePixelRatio || 1;
    const [width, height] = [canvas.clientWidth, canvas.clientHeight];
    canvas.width = Math.round(width * scale);
    canvas.height = Math.round(height * scale);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(scale, 0, 0, scale, 0, 0);
    const css = getComputedStyle(document.documentElement);
    const plot = { left: 48, top: 8, width: width - 92, height: height - 28, colour: (name) => css.getPropertyValue(`--${name}`).trim() };
    const newest = history[history.length - 1];
    // Five minutes once there are five minutes of samples; until then, the whole minutes there are.
    const spanMs = Math.min(WINDOW_MS, Math.max(60000, Math.ceil((newest.t - history[0].t) / 60000) * 60000));
    byId("chart-window").textContent = `last ${seconds(spanMs)}`;
    const intervals = intervalsOf(history);
    const top = niceCeiling(Math.max(1, ...intervals.map((iv) => iv.rates.reduce((p, r) => p + r, 0))));
    plot.x = (t) => plot.left + plot.width * (1 - (newest.t - t) / spanMs);
    plot.y = (fraction) => plot.top + plot.height * (1 - fraction);
    drawGrid(ctx, plot, top, newest.t, spanMs);
    ctx.save();
    ctx.beginPath();
    ctx.rect(plot.left, 0, plot.width, height);
    ctx.clip(); // a sample just older than the window stays out of the axis labels
    drawBars(ctx, plot, intervals, top);
    drawRatio(ctx, plot, intervals);
    ctx.restore();
  }

  function drawGrid(ctx, plot, top, now, spanMs) {
    ctx.font = "11px system-ui, sans-serif";
    ctx.strokeStyle = plot.colour("line");
    ctx.fillStyle = plot.colour("muted");
    ctx.lineWidth = 1;
    const right = plot.left + plot.width;
    for (let k = 0; k <= 4; k += 1) {
      const py = Math.round(plot.y(k / 4)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(plot.left, py);
      ctx.lineTo(right, py);
      ctx.stroke();
      ctx.textAlign = "right";
      ctx.fillText(`${number.format((top * k) / 4)}/s`, plot.left - 6, py + 4);
      ctx.textAlign = "left";
      ctx.fillText(`${25 * k}%`, right + 6, py + 4);
    }
    ctx.textAlign = "center";
    const tickMs = spanMs > 60000 ? 60000 : 10000;
    for (let ago = 0; ago <= spanMs; ago += tickMs) {
      ctx.fillText(ago ? `-${seconds(ago)}` : "now", plot.x(now - ago), plot.top + plot.height + 15);
    }
  }

  function drawBars(ctx, plot, intervals, top) {
    for (const iv of intervals) {
      let base = 0;
      iv.rates.forEach((rate, i) => {
        if (rate <= 0) return;
        ctx.fillStyle = plot.colour(TIERS[i]);
        const [y0, y1] = [plot.y(base / top), plot.y((base + rate) / top)];
        ctx.fillRect(plot.x(iv.from), y1, Math.max(1, plot.x(iv.to) - plot.x(iv.from) - 1), y0 - y1);
        base += rate;
      });
    }
  }

  function drawRatio(ctx, plot, intervals) {
    ctx.strokeStyle = plot.colour("ratio");
    ctx.lineWidth = 2;
    ctx.beginPath();
    let drawing = false;
    for (const iv of intervals) {
      if (iv.ratio === null) {
        drawing = false; // no reads in this interval: a gap, not a fall to 0
        continue;
      }
      if (drawing) ctx.lineTo(plot.x(iv.to), plot.y(iv.ratio));
      else ctx.moveTo(plot.x(iv.to), plot.y(iv.ratio));
      drawing = true;
    }
    ctx.stroke();
  }

  function niceCeiling(value) {
    const magnitude = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * magnitude) return step * magnitude;
    return 10 * magnitude;
  }

  function renderLegend() {
    const legend = byId("legend");
    for (const name of [...TIERS, "ratio"]) {
      const swatch = document.createElement("span");
      swatch.className = `swatch ${name}`;
      legend.append(swatch, name === "ratio" ? "hit ratio (right axis)" : name);
    }
  }

  function setStatus(state, text) {
    const el = byId("status");
    el.dataset.state = state;
    el.textContent = text;
    document.body.classList.toggle("stale", state === "error");
  }

  // With METRICS_TOKEN set, open the page as /dashboard#token=<METRICS_TOKEN>: a fragment is never sent to a server.
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  const headers = token ? { Authorization: `Bearer ${token}` } : {};

  async function fetchText(path) {
    const response = await fetch(path, { cache: "no-store", headers });
    if (response.status === 401) throw new Error(`${path}: HTTP 401, open /dashboard#token=<METRICS_TOKEN>`);
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
    return response.text();
  }

  async function refresh() {
    const [metrics, statusText] = await Promise.allSettled([fetchText("/metrics"), fetchText("/dashboard/status.json")]);
    if (statusText.status === "fulfilled") status = JSON.parse(statusText.value);
    else status = null;
    if (metrics.status === "rejected") {
      setStatus("error", `metrics unavailable (${metrics.reason.message}); showing the last figures`);
      return;
    }
    const sample = sampleOf(parseMetrics(metrics.value), Date.now());
    const last = history[history.length - 1];
    if (last && TIERS.some((tier) => sample.reads[tier] < last.reads[tier])) history.length = 0; // a restart
    history.push(sample);
    while (history[0].t < sample.t - WINDOW_MS - REFRESH_MS) history.shift();
    renderRatio(sample);
    renderTiers(sample);
    renderDatabase(sample);
    renderInvalidation(sample);
    renderRedis(sample);
    renderL1(sample);
    drawChart();
    const workers = status ? `${status.workers} workers, ` : "";
    setStatus("ok", `${workers}updated ${new Date(sample.t).toLocaleTimeString("en-GB")}`);
  }

  async function loop() {
    try {
      await refresh();
    } catch (error) {
      setStatus("error", `refresh failed: ${error.message}`);
      console.error(error); // a bug: fetch failures are handled in refresh(), not here
    }
    setTimeout(loop, REFRESH_MS);
  }

  renderLegend();
  loop();
})();
