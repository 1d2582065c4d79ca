-- auth-service: sessions with an expiry.

CREATE TABLE sessions (
    id         serial PRIMARY KEY,
    user_id    integer REFERENCES users (id) ON DELETE CASCADE,
    token      text NOT NULL,
    created_at timestamptz DEFAULT now(),
    expires_at timestamptz,
    -- The lookup path for tokens, and their uniqueness. A hash index has no size limit (a
    -- B-tree entry cannot exceed ~2.7 kB, and a JWT can), and an exclusion constraint on it
    -- is a unique constraint that `WHERE token = $1` uses directly.
    CONSTRAINT sessions_token_excl EXCLUDE USING hash (token WITH =)
);

COMMENT ON TABLE sessions IS 'auth-service: user sessions (JWT / OAuth tokens) with an expiry';

CREATE INDEX sessions_user_id_idx ON sessions (user_id);
-- scanned by `kronos-db expire sessions`
CREATE INDEX sessions_expires_at_idx ON sessions (expires_at);

-- "Sessions expire automatically after a delay": a session inserted without an expiry gets
-- one. The delay is the database setting kronos.session_ttl (ALTER DATABASE … SET
-- kronos.session_ttl = '12 hours'), 24 hours when unset.
CREATE FUNCTION sessions_default_expiry() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.expires_at IS NULL THEN
        NEW.expires_at := coalesce(NEW.created_at, now())
            + coalesce(nullif(current_setting('kronos.session_ttl', true), ''), '24 hours')::interval;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER sessions_default_expiry
    BEFORE INSERT ON sessions
    FOR EACH ROW EXECUTE FUNCTION sessions_default_expiry();
