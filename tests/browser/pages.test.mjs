// The console's pages in a real browser (see stack.mjs): the live overview, jobs (search, a job's page with cancel
// and retry, a saga's timeline), dead-letter groups (replay, purge confirmed by its count), workers and the audit
// log, each as the role that may use it, each screenshotted.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { conveyor, eventually, screenshots, sql, startStack } from "./stack.mjs";

const run = `browser-${Date.now()}`;
let stack;

const shot = (page, name) => page.screenshot({ path: path.join(screenshots, `${name}.png`), fullPage: true });

/// A diag.fail job that fails for good, once the archiver has stored its dead letter.
async function deadLettered(jobId) {
  conveyor("enqueue", "diag.fail", "--payload", '{"times": 9, "permanent": true}', "--job-id", jobId);
  await eventually(
    () => sql(`SELECT count(*) FROM conveyor.dead_letters WHERE job_id = '${jobId}' ` + "AND state = 'dead'") === "1",
    30_000,
    `the dead letter of ${jobId}`,
  );
}

before(async () => {
  sql("DELETE FROM conveyor.queue_pauses WHERE family = 'diag'");
  stack = await startStack({ schedulerPort: 19483, workerPort: 19484 });
});

after(async () => {
  await stack?.stop();
});

test("the overview counts what runs, live, without a reload", async () => {
  const { context, page, violations } = await stack.signedInPage("viewer", "vera");
  await page.goto(`${stack.origin}/console#/overview`);
  await page.waitForSelector("#overview-queues tr[data-queue='conveyor.diag']");
  const succeeded = async () =>
    Number(
      (await page.textContent("#overview-queues tr[data-queue='conveyor.diag'] td:nth-child(3)")).replaceAll(",", ""),
    );
  const before = await succeeded();
  conveyor("enqueue", "diag.noop", "--count", "40", "--no-progress");
  await eventually(async () => (await succeeded()) >= before + 40, 20_000, "the overview to count 40 more jobs");
  assert.match(await page.textContent("#workers-running"), /^\s*[1-9]/);
  assert.equal(
    (await page.locator("#overview-queues tr[data-queue='conveyor.diag'] svg.chart rect").count()) > 0,
    true,
  );
  // With the stack's Prometheus its alerts are a table; without one the overview says so.
  const alertsTag = await page.locator("#alerts").evaluate((node) => node.tagName);
  assert.equal(alertsTag, process.env.CONVEYOR_PROMETHEUS_URL ? "TABLE" : "P");
  await shot(page, "overview");
  assert.deepEqual(violations, []);
  await context.close();
});

test("an operator finds a dead-lettered job, reads its error and payload, retries it and sees who did", async () => {
  const jobId = `${run}-failing`;
  await deadLettered(jobId);
  const { context, page, violations } = await stack.signedInPage("operator", "olga");
  await page.goto(`${stack.origin}/console#/jobs?type=diag.fail&state=dead_lettered`);
  await page.click(`#jobs tr[data-id='${jobId}'] a`);
  await page.waitForSelector("#attempts");
  assert.match(await page.textContent("#attempts"), /permanent_failure: diag\.fail: failing attempt 1 of 9/);
  assert.deepEqual(JSON.parse(await page.textContent("#payload")), { times: 9, permanent: true });
  await shot(page, "job-dead-lettered");
  await page.click("#retry-job");
  await page.waitForSelector("#job-audit td:text('replay')");
  assert.match(await page.textContent("#job-audit"), /user:olga/);
  await eventually(
    () => sql(`SELECT count(*) FROM conveyor.dead_letters WHERE job_id = '${jobId}'`) === "2",
    30_000,
    "the retried job to run and fail again",
  );
  assert.deepEqual(violations, []);
  await context.close();
});

test("an operator cancels a scheduled job from its page; a viewer gets no buttons", async () => {
  const jobId = conveyor("enqueue", "diag.noop", "--in", "1h", "--no-progress");
  assert.match(jobId, /^[0-9a-f-]{36}$/);
  const viewer = await stack.signedInPage("viewer", "vera");
  await viewer.page.goto(`${stack.origin}/console#/jobs/${jobId}`);
  await viewer.page.waitForSelector("#attempts");
  assert.equal(await viewer.page.locator("#cancel-job").count(), 0);
  await viewer.context.close();

  const { context, page, violations } = await stack.signedInPage("operator", "olga");
  await page.goto(`${stack.origin}/console#/jobs/${jobId}`);
  await page.click("#cancel-job");
  await page.waitForSelector("#job-audit td:text('cancel')");
  assert.equal(sql(`SELECT state FROM conveyor.scheduled_jobs WHERE id = '${jobId}'`), "cancelled");
  await shot(page, "job-cancelled");
  assert.deepEqual(violations, []);
  await context.close();
});

