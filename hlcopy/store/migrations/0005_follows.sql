-- Follows (issue 11): declared in the TOML (source 'toml'), added over the API ('api') or picked
-- by an auto-follow rule ('auto'). Replaces 0001's placeholder table, which nothing wrote.
-- spec holds the follow's fields as given (the TOML table or the API body, JSON); the defaults
-- are the running hlcopy's. A removed follow keeps its row (removed_ms set): copies name it.
DROP TABLE follows;
CREATE TABLE follows (
    id            text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_.-]{1,64}$'),
    source        text NOT NULL CHECK (source IN ('toml', 'api', 'auto')),
    leader        text NOT NULL CHECK (leader ~ '^0x[0-9a-f]{40}$'),
    spec          jsonb NOT NULL CHECK (jsonb_typeof(spec) = 'object'),
    paused        boolean NOT NULL DEFAULT false,
    winding_down  boolean NOT NULL DEFAULT false,
    started_ms    bigint NOT NULL,
    created_ms    bigint NOT NULL,
    updated_ms    bigint NOT NULL,
    removed_ms    bigint
);
