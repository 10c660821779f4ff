// Queues: each job family's queue with what is paused, and pause / resume for operators.
import { get, post } from "/console/api.js";

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function actionButton(queue, session, onDone) {
  const td = document.createElement("td");
  if (session.role === "viewer") {
    return td;
  }
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = queue.paused ? "Resume" : "Pause";
  button.dataset.family = queue.family;
  button.addEventListener("click", async () => {
    button.disabled = true;
    await post(`/v1/queues/${encodeURIComponent(queue.family)}/${queue.paused ? "resume" : "pause"}`);
    await onDone();
  });
  td.append(button);
  return td;
}

export async function renderQueues(main, session) {
  const { queues } = await get("/v1/queues");
  const table = document.createElement("table");
  table.id = "queues";
  table.innerHTML = "<thead><tr><th>Family</th><th>Queue</th><th>State</th><th></th></tr></thead>";
  const body = document.createElement("tbody");
  for (const queue of queues) {
    const row = document.createElement("tr");
    row.dataset.family = queue.family;
    row.append(cell(queue.family), cell(queue.queue), cell(queue.paused ? "paused" : "running"),
      actionButton(queue, session, () => renderQueues(main, session)));
    body.append(row);
  }
  table.append(body);
  const heading = document.createElement("h1");
  heading.textContent = "Queues";
  main.replaceChildren(heading, table);
}
