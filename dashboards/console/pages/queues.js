// Queues: each job family's queue with its depth per priority band, consumers, dead-letter queue and pauses, and
// pause / resume for operators. Refreshed every 5 s.
import { get, post } from "/console/api.js";
import { badge, el, every, page, table } from "/console/dom.js";

function pauseButton(queue, session, refresh) {
  if (session.role === "viewer") {
    return "";
  }
  return el(
    "button",
    {
      type: "button",
      dataset: { family: queue.family },
      on: {
        click: async (event) => {
          event.target.disabled = true;
          await post(`/v1/queues/${encodeURIComponent(queue.family)}/${queue.paused ? "resume" : "pause"}`);
          await refresh();
        },
      },
    },
    queue.paused ? "Resume" : "Pause",
  );
}

function state(queue) {
  if (queue.paused) {
    return badge("paused");
  }
  return queue.paused_types?.length ? badge(`${queue.paused_types.length} types paused`, "paused") : badge("running");
}

export async function renderQueues(main, session, route, signal) {
  const note = el("p", { className: "muted", id: "broker-note" });
  const holder = el("div");
  const refresh = async () => {
    const { queues, broker_error: brokerError } = await get("/v1/queues");
    note.textContent = brokerError ? `Depths unavailable: ${brokerError}` : "";
    const band = (name) => (queue) => queue.bands?.[name]?.messages ?? "–";
    holder.replaceChildren(
      table(
        "queues",
        [
          ["Family", (queue) => queue.family],
          ["Queue", (queue) => queue.queue],
          ["State", state],
          ["High", band("high")],
          ["Normal", band("normal")],
          ["Low", band("low")],
          ["Consumers", (queue) => queue.consumers ?? "–"],
          ["Dead-letter queue", (queue) => queue.dead_letter_queue_messages ?? "–"],
          ["", (queue) => pauseButton(queue, session, refresh)],
        ],
        queues,
        (queue) => ({ dataset: { family: queue.family } }),
      ),
    );
  };
  await refresh();
  page(main, "Queues", note, holder);
  every(5000, signal, refresh, (failure) => {
    note.textContent = failure.message;
  });
}