test("a correlation id shows its saga as a timeline in enqueue order", async () => {
  const correlation = `${run}-order`;
  for (const [type, payload] of [
    ["diag.noop", "{}"],
    ["diag.sleep", '{"ms": 1}'],
    ["diag.noop", "{}"],
  ]) {
    conveyor("enqueue", type, "--payload", payload, "--correlation-id", correlation, "--no-progress");
  }
  const { context, page } = await stack.signedInPage("viewer", "vera");
  await eventually(
    async () => {
      await page.goto(`${stack.origin}/console#/jobs?correlation_id=${correlation}`);
      await page.reload();
      await page.waitForSelector("#jobs");
      return (await page.locator("#timeline li").count()) === 3;
    },
    20_000,
    "three steps in the timeline",
  );
  const types = await page.locator("#timeline li").evaluateAll((steps) => steps.map((step) => step.dataset.type));
  assert.deepEqual(types, ["diag.noop", "diag.sleep", "diag.noop"]);
  await shot(page, "saga-timeline");
  await context.close();
});

test("an admin purges a group of dead letters only by typing its count", async () => {
  sql("DELETE FROM conveyor.dead_letters WHERE type = 'diag.fail'");
  await Promise.all([1, 2, 3].map((n) => deadLettered(`${run}-purged-${n}`)));
  const { context, page, violations } = await stack.signedInPage("admin", "ada");
  await page.goto(`${stack.origin}/console#/dead-letters?type=diag.fail`);
  const group = page.locator("#dead-letter-groups tbody tr").first();
  assert.equal((await group.locator("td").first().textContent()).trim(), "3");
  await shot(page, "dead-letter-groups");
  await group.locator("button.purge").click();
  await page.fill("#purge-count", "2");
  await page.click("#confirm");
  assert.equal(await page.locator("dialog[open]").count(), 1, "a wrong count closed the dialog");
  assert.equal(sql("SELECT count(*) FROM conveyor.dead_letters WHERE type = 'diag.fail'"), "3");
  await page.fill("#purge-count", "3");
  await page.click("#confirm");
  await page.waitForSelector("#dead-letter-status:text('Deleted 3 dead letters')");
  assert.equal(sql("SELECT count(*) FROM conveyor.dead_letters WHERE type = 'diag.fail'"), "0");
  assert.equal(
    sql(
      "SELECT actor || ' ' || (details->>'count') FROM conveyor.audit_log WHERE action = 'purge' " +
        "ORDER BY id DESC LIMIT 1",
    ),
    "api:user:ada 3",
  );
  assert.deepEqual(violations, []);
  await context.close();
});

test("an operator dry-runs and replays a dead-letter group after a fix and watches its jobs succeed", async () => {
  // The "bug": a worker that gives diag.fail one attempt. Its jobs fail once and are dead-lettered.
  await stack.restartWorker(["--retry", "diag.fail=attempts:1"]);
  const ids = [1, 2, 3, 4, 5].map((n) => `${run}-fixed-${n}`);
  for (const id of ids) {
    conveyor("enqueue", "diag.fail", "--payload", '{"times": 1}', "--job-id", id, "--no-progress");
  }
  const dead = () =>
    sql(`SELECT count(*) FROM conveyor.dead_letters WHERE job_id LIKE '${run}-fixed-%' AND state = 'dead'`);
  await eventually(() => dead() === "5", 30_000, "five dead letters");
  // The fix: a worker that retries them.
  await stack.restartWorker(["--retry", "diag.fail=attempts:3,base:100ms"]);

  const viewer = await stack.signedInPage("viewer", "vera");
  await viewer.page.goto(`${stack.origin}/console#/dead-letters?type=diag.fail`);
  await viewer.page.waitForSelector("#dead-letter-groups tbody tr[data-fingerprint]");
  assert.equal(await viewer.page.locator("#dead-letter-groups button").count(), 0, "a viewer was offered an action");
  await viewer.context.close();

  const { context, page, violations } = await stack.signedInPage("operator", "olga");
  await page.goto(`${stack.origin}/console#/dead-letters?type=diag.fail`);
  const group = page.locator("#dead-letter-groups tbody tr[data-fingerprint]").first();
  assert.equal((await group.locator("td").first().textContent()).trim(), "5");
  assert.equal(await page.locator("#dead-letter-groups button.purge").count(), 0, "an operator may not purge");
  await group.locator("button.replay").click();
  await page.waitForSelector("dialog[open]");
  assert.match(await page.textContent("#dead-letter-status"), /Dry run: 5 would be replayed/);
  assert.equal(dead(), "5", "the dry run replayed something");
  await shot(page, "dead-letter-replay-dialog");
  await page.click("#confirm");
  await page.waitForSelector("#dead-letter-status:text('Replayed 5 of 5')");
  await eventually(
    async () => {
      await page.goto(`${stack.origin}/console#/jobs?type=diag.fail&state=succeeded&since=1%20hour`);
      await page.reload();
      await page.waitForSelector("#jobs");
      const shown = await page
        .locator("#jobs tbody tr[data-id]")
        .evaluateAll((rows) => rows.map((row) => row.dataset.id));
      return ids.every((id) => shown.includes(id));
    },
    30_000,
    "the replayed jobs to succeed in the jobs page",
  );
  await shot(page, "replayed-jobs-succeeded");
  assert.equal(dead(), "0");
  assert.deepEqual(violations, []);
  await context.close();
});

