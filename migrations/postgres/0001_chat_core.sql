-- The seed schema (users, messages) plus what the chat core needs: idempotency keys, presence, refresh tokens.
CREATE TABLE users (
    id           BIGSERIAL PRIMARY KEY,
    google_id    TEXT NOT NULL UNIQUE,
    name         TEXT NOT NULL,
    avatar_url   TEXT,
    email        TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at TIMESTAMPTZ
);
CREATE INDEX users_name_search ON users (lower(name), id);

CREATE TABLE messages (
    id           BIGSERIAL PRIMARY KEY,
    from_id      BIGINT NOT NULL REFERENCES users (id),
    to_id        BIGINT NOT NULL REFERENCES users (id),
    content      TEXT NOT NULL,
    timestamp    TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at TIMESTAMPTZ,
    seen_at      TIMESTAMPTZ,
    client_id    TEXT,
    CONSTRAINT messages_client_id_once UNIQUE (from_id, client_id)
);
-- History of one conversation, newest first, whichever side sent.
CREATE INDEX messages_conversation ON messages (LEAST(from_id, to_id), GREATEST(from_id, to_id), id DESC);
-- What a recipient still has to receive, oldest first.
CREATE INDEX messages_undelivered ON messages (to_id, id) WHERE delivered_at IS NULL;
-- Unread counts per conversation.
CREATE INDEX messages_unseen ON messages (to_id, from_id) WHERE seen_at IS NULL;
-- The conversation list and the peers told about presence.
CREATE INDEX messages_by_sender ON messages (from_id, id DESC);
CREATE INDEX messages_by_recipient ON messages (to_id, id DESC);

CREATE TABLE refresh_tokens (
    id          BIGSERIAL PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,
    family_id   TEXT NOT NULL,
    user_id     BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL,
    spent_at    TIMESTAMPTZ,
    revoked_at  TIMESTAMPTZ
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);
