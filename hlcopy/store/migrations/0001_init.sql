-- Initial schema. Money and sizes are numeric (exact); times from the exchange are ms integers.

-- Every address seen on the trade stream, with activity counters.
CREATE TABLE traders (
    address        text PRIMARY KEY CHECK (address ~ '^0x[0-9a-f]{40}$'),
    first_seen_ms  bigint NOT NULL,
    last_seen_ms   bigint NOT NULL,
    trade_count    bigint NOT NULL DEFAULT 0,
    volume_usd     numeric NOT NULL DEFAULT 0,
    role           text,             -- userRole: user | vault | agent | subAccount | missing
    tracked        boolean NOT NULL DEFAULT false,
    stats          jsonb,            -- latest scoring figures
    stats_at_ms    bigint
);
CREATE INDEX traders_last_seen ON traders (last_seen_ms DESC);

-- Fills of any address (leaders, follower, tracked traders), deduplicated across sources.
CREATE TABLE fills (
    address         text NOT NULL,
    tid             bigint NOT NULL,
    coin            text NOT NULL,
    px              numeric NOT NULL,
    sz              numeric NOT NULL,
    side            char(1) NOT NULL CHECK (side IN ('B', 'A')),
    time_ms         bigint NOT NULL,
    start_position  numeric,
    dir             text,
    closed_pnl      numeric,
    hash            text,
    oid             bigint,
    crossed         boolean,
    fee             numeric,
    fee_token       text,
    cloid           text,
    source          text NOT NULL,   -- ws_user_fills | ws_trades | rest | backfill | paper
    received_ms     bigint NOT NULL,
    PRIMARY KEY (address, tid)
);
CREATE INDEX fills_address_time ON fills (address, time_ms);

-- Periodic position truth read from clearinghouseState.
CREATE TABLE position_snapshots (
    id           bigserial PRIMARY KEY,
    address      text NOT NULL,
    coin         text NOT NULL,
    szi          numeric NOT NULL,
    entry_px     numeric,
    time_ms      bigint NOT NULL
);
CREATE INDEX position_snapshots_address_time ON position_snapshots (address, time_ms DESC);

-- Position changes derived from fills or snapshots.
CREATE TABLE position_events (
    id           bigserial PRIMARY KEY,
    address      text NOT NULL,
    coin         text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('open', 'increase', 'decrease', 'close', 'flip')),
    prev_szi     numeric NOT NULL,
    new_szi      numeric NOT NULL,
    px           numeric,
    time_ms      bigint NOT NULL,
    tid          bigint,
    UNIQUE (address, coin, time_ms, tid)
);
CREATE INDEX position_events_address_time ON position_events (address, time_ms DESC);

-- Follows from the TOML (source = 'config') or added over the API (source = 'api').
CREATE TABLE follows (
    id           text PRIMARY KEY,
    leader       text NOT NULL CHECK (leader ~ '^0x[0-9a-f]{40}$'),
    source       text NOT NULL CHECK (source IN ('config', 'api')),
    settings     jsonb NOT NULL,
    enabled      boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- The write-ahead order log: a row exists before its order is sent.
CREATE TABLE orders (
    cloid            text PRIMARY KEY CHECK (cloid ~ '^0x[0-9a-f]{32}$'),
    follow_id        text,
    leader           text,
    source_tid       bigint,
    attempt          integer NOT NULL DEFAULT 0,
    coin             text NOT NULL,
    asset            integer NOT NULL,
    is_buy           boolean NOT NULL,
    px               numeric NOT NULL,
    sz               numeric NOT NULL,
    reduce_only      boolean NOT NULL,
    tif              text NOT NULL,
    nonce            bigint,
    expires_after_ms bigint,
    paper            boolean NOT NULL,
    state            text NOT NULL CHECK (state IN
                       ('planned', 'sending', 'acked', 'filled', 'rejected', 'unknown',
                        'expired', 'canceled')),
    oid              bigint,
    filled_sz        numeric,
    avg_px           numeric,
    error            text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_open ON orders (state) WHERE state IN ('planned', 'sending', 'unknown');
CREATE INDEX orders_follow ON orders (follow_id, created_at DESC);

-- Small durable settings: kill switch, watermarks, calibration results.
CREATE TABLE kv (
    key          text PRIMARY KEY,
    value        jsonb NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
