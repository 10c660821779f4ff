// The console's scheduled jobs, cron schedules, batches and flow limits in a real browser (see stack.mjs).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { conveyor, eventually, screenshots, sql, startStack, writeScratch } from "./stack.mjs";

const run = `browser-ops-${Date.now()}`;
let stack;

before(async () => {
  stack = await startStack({
    schedulerPort: 19485,
    workerPort: 19486,
    schedules: `schedules:
  - name: browser-every-5s
    cron: "*/5 * * * * *"
    type: diag.noop
    payload: {}
    misfire: skip
`,
  });
});

after(async () => {
  await stack?.stop();
  // Later suites run under the limits the stack ships with.
  conveyor("flow", "apply", path.resolve("../../deploy/local/flow.yaml"));
});

test("an operator makes a delayed job due now, cancels another, and sees the cron schedules fire", async () => {
  const due = conveyor("enqueue", "diag.noop", "--in", "1h", "--no-progress");
  const dropped = conveyor("enqueue", "diag.noop", "--in", "1h", "--no-progress");
  const viewer = await stack.signedInPage("viewer", "vera");
  await viewer.page.goto(`${stack.origin}/console#/scheduled`);
  await viewer.page.waitForSelector(`#scheduled-jobs tr[data-id='${due}']`);
  assert.equal(await viewer.page.locator("#scheduled-jobs button").count(), 0, "a viewer was offered an action");
  await viewer.context.close();

  const { context, page, violations } = await stack.signedInPage("operator", "olga");
  await page.goto(`${stack.origin}/console#/scheduled`);
  await page.click(`#scheduled-jobs tr[data-id='${due}'] button.run-now`);
  await page.waitForSelector(`#scheduled-status:text('Due now: ${due}')`);
  await eventually(
    () => sql(`SELECT count(*) FROM conveyor.job_events WHERE job_id = '${due}' AND state = 'succeeded'`) === "1",
    15_000,
    "the job made due now to run",
  );
  await page.click(`#scheduled-jobs tr[data-id='${dropped}'] button.cancel`);
  await page.waitForSelector(`#scheduled-status:text('Cancelled ${dropped}')`);
  assert.equal(await page.locator(`#scheduled-jobs tr[data-id='${dropped}']`).count(), 0);
  assert.equal(sql(`SELECT state FROM conveyor.scheduled_jobs WHERE id = '${dropped}'`), "cancelled");
  assert.equal(
    sql(`SELECT string_agg(action || ' ' || actor, ', ' ORDER BY id) FROM conveyor.audit_log
         WHERE target IN ('${due}', '${dropped}')`),
    "run_now api:user:olga, cancel api:user:olga",
  );

  await eventually(
    async () => {
      await page.reload();
      await page.waitForSelector("#schedules");
      const fired = await page.locator("#schedules tr[data-name='browser-every-5s'] td:nth-child(6)").textContent();
      return Number(fired) > 0;
    },
    15_000,
    "the schedule to fire",
  );
  await page.screenshot({ path: path.join(screenshots, "scheduled.png"), fullPage: true });
  assert.deepEqual(violations, []);
  await context.close();
});

