// Workers: every instance on record by its heartbeats (running, stopped, or gone after three missed ones), with its
// version, queues and load. Refreshed every 5 s.
import { get } from "/console/api.js";
import { ago, badge, el, every, page, table } from "/console/dom.js";

function circuits(worker) {
  return Object.entries(worker.circuit_breakers).map(([name, state]) =>
    badge(`${name} ${state.replace("_", "-")}`, state === "closed" ? "running" : "failed"),
  );
}

export async function renderWorkers(main, session, route, signal) {
  const summary = el("p", { id: "workers-summary" });
  const holder = el("div");
  const refresh = async () => {
    const { workers, running } = await get("/v1/workers");
    const gone = workers.filter((worker) => worker.state === "gone").length;
    summary.textContent = `${running} running` + (gone ? `, ${gone} gone (silent for three heartbeats)` : "");
    holder.replaceChildren(
      table(
        "workers",
        [
          ["Name", (worker) => worker.name],
          ["State", (worker) => badge(worker.state)],
          ["Version", (worker) => worker.version],
          ["Host / pid", (worker) => `${worker.host} / ${worker.pid}`],
          ["Queues", (worker) => worker.queues.join(", ")],
          ["In flight", (worker) => (worker.state === "running" ? `${worker.in_flight} / ${worker.concurrency}` : "–")],
          ["Succeeded", (worker) => worker.succeeded.toLocaleString("en")],
          ["Retried", (worker) => worker.retried.toLocaleString("en")],
          ["Dead-lettered", (worker) => worker.dead_lettered.toLocaleString("en")],
          ["Started", (worker) => ago(worker.started_at)],
          ["Last heartbeat", (worker) => ago(worker.last_seen_at)],
          ["Circuit breakers", circuits],
        ],
        workers,
        (worker) => ({ dataset: { name: worker.name, state: worker.state } }),
      ),
    );
  };
  await refresh();
  page(main, "Workers", summary, holder);
  every(5000, signal, refresh, (failure) => {
    summary.textContent = failure.message;
  });
}