test("cancelling a running job from its page settles it as cancelled", async () => {
  const jobId = `${run}-running`;
  conveyor("enqueue", "diag.sleep", "--payload", '{"ms": 60000}', "--job-id", jobId, "--no-progress");
  const { context, page, violations } = await stack.signedInPage("operator", "olga");
  await eventually(
    async () => {
      await page.goto(`${stack.origin}/console#/jobs/${jobId}`);
      await page.reload();
      return (await page.locator("#attempts .state-running").count()) === 1;
    },
    20_000,
    "the job to run",
  );
  await page.click("#cancel-job");
  await page.waitForSelector("#job-status:text('Cancel requested')");
  await eventually(
    async () => {
      await page.reload();
      await page.waitForSelector("#attempts");
      return (await page.locator("dd .state-cancelled").count()) === 1;
    },
    10_000,
    "the job's page to show it cancelled",
  );
  assert.equal(sql(`SELECT count(*) FROM conveyor.job_events WHERE job_id = '${jobId}' AND state = 'cancelled'`), "1");
  await shot(page, "job-running-cancelled");
  assert.deepEqual(violations, []);
  await context.close();
});

test("the workers page shows the running worker by its heartbeat", async () => {
  const { context, page, violations } = await stack.signedInPage("viewer", "vera");
  await page.goto(`${stack.origin}/console#/workers`);
  const row = page.locator("#workers tr[data-name='browser-worker-19484']").first();
  await row.waitFor();
  assert.equal(await row.getAttribute("data-state"), "running");
  assert.match(await page.textContent("#workers-summary"), /[1-9]\d* running/);
  await shot(page, "workers");
  assert.deepEqual(violations, []);
  await context.close();
});

test("the audit page lists the changes and filters them by action", async () => {
  const { context, page, violations } = await stack.signedInPage("viewer", "vera");
  await page.goto(`${stack.origin}/console#/audit`);
  await page.waitForSelector("#audit tbody tr[data-action]");
  await page.selectOption("#audit-filter select[name=action]", "purge");
  await page.click("#audit-filter button[type=submit]");
  await page.waitForFunction(() => location.hash.includes("action=purge"));
  // The filtered page, not the unfiltered one still shown while it loads.
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll("#audit tbody tr[data-action]")];
    return rows.length > 0 && rows.every((row) => row.dataset.action === "purge");
  });
  const actions = await page.locator("#audit tbody tr").evaluateAll((rows) => rows.map((row) => row.dataset.action));
  assert.ok(actions.length > 0 && actions.every((action) => action === "purge"), actions.join(","));
  assert.match(await page.textContent("#audit"), /api:user:ada/);
  await page.goto(`${stack.origin}/console#/audit`);
  // The unfiltered page, not the filtered one still shown while it loads.
  await page.waitForSelector("#audit tbody tr[data-action='cancel']");
  const text = await page.textContent("#audit");
  for (const expected of [`api:user:olgacancel${run}-running`, "api:user:olgareplaydead letters type=diag.fail"]) {
    assert.ok(text.includes(expected), `${expected} is not in the audit log`);
  }
  await shot(page, "audit");
  assert.deepEqual(violations, []);
  await context.close();
});
