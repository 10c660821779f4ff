// The audit log: who cancelled, paused, resumed, replayed, purged or applied flow limits, newest first, filtered by
// actor and action, a page at a time.
import { get, withQuery } from "/console/api.js";
import { el, filterForm, link, page, queryChoice, queryField, table } from "/console/dom.js";

const actions = ["", "cancel", "pause", "resume", "replay", "purge", "apply_flow_limits"];

function jobs(entry) {
  if (entry.job_count === 0) {
    return "";
  }
  if (entry.action === "cancel") {
    return link(`#/jobs/${encodeURIComponent(entry.target)}`, entry.target);
  }
  return `${entry.job_count} jobs`;
}

function details(entry) {
  const shown = { ...entry.details };
  return Object.keys(shown).length ? JSON.stringify(shown) : "";
}

export async function renderAudit(main, session, route) {
  const params = route.params;
  const form = filterForm(
    "audit-filter",
    [queryField(params, "actor", "Actor"), queryChoice(params, "action", "Action", actions)],
    "Filter",
    "#/audit",
  );
  const { entries, next_before: nextBefore } = await get(
    withQuery("/v1/audit", {
      actor: params.get("actor") ?? "",
      action: params.get("action") ?? "",
      before: params.get("before") ?? "",
      limit: "50",
    }),
  );
  const older = nextBefore
    ? link(
        withQuery("#/audit", {
          actor: params.get("actor") ?? "",
          action: params.get("action") ?? "",
          before: nextBefore,
        }),
        "Older entries",
      )
    : "";
  page(
    main,
    "Audit log",
    form,
    table(
      "audit",
      [
        ["When (UTC)", (entry) => entry.at.replace("T", " ").replace("Z", "")],
        ["Actor", (entry) => entry.actor],
        ["Action", (entry) => entry.action],
        ["Target", (entry) => entry.target],
        ["Jobs", jobs],
        ["Details", details],
      ],
      entries,
      (entry) => ({ dataset: { action: entry.action } }),
    ),
    el("p", {}, older),
  );
}
