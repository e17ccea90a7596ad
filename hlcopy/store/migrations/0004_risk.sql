-- Risk: the persisted state of every scope (global, follow:<id>, leader:<address>) and the
-- history of its trips and clears, each with its cause.

CREATE TABLE risk_states (
    scope text PRIMARY KEY,
    state jsonb NOT NULL,
    updated_ms bigint NOT NULL
);

CREATE TABLE risk_events (
    id bigserial PRIMARY KEY,
    scope text NOT NULL,
    time_ms bigint NOT NULL,
    cause text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('trip', 'clear')),
    state_before text NOT NULL,
    state_after text NOT NULL,
    detail text NOT NULL
);

CREATE INDEX risk_events_time ON risk_events (time_ms DESC);
