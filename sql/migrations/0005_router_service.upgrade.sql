-- router-service: API routes, and request counters per user and route.

CREATE TABLE routes (
    id      serial PRIMARY KEY,
    path    varchar(255) NOT NULL,
    service varchar(255) NOT NULL,
    method  varchar(10) NOT NULL,
    CONSTRAINT routes_path_key UNIQUE (path),
    -- an HTTP method token in upper case (GET, POST, PROPFIND…), or * for any method
    CONSTRAINT routes_method_check CHECK (method ~ '^([A-Z][A-Z-]*|\*)$')
);

COMMENT ON TABLE routes IS 'router-service: API routes and the service each one goes to';

CREATE TABLE rate_limits (
    id            serial PRIMARY KEY,
    user_id       integer REFERENCES users (id) ON DELETE CASCADE,
    route_id      integer REFERENCES routes (id) ON DELETE CASCADE,
    request_count integer DEFAULT 0,
    last_request  timestamptz DEFAULT now(),
    -- one counter per user and route: the router upserts it (ON CONFLICT … DO UPDATE);
    -- it also serves as the index of the user_id foreign key (its leading column)
    CONSTRAINT rate_limits_user_id_route_id_key UNIQUE (user_id, route_id),
    CONSTRAINT rate_limits_request_count_check CHECK (request_count >= 0)
);

COMMENT ON TABLE rate_limits IS 'router-service: per user, per route request counters';

CREATE INDEX rate_limits_route_id_idx ON rate_limits (route_id);
-- scanned by `kronos-db ratelimits reset`
CREATE INDEX rate_limits_last_request_idx ON rate_limits (last_request);
