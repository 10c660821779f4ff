// The console in a real browser: Debian's chromium, driven by playwright-core, against a real conveyor-scheduler
// and conveyor-worker on the local stack (CONVEYOR_AMQP_URL, CONVEYOR_PG_URL). Each page is screenshotted into
// CONVEYOR_SCREENSHOT_DIR (default: the system's temporary folder).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const binDir = process.env.CONVEYOR_BIN_DIR ?? path.resolve("build/bin");
const pgUrl = process.env.CONVEYOR_PG_URL ?? "postgresql://postgres@127.0.0.1:5432/conveyor";
const amqpUrl = process.env.CONVEYOR_AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672/%2f";
const screenshots = process.env.CONVEYOR_SCREENSHOT_DIR ?? mkdtempSync(path.join(tmpdir(), "conveyor-console-"));
const schedulerPort = 19481;
const workerPort = 19482;
const origin = `http://127.0.0.1:${schedulerPort}`;

const scratch = mkdtempSync(path.join(tmpdir(), "conveyor-browser-"));
const secretFile = path.join(scratch, "jwt-secret");
writeFileSync(secretFile, "a-browser-test-secret-of-at-least-32-bytes\n");
mkdirSync(screenshots, { recursive: true });

const processes = [];
let browser;

function sql(statement) {
  return execFileSync("psql", ["-X", "-q", "-t", "-A", "-d", pgUrl, "-c", statement], { encoding: "utf8" }).trim();
}

function token(role, subject) {
  return execFileSync(path.join(binDir, "conveyor"),
    ["token", "--role", role, "--subject", subject, "--ttl", "15m", "--jwt-secret-file", secretFile],
    { encoding: "utf8" }).trim();
}

async function eventually(check, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) {
      return;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function start(binary, args, readyUrl) {
  const child = spawn(path.join(binDir, binary), args, { stdio: ["ignore", "inherit", "inherit"] });
  processes.push(child);
  await eventually(async () => {
    try {
      return (await fetch(readyUrl)).ok;
    } catch {
      return false;
    }
  }, 30_000, `${binary} at ${readyUrl}`);
}

async function signedInPage(role, subject) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const violations = [];
  page.on("console", (message) => {
    if (message.text().includes("Content Security Policy")) {
      violations.push(message.text());
    }
  });
  page.on("pageerror", (error) => violations.push(error.message));
  const response = await page.goto(`${origin}/console`);
  assert.match(response.headers()["content-security-policy"], /script-src 'self'/);
  await page.fill("#token", token(role, subject));
  await page.click("#sign-in button[type=submit]");
  await page.waitForSelector("#queues");
  assert.equal(await page.textContent("#user"), `user:${subject}`);
  return { context, page, violations };
}

before(async () => {
  execFileSync(path.join(binDir, "conveyor"), ["migrate", "--pg-url", pgUrl], { stdio: "ignore" });
  sql("DELETE FROM conveyor.queue_pauses WHERE family = 'diag'");
  await start("conveyor-scheduler",
    ["--http-port", String(schedulerPort), "--jwt-secret-file", secretFile, "--amqp-url", amqpUrl, "--pg-url", pgUrl],
    `${origin}/readyz`);
  await start("conveyor-worker",
    ["--http-port", String(workerPort), "--queues", "diag", "--amqp-url", amqpUrl, "--pg-url", pgUrl],
    `http://127.0.0.1:${workerPort}/readyz`);
  browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });
});

after(async () => {
  await browser?.close();
  for (const child of processes) {
    child.kill("SIGTERM");
  }
  sql("DELETE FROM conveyor.queue_pauses WHERE family = 'diag'");
});

test("a viewer sees the queues and can change nothing, and the API refuses the same change", async () => {
  const { context, page, violations } = await signedInPage("viewer", "vera");
  await page.screenshot({ path: path.join(screenshots, "queues-viewer.png"), fullPage: true });
  assert.equal(await page.textContent("#role"), "viewer");
  assert.equal(await page.locator("#queues button").count(), 0, "a viewer was offered a pause button");
  const status = await page.evaluate(async () => {
    const session = await (await fetch("/console/api/session")).json();
    const response = await fetch("/v1/queues/diag/pause", {
      method: "POST", headers: { "X-CSRF-Token": session.csrf_token },
    });
    return response.status;
  });
  assert.equal(status, 403, "the API let a viewer's session pause a queue");
  assert.deepEqual(violations, []);
  await context.close();
});

test("an operator pauses a queue, its jobs wait, and they run once it is resumed", async () => {
  const { context, page, violations } = await signedInPage("operator", "olga");
  await page.click("#queues tr[data-family=diag] button");
  await page.waitForSelector("#queues tr[data-family=diag] button:text('Resume')");
  await page.screenshot({ path: path.join(screenshots, "queues-paused.png"), fullPage: true });
  assert.equal(sql("SELECT paused::text || ' ' || changed_by FROM conveyor.queue_pauses " +
    "WHERE family = 'diag' AND job_type = ''"), "true api:user:olga");

  const jobId = `browser-paused-${Date.now()}`;
  execFileSync(path.join(binDir, "conveyor"), ["--amqp-url", amqpUrl, "enqueue", "diag.noop", "--job-id", jobId]);
  await new Promise((resolve) => setTimeout(resolve, 2000));
  const started = () => sql(`SELECT count(*) FROM conveyor.job_events WHERE job_id = '${jobId}' ` +
    "AND state IN ('running', 'succeeded')");
  assert.equal(started(), "0", "a job of a paused queue started");

  await page.click("#queues tr[data-family=diag] button");
  await page.waitForSelector("#queues tr[data-family=diag] button:text('Pause')");
  await eventually(() => started() !== "0", 15_000, "the job to run after the resume");
  assert.deepEqual(violations, []);
  await context.close();
});

test("signing out ends the session: the cookie opens nothing and the page asks to sign in again", async () => {
  const { context, page } = await signedInPage("admin", "ada");
  await page.click("#sign-out");
  await page.waitForSelector("#sign-in");
  const status = await page.evaluate(async () => (await fetch("/v1/queues")).status);
  assert.equal(status, 401);
  await page.screenshot({ path: path.join(screenshots, "sign-in.png"), fullPage: true });
  await context.close();
});
