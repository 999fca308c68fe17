-- A code redemption that committed although its token request was answered with an error (the
-- commit's acknowledgement lost: a broken connection during COMMIT, a failover, a synchronous
-- standby that did not confirm in time). CONTRACT.md says an error answer changes nothing, so the
-- server marks such a code (server/oauth/grants/authorization_code.py), and the client's retry
-- with the same code, verifier and redirect URI is not a replay: the family the lost answer would
-- have delivered, which nobody ever received, is revoked and the code is redeemed anew, once.
-- Migration 0016 does the same for refresh rotations.
ALTER TABLE authorization_codes ADD COLUMN unanswered boolean NOT NULL DEFAULT false;
