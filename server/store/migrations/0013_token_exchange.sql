-- Token exchange (RFC 8693; CONTRACT.md, "Service to service"): the audiences of the access
-- tokens a client may exchange for tokens of its own audiences (`clients create --exchange-from`).
-- Empty for every existing client: none may exchange anything until the operator says so.

ALTER TABLE clients
    ADD COLUMN exchange_from text[] NOT NULL DEFAULT '{}';
