-- Browser apps (CONTRACT.md, "Browser apps: the refresh token never reachable from JavaScript"):
-- the origins a client's pages run on, and whether its refresh token travels in an HttpOnly cookie.
--
-- allowed_origins: exact browser origins (scheme://host[:port], as the Origin header spells them;
-- `clients create --allowed-origins` checks the form). /token, /revoke and /userinfo answer CORS
-- for them, and a request that relies on the refresh-token cookie must come from one of them.
-- refresh_token_cookie: every refresh token issued to the client is set as the cookie
-- __Host-tessera_refresh instead of being put in the JSON. Only a public client (its pages are all
-- it has) with at least one origin to be called from may use it.
-- Both default to what every existing client had: no origins, no cookie.

ALTER TABLE clients
    ADD COLUMN allowed_origins text[] NOT NULL DEFAULT '{}',
    ADD COLUMN refresh_token_cookie boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT clients_refresh_token_cookie_for_browser_apps CHECK (
        NOT refresh_token_cookie OR (is_public AND cardinality(allowed_origins) >= 1));
