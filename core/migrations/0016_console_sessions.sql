-- Console sessions: a browser signs in once with a bearer token (a JSON Web Token or a static API token) and then
-- holds an HttpOnly cookie. The session lives here, so every scheduler replica accepts it and a sign-out ends it
-- everywhere. Only the cookie's SHA-256 is stored: a copy of this table opens no session.
CREATE TABLE conveyor.console_sessions (
    id_sha256   bytea PRIMARY KEY CHECK (length(id_sha256) = 32),
    caller      text NOT NULL,
    role        text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    can_enqueue boolean NOT NULL,
    -- Sent back by the console on every change (X-CSRF-Token): another site can make the browser send the cookie,
    -- never read this.
    csrf_token  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX console_sessions_expires_at ON conveyor.console_sessions (expires_at);
