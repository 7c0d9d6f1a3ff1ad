-- The seed schema (users, messages) plus what the chat core needs: idempotency keys, presence, refresh tokens.
-- Timestamps are RFC 3339 UTC text written by teachlyd, so they sort and compare as text.
CREATE TABLE users (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    google_id    TEXT NOT NULL UNIQUE,
    name         TEXT NOT NULL,
    avatar_url   TEXT,
    email        TEXT,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    last_seen_at TEXT
);
CREATE INDEX users_name_search ON users (lower(name), id);

CREATE TABLE messages (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    from_id      INTEGER NOT NULL REFERENCES users (id),
    to_id        INTEGER NOT NULL REFERENCES users (id),
    content      TEXT NOT NULL,
    timestamp    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    delivered_at TEXT,
    seen_at      TEXT,
    client_id    TEXT,
    CONSTRAINT messages_client_id_once UNIQUE (from_id, client_id)
);
CREATE INDEX messages_conversation ON messages (min(from_id, to_id), max(from_id, to_id), id DESC);
CREATE INDEX messages_undelivered ON messages (to_id, id) WHERE delivered_at IS NULL;
CREATE INDEX messages_unseen ON messages (to_id, from_id) WHERE seen_at IS NULL;
CREATE INDEX messages_by_sender ON messages (from_id, id DESC);
CREATE INDEX messages_by_recipient ON messages (to_id, id DESC);

CREATE TABLE refresh_tokens (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash  TEXT NOT NULL UNIQUE,
    family_id   TEXT NOT NULL,
    user_id     INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    expires_at  TEXT NOT NULL,
    spent_at    TEXT,
    revoked_at  TEXT
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);
