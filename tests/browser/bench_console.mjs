// The console's page loads, for tests/bench/run: each page loaded from scratch (a new document: its modules, its API
// calls, its first render) until its main table is shown, in Debian's chromium, signed in with
// CONVEYOR_CONSOLE_TOKEN against the scheduler at CONVEYOR_CONSOLE_ORIGIN. The sign-in page (no data) is the
// baseline. Prints one JSON line per page: the median and the slowest of CONVEYOR_CONSOLE_SAMPLES loads.
import { chromium } from "playwright-core";

const origin = process.env.CONVEYOR_CONSOLE_ORIGIN;
const token = process.env.CONVEYOR_CONSOLE_TOKEN;
const samples = Number(process.env.CONVEYOR_CONSOLE_SAMPLES ?? 5);
const jobId = process.env.CONVEYOR_CONSOLE_JOB_ID;
const fingerprint = process.env.CONVEYOR_CONSOLE_FINGERPRINT;

const pages = [
  ["overview", "#/overview", "#overview-queues tbody tr"],
  ["queues", "#/queues", "#queues tbody tr"],
  ["jobs", "#/jobs", "#jobs tbody tr"],
  ["job", `#/jobs/${jobId}`, "#attempts tbody tr"],
  ["dead_letter_groups", "#/dead-letters", "#dead-letter-groups tbody tr"],
  ["dead_letter_group", `#/dead-letters?fingerprint=${fingerprint}`, "#dead-letters tbody tr"],
  ["scheduled", "#/scheduled", "#schedules"],
  ["batches_and_flow", "#/flow", "#held-back"],
  ["workers", "#/workers", "#workers"],
  ["audit", "#/audit", "#audit"],
];

async function timedLoad(page, url, selector) {
  await page.goto("about:blank");
  const started = performance.now();
  await page.goto(url);
  await page.waitForSelector(selector, { timeout: 30_000 });
  return performance.now() - started;
}

function report(name, times, extra = {}) {
  const sorted = [...times].sort((a, b) => a - b);
  const median = sorted[Math.floor((sorted.length - 1) / 2)];
  console.log(
    JSON.stringify({
      name: "console_page",
      page: name,
      p50_ms: Math.round(median),
      max_ms: Math.round(sorted.at(-1)),
      samples: sorted.length,
      ...extra,
    }),
  );
}

const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });
try {
  const anonymous = await (await browser.newContext()).newPage();
  const shell = [];
  for (let i = 0; i < samples; i += 1) {
    shell.push(await timedLoad(anonymous, `${origin}/console`, "#sign-in"));
  }
  report("sign_in_baseline", shell);

  const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  const page = await context.newPage();
  await page.goto(`${origin}/console`);
  await page.fill("#token", token);
  await page.click("#sign-in button[type=submit]");
  await page.waitForSelector("#nav:not([hidden])");
  for (const [name, hash, selector] of pages) {
    const times = [];
    for (let i = 0; i < samples; i += 1) {
      times.push(await timedLoad(page, `${origin}/console${hash}`, selector));
    }
    report(name, times);
  }
} finally {
  await browser.close();
}
