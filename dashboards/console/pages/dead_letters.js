// Dead letters: groups by error fingerprint, one group's letters, one letter (headers and payload), and the
// actions of the CLI's engine: a dry run, a replay with canaries, and a purge confirmed by typing its count.
import { get, post, withQuery } from "/console/api.js";
import {
  actionButton,
  ago,
  badge,
  confirmDialog,
  el,
  filterForm,
  link,
  page,
  queryField,
  table,
} from "/console/dom.js";

const filterNames = ["family", "type", "reason", "error", "fingerprint", "state"];

function filterOf(params) {
  return Object.fromEntries(filterNames.map((name) => [name, params.get(name) ?? ""]).filter(([, value]) => value));
}

function filters(params) {
  return filterForm(
    "dead-letter-filter",
    [
      queryField(params, "family", "Family", "payments"),
      queryField(params, "type", "Type"),
      queryField(params, "reason", "Reason"),
      queryField(params, "error", "Error contains"),
    ],
    "Filter",
    "#/dead-letters",
  );
}

async function replay(filter, status, refresh) {
  const dry = await post("/v1/dead-letters/replay", { filter, dry_run: true });
  status.textContent = `Dry run: ${dry.matched} would be replayed`;
  const canary = el("input", { type: "number", name: "canary", min: "0", value: "0", id: "canary" });
  const answer = await confirmDialog(
    "Replay",
    `Replay ${dry.matched} dead letters? With canaries, that many go ` +
      "first, and the rest only if they all succeed.",
    `Replay ${dry.matched}`,
    [el("label", {}, "Canaries ", canary)],
  );
  if (!answer) {
    return;
  }
  const body = { filter };
  if (Number(answer.canary) > 0) {
    body.canary = Number(answer.canary);
  }
  const outcome = await post("/v1/dead-letters/replay", body);
  status.textContent =
    `Replayed ${outcome.replayed} of ${outcome.matched}` + (outcome.error ? `: ${outcome.error}` : "");
  await refresh();
}

async function purge(filter, count, status, refresh) {
  const typed = el("input", {
    name: "typed",
    id: "purge-count",
    required: true,
    pattern: String(count),
    autocomplete: "off",
  });
  const answer = await confirmDialog(
    "Purge",
    `This deletes ${count} dead letters for good. Type ${count} to confirm.`,
    `Delete ${count}`,
    [el("label", {}, "Count ", typed)],
  );
  if (!answer) {
    return;
  }
  const outcome = await post("/v1/dead-letters/purge", { filter, expected: count });
  status.textContent = `Deleted ${outcome.deleted} dead letters`;
  await refresh();
}

function groupActions(group, filter, session, status, refresh) {
  const scoped = { ...filter, fingerprint: group.fingerprint };
  const buttons = [];
  if (session.role !== "viewer") {
    buttons.push(actionButton("Replay…", { className: "replay" }, () => replay(scoped, status, refresh), status));
  }
  if (session.role === "admin") {
    buttons.push(
      actionButton("Purge…", { className: "purge danger" }, () => purge(scoped, group.count, status, refresh), status),
    );
  }
  return el("span", { className: "buttons" }, buttons);
}

async function renderGroups(main, session, params) {
  const filter = filterOf(params);
  const status = el("p", { id: "dead-letter-status", role: "status" });
  const holder = el("div");
  const refresh = async () => {
    const { groups } = await get(withQuery("/v1/dead-letters/groups", filter));
    holder.replaceChildren(
      table(
        "dead-letter-groups",
        [
          ["Count", (group) => group.count.toLocaleString("en")],
          [
            "Error",
            (group) =>
              link(withQuery("#/dead-letters", { ...filter, fingerprint: group.fingerprint }), group.error_pattern),
          ],
          ["Types", (group) => group.types],
          ["First", (group) => ago(group.first_failed_at)],
          ["Last", (group) => ago(group.last_failed_at)],
          ["", (group) => groupActions(group, filter, session, status, refresh)],
        ],
        groups,
        (group) => ({ dataset: { fingerprint: group.fingerprint } }),
      ),
    );
  };
  await refresh();
  const content = [filters(params), status, holder];
  if (filter.fingerprint) {
    const { dead_letters: letters } = await get(withQuery("/v1/dead-letters", { ...filter, limit: "100" }));
    content.push(
      el("h2", {}, "Dead letters of this group"),
      table(
        "dead-letters",
        [
          ["Id", (letter) => link(`#/dead-letters/${letter.id}`, String(letter.id))],
          ["Job", (letter) => link(`#/jobs/${encodeURIComponent(letter.job_id)}`, letter.job_id)],
          ["Type", (letter) => letter.type],
          ["Reason", (letter) => letter.reason],
          ["Attempts", (letter) => letter.attempts],
          ["Failed", (letter) => ago(letter.failed_at)],
          ["Error", (letter) => letter.error],
        ],
        letters,
      ),
    );
  }
  page(main, "Dead letters", ...content);
}

async function renderLetter(main, id) {
  const letter = await get(`/v1/dead-letters/${encodeURIComponent(id)}`);
  const rows = [
    ["Job", link(`#/jobs/${encodeURIComponent(letter.job_id)}`, letter.job_id)],
    ["Type", letter.type],
    ["State", badge(letter.state)],
    ["Reason", letter.reason],
    ["Attempts", String(letter.attempts)],
    ["Failed at", letter.failed_at],
    ["Error", letter.error],
    ["Fingerprint", letter.fingerprint],
    ["Correlation id", letter.correlation_id ?? ""],
    ["Replayed", letter.replayed_at ? `${letter.replayed_at} by ${letter.replayed_by}` : ""],
  ];
  page(
    main,
    `Dead letter ${id}`,
    el(
      "dl",
      { className: "fields" },
      rows.map(([name, value]) => [el("dt", {}, name), el("dd", {}, value)]),
    ),
    el("h2", {}, "Payload"),
    el("pre", { id: "payload" }, JSON.stringify(letter.payload ?? letter.body_hex, null, 2)),
    el("h2", {}, "Headers"),
    el("pre", {}, JSON.stringify(letter.headers, null, 2)),
  );
}

export async function renderDeadLetters(main, session, route) {
  if (route.segments.length) {
    await renderLetter(main, route.segments[0]);
  } else {
    await renderGroups(main, session, route.params);
  }
}
