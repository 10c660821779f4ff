// The console's shell: sign-in, the signed-in user, and the page the address's hash names ("#/jobs/ID",
// "#/jobs?type=…"). Each page gets an AbortSignal that fires when the user leaves it, which ends its refreshes.
import { ApiError, currentSession, signIn, signOut } from "/console/api.js";
import { renderAudit } from "/console/pages/audit.js";
import { renderDeadLetters } from "/console/pages/dead_letters.js";
import { renderFlow } from "/console/pages/flow.js";
import { renderJobs } from "/console/pages/jobs.js";
import { renderOverview } from "/console/pages/overview.js";
import { renderQueues } from "/console/pages/queues.js";
import { renderScheduled } from "/console/pages/scheduled.js";
import { renderWorkers } from "/console/pages/workers.js";

const pages = {
  overview: renderOverview,
  queues: renderQueues,
  jobs: renderJobs,
  "dead-letters": renderDeadLetters,
  scheduled: renderScheduled,
  flow: renderFlow,
  workers: renderWorkers,
  audit: renderAudit,
};

let leaving = new AbortController();

/// "#/jobs/abc?x=1" → { name: "jobs", segments: ["abc"], params }.
function parseHash() {
  const [path, query = ""] = location.hash.replace(/^#\/?/, "").split("?");
  const [name = "", ...segments] = path.split("/").map(decodeURIComponent);
  return { name: pages[name] ? name : "overview", segments, params: new URLSearchParams(query) };
}

let session = null;

function showSignIn(main) {
  document.getElementById("nav").hidden = true;
  document.getElementById("who").hidden = true;
  main.replaceChildren(document.getElementById("sign-in-template").content.cloneNode(true));
  const form = document.getElementById("sign-in");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = document.getElementById("sign-in-error");
    error.textContent = "";
    try {
      session = await signIn(form.elements.token.value.trim());
      await route();
    } catch (failure) {
      error.textContent = failure.message;
    }
  });
}

function showUser() {
  document.getElementById("nav").hidden = false;
  document.getElementById("who").hidden = false;
  document.getElementById("user").textContent = session.user;
  document.getElementById("role").textContent = session.role;
}

async function route() {
  const main = document.getElementById("main");
  if (!session) {
    showSignIn(main);
    return;
  }
  showUser();
  leaving.abort();
  leaving = new AbortController();
  const route = parseHash();
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("current", link.getAttribute("href") === `#/${route.name}`);
  }
  try {
    await pages[route.name](main, session, route, leaving.signal);
  } catch (failure) {
    if (failure instanceof ApiError && failure.status === 401) {
      session = null;
      showSignIn(main);
      return;
    }
    const message = document.createElement("p");
    message.className = "error";
    message.setAttribute("role", "alert");
    message.textContent = failure.message;
    main.prepend(message);
  }
}

document.getElementById("sign-out").addEventListener("click", async () => {
  await signOut();
  session = null;
  await route();
});
window.addEventListener("hashchange", route);
session = await currentSession();
await route();
