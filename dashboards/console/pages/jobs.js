// Jobs: search the history (by id, type, state, queue, correlation id, time), one job's page (every attempt, its
// payload where a dead letter keeps it, who changed it, cancel and retry), and a correlation id's saga as a timeline.
import { ApiError, get, post, remove, withQuery } from "/console/api.js";
import {
  actionButton,
  ago,
  badge,
  el,
  filterForm,
  link,
  milliseconds,
  page,
  queryChoice,
  queryField,
  table,
} from "/console/dom.js";

const states = ["", "running", "succeeded", "retrying", "dead_lettered", "cancelled", "deduplicated"];
const ended = new Set(["succeeded", "dead_lettered", "cancelled", "deduplicated"]);
const filterNames = ["type", "state", "queue", "correlation_id", "since"];

const jobLink = (id) => link(`#/jobs/${encodeURIComponent(id)}`, id);

function searchForm(params) {
  return filterForm(
    "job-search",
    [
      queryField(params, "id", "Job id"),
      queryField(params, "type", "Type", "payments.charge"),
      queryChoice(params, "state", "State", states),
      queryField(params, "queue", "Queue", "conveyor.payments"),
      queryField(params, "correlation_id", "Correlation id"),
      queryField(params, "since", "Since", "24 hours"),
    ],
    "Search",
    "#/jobs",
    (values) => {
      location.hash = values.id ? `#/jobs/${encodeURIComponent(values.id.trim())}` : withQuery("#/jobs", values);
    },
  );
}

/// A correlation id's jobs in the order they were enqueued: an order's saga, step by step.
function timeline(jobs) {
  const steps = [...jobs].sort((a, b) => (a.enqueued_at ?? a.updated_at).localeCompare(b.enqueued_at ?? b.updated_at));
  return el(
    "ol",
    { id: "timeline", className: "timeline" },
    steps.map((job) =>
      el(
        "li",
        { dataset: { type: job.type } },
        el("span", { className: "muted" }, (job.enqueued_at ?? job.updated_at).slice(11, 23)),
        " ",
        el("strong", {}, job.type),
        " ",
        badge(job.state),
        " ",
        jobLink(job.id),
      ),
    ),
  );
}

async function renderList(main, params) {
  const filter = Object.fromEntries(filterNames.map((name) => [name, params.get(name) ?? ""]));
  const { jobs, next } = await get(withQuery("/v1/jobs", { ...filter, after: params.get("after") ?? "", limit: "50" }));
  const content = [searchForm(params)];
  if (filter.correlation_id) {
    content.push(el("h2", {}, `Saga ${filter.correlation_id}`), timeline(jobs));
  }
  content.push(
    table(
      "jobs",
      [
        ["Id", (job) => jobLink(job.id)],
        ["Type", (job) => job.type],
        ["State", (job) => badge(job.state)],
        ["Queue", (job) => job.queue],
        ["Updated", (job) => ago(job.updated_at)],
        ["Progress", (job) => (job.progress ? `${Math.round(job.progress.fraction * 100)}%` : "")],
      ],
      jobs,
      (job) => ({ dataset: { id: job.id } }),
    ),
  );
  if (next) {
    content.push(el("p", {}, link(withQuery("#/jobs", { ...filter, after: next }), "Older jobs")));
  }
  page(main, "Jobs", ...content);
}

async function deadLetterOf(id) {
  const { dead_letters: letters } = await get(withQuery("/v1/dead-letters", { job_id: id, state: "all", limit: "1" }));
  return letters.length ? get(`/v1/dead-letters/${letters[0].id}`) : null;
}

function actions(job, session, status, rerender) {
  if (session.role === "viewer") {
    return [];
  }
  const act = (label, id, perform) => actionButton(label, { id }, async () => rerender(await perform()), status);
  const buttons = [];
  if (!ended.has(job.state)) {
    buttons.push(
      act("Cancel", "cancel-job", async () => {
        const outcome = await remove(`/v1/jobs/${encodeURIComponent(job.id)}`);
        return `Cancel requested: ${outcome.state ?? "cancelling"}`;
      }),
    );
  }
  if (job.state === "dead_lettered") {
    buttons.push(
      act("Retry", "retry-job", async () => {
        const outcome = await post("/v1/dead-letters/replay", { filter: { job_id: job.id } });
        return `Replayed ${outcome.replayed} of ${outcome.matched}`;
      }),
    );
  }
  return buttons;
}

function fields(job) {
  const rows = [
    ["Type", job.type],
    ["Queue", job.queue],
    ["State", badge(job.state)],
    ["Enqueued", job.enqueued_at ?? ""],
    ["Updated", job.updated_at],
    [
      "Correlation id",
      job.correlation_id
        ? link(withQuery("#/jobs", { correlation_id: job.correlation_id, since: "7 days" }), job.correlation_id)
        : "",
    ],
    ["Trace id", job.trace_id ?? ""],
    ["Progress", job.progress ? `${Math.round(job.progress.fraction * 100)}% ${job.progress.note ?? ""}` : ""],
  ];
  return el(
    "dl",
    { className: "fields" },
    rows.map(([name, value]) => [el("dt", {}, name), el("dd", {}, value)]),
  );
}

async function renderJob(main, session, id, message = "") {
  let job;
  try {
    job = await get(`/v1/jobs/${encodeURIComponent(id)}`);
  } catch (failure) {
    if (failure instanceof ApiError && failure.status === 404) {
      page(main, `Job ${id}`, el("p", { className: "error" }, failure.message), searchForm(new URLSearchParams()));
      return;
    }
    throw failure;
  }
  const status = el("p", { id: "job-status", role: "status" }, message);
  const letter = job.state === "dead_lettered" || job.state === "retrying" ? await deadLetterOf(id) : null;
  page(
    main,
    `Job ${id}`,
    fields(job),
    el(
      "div",
      { className: "buttons" },
      actions(job, session, status, (shown) => renderJob(main, session, id, shown)),
    ),
    status,
    el("h2", {}, "Attempts"),
    table(
      "attempts",
      [
        ["#", (attempt) => attempt.attempt],
        ["State", (attempt) => badge(attempt.state)],
        ["Worker", (attempt) => attempt.worker],
        ["Started", (attempt) => attempt.started_at],
        ["Duration", (attempt) => milliseconds(attempt.duration_ms)],
        ["Error", (attempt) => attempt.error ?? ""],
      ],
      job.attempts,
    ),
    letter
      ? [
          el("h2", {}, "Payload (from its dead letter)"),
          el("pre", { id: "payload" }, JSON.stringify(letter.payload ?? letter.body_hex, null, 2)),
        ]
      : [],
    el("h2", {}, "Audit"),
    table(
      "job-audit",
      [
        ["When (UTC)", (entry) => entry.at],
        ["Actor", (entry) => entry.actor],
        ["Action", (entry) => entry.action],
        ["Target", (entry) => entry.target],
      ],
      job.audit ?? [],
    ),
  );
}

export async function renderJobs(main, session, route) {
  if (route.segments.length) {
    await renderJob(main, session, route.segments.join("/"));
  } else {
    await renderList(main, route.params);
  }
}
