// Small helpers for building pages from data: every text goes in through textContent, never as HTML.
import { withQuery } from "/console/api.js";

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) {
      continue;
    }
    if (name === "dataset") {
      Object.assign(node.dataset, value);
    } else if (name === "on") {
      for (const [event, handler] of Object.entries(value)) {
        node.addEventListener(event, handler);
      }
    } else if (name in node && name !== "list") {
      node[name] = value;
    } else {
      node.setAttribute(name, value === true ? "" : value);
    }
  }
  node.append(...children.flat(Infinity).filter((child) => child !== null && child !== undefined));
  return node;
}

/// A table with an id, a header row and one row per item; `columns` are [heading, item => text or node].
export function table(id, columns, items, rowProps = () => ({})) {
  const head = el(
    "thead",
    {},
    el(
      "tr",
      {},
      columns.map(([heading]) => el("th", {}, heading)),
    ),
  );
  const rows = items.map((item) =>
    el(
      "tr",
      rowProps(item),
      columns.map(([, value]) => el("td", {}, value(item) ?? "")),
    ),
  );
  const body = el(
    "tbody",
    {},
    rows.length ? rows : el("tr", {}, el("td", { colSpan: columns.length, className: "muted" }, "Nothing to show")),
  );
  return el("table", { id }, head, body);
}

export const link = (href, text) => el("a", { href }, text);

/// "12 s ago", "3 min ago", "2 h ago", or the date.
export function ago(iso) {
  if (!iso) {
    return "";
  }
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 90) {
    return `${Math.round(seconds)} s ago`;
  }
  if (seconds < 5400) {
    return `${Math.round(seconds / 60)} min ago`;
  }
  if (seconds < 172800) {
    return `${Math.round(seconds / 3600)} h ago`;
  }
  return iso.slice(0, 10);
}

export function milliseconds(value) {
  if (value === null || value === undefined) {
    return "";
  }
  return value >= 1000 ? `${(value / 1000).toFixed(1)} s` : `${Math.round(value)} ms`;
}

export const badge = (text, kind = text) => el("span", { className: `badge state-${kind}` }, text);

export function page(main, title, ...content) {
  main.replaceChildren(
    el("h1", {}, title),
    ...content.flat(Infinity).filter((child) => child !== null && child !== undefined),
  );
}

/// Calls `refresh` every `ms` until `signal` aborts (the user left the page); a failed refresh shows its error once
/// and the next one tries again.
export function every(ms, signal, refresh, onError) {
  const timer = setInterval(async () => {
    try {
      await refresh();
    } catch (failure) {
      onError(failure);
    }
  }, ms);
  signal.addEventListener("abort", () => clearInterval(timer));
}

/// Asks in a modal dialog; resolves to the form's values, or null if cancelled. `fields` are extra form controls.
export function confirmDialog(title, message, confirmText, fields = []) {
  return new Promise((resolve) => {
    const form = el(
      "form",
      { method: "dialog" },
      el("h2", {}, title),
      el("p", {}, message),
      ...fields,
      el(
        "div",
        { className: "buttons" },
        el("button", { type: "submit", value: "cancel", formNoValidate: true }, "Cancel"),
        el("button", { type: "submit", value: "confirm", className: "danger", id: "confirm" }, confirmText),
      ),
    );
    const dialog = el("dialog", { id: "dialog" }, form);
    dialog.addEventListener("close", () => {
      const values = Object.fromEntries(new FormData(form));
      dialog.remove();
      resolve(dialog.returnValue === "confirm" ? values : null);
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

/// A text field of a filter form, showing what the page's query holds for `name`.
export function queryField(params, name, label, placeholder = "") {
  return el("label", {}, `${label} `, el("input", { name, value: params.get(name) ?? "", placeholder }));
}

/// A choice of a filter form among `choices` ("" shows as "any"), showing what the page's query holds.
export function queryChoice(params, name, label, choices) {
  const current = params.get(name) ?? "";
  return el(
    "label",
    {},
    `${label} `,
    el(
      "select",
      { name },
      choices.map((choice) => el("option", { value: choice, selected: choice === current }, choice || "any")),
    ),
  );
}

/// A filter form of `fields`: submitting it hands its values to `go` (by default the address `base` with them as
/// its query), so a filter is a link that can be shared.
export function filterForm(id, fields, buttonText, base, go = (values) => (location.hash = withQuery(base, values))) {
  const form = el("form", { id, className: "filters" }, ...fields, el("button", { type: "submit" }, buttonText));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    go(Object.fromEntries(new FormData(form)));
  });
  return form;
}

/// A button that runs `perform` once per click, disabled meanwhile; a failure is shown in `status`.
export function actionButton(label, props, perform, status) {
  return el(
    "button",
    {
      type: "button",
      ...props,
      on: {
        click: async (event) => {
          event.target.disabled = true;
          try {
            await perform();
          } catch (failure) {
            status.textContent = failure.message;
          } finally {
            event.target.disabled = false;
          }
        },
      },
    },
    label,
  );
}