test("the batches and flow page shows a batch's progress, the limits in force and what they hold back", async () => {
  const batch = `${run}-batch`;
  conveyor("batches", "open", "--id", batch, "--description", "nightly import");
  conveyor("batches", "add", batch, "diag.noop", "--count", "3", "--no-progress");
  conveyor("batches", "seal", batch);
  const flowFile = writeScratch(
    "flow.yaml",
    "jobs:\n  diag.sleep:\n    concurrency:\n      key: /tenant\n      limit: 1\n",
  );
  const flowVersion = async () => {
    const metrics = await (await fetch("http://127.0.0.1:19486/metrics")).text();
    return Number(/^conveyor_flow_version (\S+)$/m.exec(metrics)?.[1] ?? 0);
  };
  const before = await flowVersion();
  conveyor("flow", "apply", flowFile);
  await eventually(async () => (await flowVersion()) > before, 10_000, "the worker to follow the new limits");
  for (let i = 0; i < 4; i += 1) {
    conveyor("enqueue", "diag.sleep", "--payload", '{"ms": 4000, "tenant": "acme"}', "--no-progress");
  }
  const { context, page, violations } = await stack.signedInPage("viewer", "vera");
  await eventually(
    async () => {
      await page.goto(`${stack.origin}/console#/flow`);
      await page.reload();
      await page.waitForSelector("#batches");
      const finished = await page.locator(`#batches tr[data-id='${batch}'][data-state='finished']`).count();
      const held = await page.locator("#held-back tr[data-type='diag.sleep'][data-kind='concurrency']").count();
      return finished === 1 && held === 1;
    },
    20_000,
    "the batch to finish and the held-back diag.sleep jobs to show",
  );
  assert.match(await page.textContent(`#batches tr[data-id='${batch}']`), /3 of 3/);
  assert.match(await page.textContent("#flow-limits tr[data-type='diag.sleep']"), /1 at once per \/tenant/);
  const held = await page.textContent("#held-back tr[data-type='diag.sleep']");
  assert.match(held, /concurrency\s*[1-9]\d*\s*1/, held);
  await page.screenshot({ path: path.join(screenshots, "batches-and-flow.png"), fullPage: true });
  assert.deepEqual(violations, []);
  await context.close();
});

test("a correlation id shows an order's saga end to end, from the order to its receipt", async () => {
  const gatewayPort = await stack.startStandIn("payment_gateway.py", [
    "--control-port-file",
    writeScratch("gateway-control.port", ""),
  ]);
  const smtpPort = await stack.startStandIn("smtp_sink.py", ["--mailbox", writeScratch("mailbox.jsonl", "")]);
  await stack.restartWorker(
    ["--payment-gateway-url", `http://127.0.0.1:${gatewayPort}`, "--smtp-url", `smtp://127.0.0.1:${smtpPort}`],
    "diag,orders,inventory,payments,emails,projections",
  );
  const product = `${run}-sku`;
  sql(`INSERT INTO shop.products (id, name, price_cents) VALUES ('${product}', 'Browser mug', 1250)`);
  sql(`INSERT INTO inventory.stock (product_id, available) VALUES ('${product}', 10)`);
  const order = `${run}-order`;
  const payload = {
    order_id: order,
    customer: { id: `${run}-c`, email: "browser@example.com", name: "Browser Test" },
    items: [{ product_id: product, quantity: 1 }],
    currency: "EUR",
  };
  conveyor("enqueue", "orders.place", "--payload", JSON.stringify(payload), "--correlation-id", order, "--no-progress");
  await eventually(
    () => sql(`SELECT status FROM shop.orders WHERE id = '${order}'`) === "confirmed",
    30_000,
    "the order to be confirmed",
  );

  const { context, page, violations } = await stack.signedInPage("viewer", "vera");
  let steps = [];
  await eventually(
    async () => {
      await page.goto(`${stack.origin}/console#/jobs?correlation_id=${order}`);
      await page.reload();
      await page.waitForSelector("#jobs");
      steps = await page
        .locator("#timeline li")
        .evaluateAll((items) =>
          items.map((item) => ({ type: item.dataset.type, state: item.querySelector(".badge").textContent })),
        );
      return steps.some((step) => step.type === "emails.send") && steps.every((step) => step.state === "succeeded");
    },
    30_000,
    "the saga's jobs, through the receipt email, to show as succeeded",
  );
  const types = steps.map((step) => step.type);
  assert.equal(types[0], "orders.place", types.join(" → "));
  assert.ok(types.includes("payments.charge"), types.join(" → "));
  await page.screenshot({ path: path.join(screenshots, "order-saga.png"), fullPage: true });
  assert.deepEqual(violations, []);
  await context.close();
});
