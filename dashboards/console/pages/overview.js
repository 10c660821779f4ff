// Overview, live: the last hour per queue (jobs per minute, failures, p95 duration and queue wait), what waits in
// the broker, the workers running and their load, dead letters and scheduled jobs. From the database and the
// broker, so it works without Prometheus. Refreshed every 5 s.
import { get } from "/console/api.js";
import { ago, badge, el, every, link, milliseconds, page, table } from "/console/dom.js";

const svgNs = "http://www.w3.org/2000/svg";

function svg(tag, attributes) {
  const node = document.createElementNS(svgNs, tag);
  for (const [name, value] of Object.entries(attributes)) {
    node.setAttribute(name, value);
  }
  return node;
}

/// Jobs per minute over the window as bars: succeeded in the accent colour, failed in red on top.
function chart(minutes, windowMinutes) {
  const width = 240;
  const height = 40;
  const slot = width / windowMinutes;
  const now = Date.now();
  const peak = Math.max(1, ...minutes.map((minute) => minute.succeeded + minute.failed));
  const picture = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, class: "chart", role: "img" });
  for (const minute of minutes) {
    const age = Math.floor((now - Date.parse(minute.minute)) / 60000);
    const x = width - (age + 1) * slot;
    const ok = (minute.succeeded / peak) * height;
    const bad = (minute.failed / peak) * height;
    picture.append(
      svg("rect", { x, y: height - ok, width: Math.max(1, slot - 1), height: ok, class: "ok" }),
      svg("rect", { x, y: height - ok - bad, width: Math.max(1, slot - 1), height: bad, class: "failed" }),
    );
  }
  const total = minutes.reduce((sum, minute) => sum + minute.succeeded, 0);
  picture.append(
    Object.assign(svg("title", {}), { textContent: `${total} succeeded in the last ${windowMinutes} min` }),
  );
  return picture;
}

function card(id, label, value, href) {
  return el(
    "a",
    { className: "card stat", id, href },
    el("span", { className: "value" }, value),
    el("span", {}, label),
  );
}

/// Circuits a running worker holds open (or half-open, trying one call): the outside services it stopped calling.
function breakersCard(open) {
  const circuits = [...new Set(open.map((breaker) => `${breaker.circuit} (${breaker.state.replace("_", "-")})`))];
  const shown = card(
    "open-circuits",
    circuits.length ? `circuits not closed: ${circuits.join(", ")}` : "circuit breakers open",
    String(circuits.length),
    "#/workers",
  );
  shown.classList.toggle("alarm", circuits.length > 0);
  return shown;
}

/// Prometheus's alerts, firing first; or why there are none to show.
function alertsSection(prometheus) {
  if (prometheus === null) {
    return el("p", { className: "muted", id: "alerts" }, "Alerts: no Prometheus configured (CONVEYOR_PROMETHEUS_URL).");
  }
  if (prometheus.error) {
    return el("p", { className: "error", id: "alerts" }, `Alerts unavailable: ${prometheus.error}`);
  }
  const alerts = [...prometheus.alerts].sort((a, b) => (a.state === "firing" ? 0 : 1) - (b.state === "firing" ? 0 : 1));
  return table(
    "alerts",
    [
      ["Alert", (alert) => alert.name],
      ["Severity", (alert) => alert.severity ?? ""],
      ["State", (alert) => badge(alert.state, alert.state === "firing" ? "failed" : "paused")],
      ["Since", (alert) => ago(alert.active_at)],
      ["Summary", (alert) => alert.summary ?? ""],
    ],
    alerts,
    (alert) => ({ dataset: { name: alert.name, state: alert.state } }),
  );
}

export async function renderOverview(main, session, route, signal) {
  const cards = el("div", { className: "cards" });
  const holder = el("div");
  const alerts = el("div");
  const note = el("p", { className: "muted", id: "overview-note" });
  const refresh = async () => {
    const [overview, { queues: depths }] = await Promise.all([get("/v1/overview"), get("/v1/queues")]);
    const { workers } = overview;
    cards.replaceChildren(
      card(
        "workers-running",
        "workers running" +
          (workers.needed !== null ? `, ${workers.needed} needed` : "") +
          (workers.gone ? `, ${workers.gone} gone` : ""),
        String(workers.running),
        "#/workers",
      ),
      card("in-flight", "jobs in flight", `${workers.in_flight} / ${workers.concurrency}`, "#/workers"),
      breakersCard(workers.open_circuit_breakers),
      card("dead-letters", "dead letters", overview.dead_letters.toLocaleString("en"), "#/dead-letters"),
      card("scheduled", "scheduled jobs", overview.scheduled.toLocaleString("en"), "#/scheduled"),
    );
    const activity = new Map(overview.queues.map((queue) => [queue.queue, queue]));
    const rows = depths.map((depth) => ({ ...depth, ...(activity.get(depth.queue) ?? { minutes: [] }) }));
    holder.replaceChildren(
      table(
        "overview-queues",
        [
          ["Queue", (queue) => link(`#/jobs?queue=${encodeURIComponent(queue.queue)}`, queue.queue)],
          [`Last ${overview.window_minutes} min`, (queue) => chart(queue.minutes, overview.window_minutes)],
          ["Succeeded", (queue) => (queue.succeeded ?? 0).toLocaleString("en")],
          ["Failed", (queue) => (queue.failed ?? 0).toLocaleString("en")],
          ["Retried", (queue) => (queue.retried ?? 0).toLocaleString("en")],
          ["p95 duration", (queue) => milliseconds(queue.p95_duration_ms)],
          ["p95 wait", (queue) => milliseconds(queue.p95_wait_ms)],
          ["Waiting", (queue) => queue.messages ?? "–"],
          ["Paused", (queue) => (queue.paused ? "yes" : "")],
        ],
        rows,
        (queue) => ({ dataset: { queue: queue.queue } }),
      ),
    );
    alerts.replaceChildren(alertsSection(overview.prometheus));
    note.textContent = `Updated ${new Date().toLocaleTimeString("en-GB")}`;
  };
  await refresh();
  page(main, "Overview", cards, holder, el("h2", {}, "Alerts"), alerts, note);
  every(5000, signal, refresh, (failure) => {
    note.textContent = failure.message;
  });
}
