// The console's shell: sign-in, the signed-in user, and the page the address's hash names.
import { ApiError, currentSession, signIn, signOut } from "/console/api.js";
import { renderQueues } from "/console/pages/queues.js";

const pages = {
  "#/queues": renderQueues,
};

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
  const render = pages[location.hash] ?? renderQueues;
  try {
    await render(main, session);
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
