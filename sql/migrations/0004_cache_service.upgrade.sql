-- cache-service: key/value rows with an optional expiry.

CREATE TABLE cache (
    key        varchar(255) PRIMARY KEY,
    value      text NOT NULL,
    expires_at timestamptz
);

COMMENT ON TABLE cache IS 'cache-service: key/value rows with an optional expiry';

-- scanned by `kronos-db expire cache`; rows that never expire are left out of the index
CREATE INDEX cache_expires_at_idx ON cache (expires_at) WHERE expires_at IS NOT NULL;
