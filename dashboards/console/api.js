// The console's calls to the scheduler's API: same origin, the session cookie, and the session's CSRF token on
// every change. A 401 means the session ended: the console goes back to the sign-in.

let csrfToken = "";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET" && method !== "HEAD") {
    headers["X-CSRF-Token"] = csrfToken;
  }
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  const text = await response.text();
  const json = text ? JSON.parse(text) : {};
  if (!response.ok) {
    throw new ApiError(response.status, json.error ?? `${method} ${path}: ${response.status}`);
  }
  return json;
}

export async function signIn(token) {
  const session = await call("POST", "/console/api/session", { token });
  csrfToken = session.csrf_token;
  return session;
}

export async function currentSession() {
  try {
    const session = await call("GET", "/console/api/session");
    csrfToken = session.csrf_token;
    return session;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      return null;
    }
    throw error;
  }
}

export async function signOut() {
  await call("DELETE", "/console/api/session");
  csrfToken = "";
}

export const get = (path) => call("GET", path);
export const post = (path, body) => call("POST", path, body);
export const remove = (path) => call("DELETE", path);

/// `path` with the non-empty entries of `params` as its query string.
export function withQuery(path, params) {
  const query = new URLSearchParams(Object.entries(params).filter(([, value]) => value !== undefined && value !== ""));
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}
