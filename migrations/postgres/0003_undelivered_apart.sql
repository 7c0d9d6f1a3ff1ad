-- What a recipient still has to receive, kept apart from `messages`. An index on `messages` that
-- names `delivered_at` (the partial index this replaces) keeps PostgreSQL from updating a row in
-- place (HOT): every delivery wrote the row into all seven indexes again. With no index naming it,
-- marking a message delivered rewrites its heap row only, and the queue row is deleted.
CREATE TABLE undelivered (
    to_id      BIGINT NOT NULL,
    message_id BIGINT NOT NULL,
    PRIMARY KEY (to_id, message_id)
);
INSERT INTO undelivered (to_id, message_id)
SELECT to_id, id FROM messages WHERE delivered_at IS NULL;
DROP INDEX messages_undelivered;
-- Room on each page for the delivered and seen versions of its rows, so those updates stay on it.
ALTER TABLE messages SET (fillfactor = 80);
