-- database: one row per backup taken of the database.

CREATE TABLE backups (
    id         serial PRIMARY KEY,
    created_at timestamptz DEFAULT now(),
    file_path  text NOT NULL
);

COMMENT ON TABLE backups IS 'database: one row per backup taken of the database';

-- "the last backup" and retention both read backups by age
CREATE INDEX backups_created_at_idx ON backups (created_at);
