-- Brute-force throttling (docs/hardening.md): failed password and client-secret attempts, counted
-- per (username, address), per (client, address) and per address, shared by every instance.
--
-- A row is one counter in a fixed window that starts at its first failure and lasts 15 minutes.
-- `counter` is an HMAC (under a server secret sealed by the KEK) of the kind, the subject and the
-- address, so a leaked dump does not list the usernames people typed (often passwords typed into
-- the wrong field). `kind` and `remote` stay readable for the operator.
CREATE TABLE login_failures (
    counter       bytea PRIMARY KEY,
    kind          text NOT NULL CHECK (kind IN ('user', 'client', 'address')),
    remote        text NOT NULL,
    window_start  timestamptz NOT NULL,
    failures      integer NOT NULL CHECK (failures >= 0)
);

-- Expired windows are deleted in batches by age.
CREATE INDEX login_failures_window_start ON login_failures (window_start);
