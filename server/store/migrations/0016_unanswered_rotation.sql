-- A rotation that committed although its request was answered with an error (CONTRACT.md: an
-- error answer changes nothing, and nothing later). It happens when the commit's acknowledgement
-- is lost: the connection breaks during COMMIT, or a synchronous standby does not confirm it in
-- time and the server gives up waiting while PostgreSQL keeps the commit locally. The server then
-- marks the family with the generation its unanswered rotation made (server/oauth/families.py),
-- and the client's retry with the same token gets that generation's token, as if the first answer
-- had arrived, whatever the reuse grace. Presenting the new token clears the way as usual: the
-- family moves on and the mark no longer matches its generation.
ALTER TABLE refresh_families ADD COLUMN unanswered_generation integer;
