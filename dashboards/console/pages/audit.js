// The audit log: who cancelled, paused, resumed, replayed, purged or applied flow limits, newest first, filtered by
// actor and action, a page at a time.
import { get, withQuery } from "/console/api.js";
import { el, link, page, table } from "/console/dom.js";

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
  const form = el(
    "form",
    { id: "audit-filter", className: "filters" },
    el("label", {}, "Actor ", el("input", { name: "actor", value: params.get("actor") ?? "" })),
    el(
      "label",
      {},
      "Action ",
      el(
        "select",
        { name: "action" },
        actions.map((action) =>
          el("option", { value: action, selected: action === (params.get("action") ?? "") }, action || "any"),
        ),
      ),
    ),
    el("button", { type: "submit" }, "Filter"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const values = Object.fromEntries(new FormData(form));
    location.hash = withQuery("#/audit", values);
  });
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
