// The console's browser tests share this: a real conveyor-scheduler and conveyor-worker on the local stack
// (CONVEYOR_AMQP_URL, CONVEYOR_PG_URL), Debian's chromium driven by playwright-core, tokens signed by `conveyor
// token`, and screenshots into CONVEYOR_SCREENSHOT_DIR (default: the system's temporary folder). Each test file
// starts its own processes on its own ports and stops them, by pid, when it ends.
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

export const binDir = process.env.CONVEYOR_BIN_DIR ?? path.resolve("../../build/bin");
// The services connect as the application role; the tests set up, inspect and migrate as the schema's owner.
export const pgUrl = process.env.CONVEYOR_PG_URL ?? "postgresql://conveyor_app@127.0.0.1:5432/conveyor";
const ownerPgUrl = process.env.CONVEYOR_PG_OWNER_URL ?? "postgresql://postgres@127.0.0.1:5432/conveyor";
export const amqpUrl = process.env.CONVEYOR_AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672/%2f";
export const screenshots = process.env.CONVEYOR_SCREENSHOT_DIR ?? mkdtempSync(path.join(tmpdir(), "conveyor-console-"));

const scratch = mkdtempSync(path.join(tmpdir(), "conveyor-browser-"));
const secretFile = path.join(scratch, "jwt-secret");
writeFileSync(secretFile, "a-browser-test-secret-of-at-least-32-bytes\n");
mkdirSync(screenshots, { recursive: true });

/// A file in this run's scratch folder; returns its path.
export function writeScratch(name, text) {
  const file = path.join(scratch, name);
  writeFileSync(file, text);
  return file;
}

export function sql(statement) {
  return execFileSync("psql", ["-X", "-q", "-t", "-A", "-d", ownerPgUrl, "-c", statement], { encoding: "utf8" }).trim();
}

export function conveyor(...args) {
  return execFileSync(path.join(binDir, "conveyor"), ["--amqp-url", amqpUrl, ...args], { encoding: "utf8" }).trim();
}

export function token(role, subject) {
  return execFileSync(
    path.join(binDir, "conveyor"),
    ["token", "--role", role, "--subject", subject, "--ttl", "15m", "--jwt-secret-file", secretFile],
    { encoding: "utf8" },
  ).trim();
}

export async function eventually(check, timeoutMs, what) {
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

/// Sends SIGTERM (unless it has exited) and waits for the exit.
function ended(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) {
      resolve();
      return;
    }
    child.once("exit", resolve);
    child.kill("SIGTERM");
  });
}

/// The scheduler (with the HS256 secret, and `schedules` as its schedules file if given) and a worker of the diag family, and a browser; stop() ends them all.
export async function startStack({ schedulerPort, workerPort, schedules }) {
  const processes = [];
  const start = async (binary, args, readyUrl) => {
    const child = spawn(path.join(binDir, binary), args, { stdio: ["ignore", "inherit", "inherit"] });
    processes.push(child);
    await eventually(
      async () => {
        try {
          return (await fetch(readyUrl)).ok;
        } catch {
          return false;
        }
      },
      30_000,
      `${binary} at ${readyUrl}`,
    );
  };
  execFileSync(path.join(binDir, "conveyor"), ["migrate", "--pg-url", ownerPgUrl], { stdio: "ignore" });
  const origin = `http://127.0.0.1:${schedulerPort}`;
  await start(
    "conveyor-scheduler",
    [
      ...["--http-port", String(schedulerPort), "--jwt-secret-file", secretFile, "--amqp-url", amqpUrl],
      ...["--pg-url", pgUrl, ...(schedules ? ["--schedules", writeScratch("schedules.yaml", schedules)] : [])],
    ],
    `${origin}/readyz`,
  );
  const workerName = `browser-worker-${workerPort}`;
  const workerArgs = ["--http-port", String(workerPort), "--heartbeat-interval", "1s"];
  let worker;
  const startWorker = async (extraArgs = [], queues = "diag") => {
    const args = [...workerArgs, "--queues", queues, "--amqp-url", amqpUrl, "--pg-url", pgUrl, "--name", workerName];
    args.push(...extraArgs);
    await start("conveyor-worker", args, `http://127.0.0.1:${workerPort}/readyz`);
    worker = processes.at(-1);
  };
  await startWorker();
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });

  /// A page signed in with a JWT of `role` for `subject`; `violations` collects CSP reports and page errors.
  const signedInPage = async (role, subject) => {
    const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
    const page = await context.newPage();
    const violations = [];
    page.on("console", (message) => {
      if (message.text().includes("Content Security Policy")) {
        violations.push(message.text());
      }
    });
    page.on("pageerror", (error) => violations.push(error.message));
    const response = await page.goto(`${origin}/console#/queues`);
    assert.match(response.headers()["content-security-policy"], /script-src 'self'/);
    await page.fill("#token", token(role, subject));
    await page.click("#sign-in button[type=submit]");
    await page.waitForSelector("#queues");
    assert.equal(await page.textContent("#user"), `user:${subject}`);
    return { context, page, violations };
  };

  const stop = async () => {
    await browser.close();
    await Promise.all(processes.map(ended));
  };

  /// The worker again with other settings (a fix deployed) or queues: the old one drains and exits first.
  const restartWorker = async (extraArgs, queues) => {
    await ended(worker);
    await startWorker(extraArgs, queues);
  };

  /// One of deploy/local's stand-ins for the outside world (payment_gateway.py, smtp_sink.py), stopped with the
  /// stack; resolves to the port it wrote to `--port-file`.
  const startStandIn = async (script, args) => {
    const portFile = path.join(scratch, `${script}.port`);
    const child = spawn(
      "/usr/bin/python3",
      [path.resolve("../../deploy/local", script), "--port-file", portFile, ...args],
      {
        stdio: ["ignore", "inherit", "inherit"],
      },
    );
    processes.push(child);
    await eventually(() => existsSync(portFile) && readFileSync(portFile, "utf8").trim() !== "", 10_000, script);
    return Number(readFileSync(portFile, "utf8").trim());
  };
  return { origin, workerName, signedInPage, restartWorker, startStandIn, stop };
}
