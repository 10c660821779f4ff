// Scheduled jobs and cron schedules: delayed jobs waiting in PostgreSQL (run now, cancel) and each schedule with its
// next and last fire times, how often it fired and how many fire times it missed.
import { get, post, remove, withQuery } from "/console/api.js";
import { actionButton, ago, badge, el, link, page, table } from "/console/dom.js";

function jobActions(job, session, status, refresh) {
  if (session.role === "viewer") {
    return "";
  }
  // The list is read again after either outcome: a job another operator changed meanwhile leaves it.
  const act = (label, className, perform, done) =>
    actionButton(
      label,
      { className },
      async () => {
        try {
          await perform();
          status.textContent = `${done} ${job.id}`;
        } finally {
          await refresh();
        }
      },
      status,
    );
  const path = `/v1/scheduled/${encodeURIComponent(job.id)}`;
  return el(
    "span",
    { className: "buttons" },
    act("Run now", "run-now", () => post(`${path}/run`), "Due now:"),
    act("Cancel", "cancel danger", () => remove(path), "Cancelled"),
  );
}

export async function renderScheduled(main, session, route) {
  const type = route.params.get("type") ?? "";
  const status = el("p", { id: "scheduled-status", role: "status" });
  const jobsHolder = el("div");
  const refresh = async () => {
    const { jobs } = await get(withQuery("/v1/scheduled", { state: "pending", type, limit: "200" }));
    jobsHolder.replaceChildren(
      table(
        "scheduled-jobs",
        [
          ["Job", (job) => link(`#/jobs/${encodeURIComponent(job.id)}`, job.id)],
          ["Type", (job) => job.type],
          ["Due (UTC)", (job) => job.run_at.replace("T", " ").replace("Z", "")],
          ["Source", (job) => job.source],
          ["Correlation id", (job) => job.correlation_id ?? ""],
          ["", (job) => jobActions(job, session, status, refresh)],
        ],
        jobs,
        (job) => ({ dataset: { id: job.id } }),
      ),
    );
  };
  await refresh();
  const { schedules } = await get("/v1/schedules");
  page(
    main,
    "Scheduled",
    el("h2", {}, "Delayed jobs, earliest first"),
    status,
    jobsHolder,
    el("h2", {}, "Cron schedules"),
    table(
      "schedules",
      [
        ["Name", (schedule) => schedule.name],
        ["Cron", (schedule) => `${schedule.cron} (${schedule.timezone})`],
        ["Type", (schedule) => schedule.type],
        ["Next fire", (schedule) => schedule.next_fire_at ?? "never"],
        ["Last fire", (schedule) => ago(schedule.last_fire_at)],
        ["Fired", (schedule) => schedule.fired.toLocaleString("en")],
        ["Missed", (schedule) => (schedule.misfired ? badge(String(schedule.misfired), "failed") : "0")],
        ["On a miss", (schedule) => schedule.misfire.replace("_", " ")],
      ],
      schedules,
      (schedule) => ({ dataset: { name: schedule.name } }),
    ),
  );
}
