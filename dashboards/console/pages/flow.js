// Batches and flow control: each recent batch's progress, the flow limits in force (their version, who applied
// them) and what they hold back now (jobs in the waiting lines per type, over how many keys, since when).
import { get } from "/console/api.js";
import { ago, badge, el, page, table } from "/console/dom.js";

function progress(batch) {
  const fraction = batch.total > 0 ? batch.ended / batch.total : 0;
  return el(
    "span",
    { className: "progress" },
    el("progress", { max: "1", value: String(fraction) }),
    ` ${batch.ended.toLocaleString("en")} of ${batch.total.toLocaleString("en")}`,
  );
}

function outcomes(batch) {
  const counts = batch.ended_by_state;
  return `${counts.succeeded} succeeded, ${counts.dead_lettered} dead-lettered, ${counts.cancelled} cancelled`;
}

function limitsText(settings) {
  const parts = [];
  if (settings.concurrency) {
    parts.push(`${settings.concurrency.limit} at once per ${settings.concurrency.key}`);
  }
  if (settings.rate) {
    const key = settings.rate.key ? ` per ${settings.rate.key}` : "";
    parts.push(`${settings.rate.per_second}/s, bursts of ${settings.rate.burst}${key}`);
  }
  return parts.join("; ");
}

export async function renderFlow(main) {
  const [{ batches }, flow] = await Promise.all([get("/v1/batches?limit=100"), get("/v1/flow")]);
  const limits = Object.entries(flow.limits.jobs).map(([type, settings]) => ({ type, settings }));
  const applied = flow.version
    ? `Version ${flow.version}, applied ${ago(flow.applied_at)} by ${flow.applied_by}`
    : "No flow limits applied (conveyor flow apply FILE)";
  page(
    main,
    "Batches and flow",
    el("h2", {}, "Batches"),
    table(
      "batches",
      [
        ["Batch", (batch) => batch.id],
        ["Description", (batch) => batch.description],
        ["State", (batch) => badge(batch.state)],
        ["Progress", progress],
        ["Ended", outcomes],
        ["Opened", (batch) => `${ago(batch.opened_at)} by ${batch.opened_by}`],
      ],
      batches,
      (batch) => ({ dataset: { id: batch.id, state: batch.state } }),
    ),
    el("h2", {}, "Flow limits in force"),
    el("p", { id: "flow-version", className: "muted" }, applied),
    table(
      "flow-limits",
      [
        ["Job type", (limit) => limit.type],
        ["Limits", (limit) => limitsText(limit.settings)],
      ],
      limits,
      (limit) => ({ dataset: { type: limit.type } }),
    ),
    el("h2", {}, "Held back now"),
    table(
      "held-back",
      [
        ["Job type", (held) => held.type],
        ["Limit", (held) => held.kind],
        ["Waiting", (held) => held.waiting.toLocaleString("en")],
        ["Keys", (held) => held.keys],
        ["Oldest waiting", (held) => ago(held.oldest_waiting_since)],
        ["Running", (held) => held.running ?? ""],
      ],
      flow.held_back,
      (held) => ({ dataset: { type: held.type, kind: held.kind } }),
    ),
  );
}
