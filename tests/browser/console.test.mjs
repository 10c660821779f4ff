// The console's sign-in and queues page in a real browser (see stack.mjs).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { conveyor, eventually, screenshots, sql, startStack } from "./stack.mjs";

let stack;

before(async () => {
  sql("DELETE FROM conveyor.queue_pauses WHERE family = 'diag'");
  stack = await startStack({ schedulerPort: 19481, workerPort: 19482 });
});

after(async () => {
  await stack?.stop();
  sql("DELETE FROM conveyor.queue_pauses WHERE family = 'diag'");
});

test("a viewer sees the queues and can change nothing, and the API refuses the same change", async () => {
  const { context, page, violations } = await stack.signedInPage("viewer", "vera");
  await page.screenshot({ path: path.join(screenshots, "queues-viewer.png"), fullPage: true });
  assert.equal(await page.textContent("#role"), "viewer");
  assert.equal(await page.locator("#queues button").count(), 0, "a viewer was offered a pause button");
  const status = await page.evaluate(async () => {
    const session = await (await fetch("/console/api/session")).json();
    const response = await fetch("/v1/queues/diag/pause", {
      method: "POST",
      headers: { "X-CSRF-Token": session.csrf_token },
    });
    return response.status;
  });
  assert.equal(status, 403, "the API let a viewer's session pause a queue");
  assert.deepEqual(violations, []);
  await context.close();
});

test("an operator pauses a queue, its jobs wait, and they run once it is resumed", async () => {
  const { context, page, violations } = await stack.signedInPage("operator", "olga");
  await page.click("#queues tr[data-family=diag] button");
  await page.waitForSelector("#queues tr[data-family=diag] button:text('Resume')");
  await page.screenshot({ path: path.join(screenshots, "queues-paused.png"), fullPage: true });
  assert.equal(
    sql(
      "SELECT paused::text || ' ' || changed_by FROM conveyor.queue_pauses " +
        "WHERE family = 'diag' AND job_type = ''",
    ),
    "true api:user:olga",
  );
  assert.equal(
    sql("SELECT actor || ' ' || action || ' ' || target FROM conveyor.audit_log ORDER BY id DESC LIMIT 1"),
    "api:user:olga pause diag",
  );

  const jobId = `browser-paused-${Date.now()}`;
  conveyor("enqueue", "diag.noop", "--job-id", jobId);
  await new Promise((resolve) => setTimeout(resolve, 2000));
  const started = () =>
    sql(
      `SELECT count(*) FROM conveyor.job_events WHERE job_id = '${jobId}' ` + "AND state IN ('running', 'succeeded')",
    );
  assert.equal(started(), "0", "a job of a paused queue started");

  await page.click("#queues tr[data-family=diag] button");
  await page.waitForSelector("#queues tr[data-family=diag] button:text('Pause')");
  await eventually(() => started() !== "0", 15_000, "the job to run after the resume");
  assert.deepEqual(violations, []);
  await context.close();
});

test("signing out ends the session: the cookie opens nothing and the page asks to sign in again", async () => {
  const { context, page } = await stack.signedInPage("admin", "ada");
  await page.click("#sign-out");
  await page.waitForSelector("#sign-in");
  const status = await page.evaluate(async () => (await fetch("/v1/queues")).status);
  assert.equal(status, 401);
  await page.screenshot({ path: path.join(screenshots, "sign-in.png"), fullPage: true });
  await context.close();
});
