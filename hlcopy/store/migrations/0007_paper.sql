-- Paper execution and the copy log (issue 11, package C: follow/executor.py, store/copies.py).

-- One row per order we meant to send (written before it is "sent": the write-ahead intent) and
-- per skipped copy (status 'skipped', no cloid). Live execution will write the same rows.
CREATE TABLE copies (
    id                 bigserial PRIMARY KEY,
    cloid              text UNIQUE CHECK (cloid ~ '^0x[0-9a-f]{32}$'),
    status             text NOT NULL CHECK (status IN
                         ('planned', 'sending', 'filled', 'partial', 'rejected', 'unknown',
                          'never_arrived', 'skipped')),
    paper              boolean NOT NULL,
    follow_ids         text[] NOT NULL,           -- the follows that caused it
    attribution        jsonb NOT NULL,            -- [[follow_id, size share], ...]
    leader             text,
    coin               text NOT NULL,
    is_buy             boolean,
    sz                 numeric,                   -- our intent (a skip: what was not sent)
    limit_px           numeric,
    reduce_only        boolean,
    reason             text,                      -- why the copier decided it
    skip_reason        text,                      -- below_min_notional, coin_filtered, ...
    attempt            integer NOT NULL DEFAULT 0,
    decided_ms         bigint NOT NULL,
    sent_ms            bigint,
    settled_ms         bigint,
    leader_tid         bigint,                    -- the leader fill that triggered it
    leader_side        char(1) CHECK (leader_side IN ('B', 'A')),
    leader_px          numeric,
    leader_sz          numeric,
    leader_time_ms     bigint,
    filled_sz          numeric NOT NULL DEFAULT 0,
    avg_px             numeric,
    fee                numeric NOT NULL DEFAULT 0,
    closed_pnl         numeric,
    slippage_bps       numeric,                   -- vs the leader's price; positive = worse
    decision_delay_ms  bigint,                    -- leader fill -> decision
    send_delay_ms      bigint,                    -- leader fill -> send
    error              text
);
CREATE INDEX copies_recent ON copies (decided_ms DESC, id DESC);
CREATE INDEX copies_follow ON copies USING gin (follow_ids);
CREATE INDEX copies_open ON copies (status) WHERE status IN ('planned', 'sending', 'unknown');
-- The same skip of the same leader fill is recorded once, however often it is re-decided.
CREATE UNIQUE INDEX copies_skip_once ON copies (leader, leader_tid, coin, skip_reason, follow_ids)
    WHERE status = 'skipped' AND leader_tid IS NOT NULL;

-- The paper account: one row, rewritten in the transaction that books each fill or funding.
CREATE TABLE paper_account (
    id              smallint PRIMARY KEY CHECK (id = 1),
    account         jsonb NOT NULL,               -- PaperAccount.to_dict()
    attributed      jsonb NOT NULL,               -- {follow_id: {coin: szi}}
    funded_hour_ms  bigint,                       -- the last funding hour booked
    updated_ms      bigint NOT NULL
);

-- Every paper fill, with the fields a real fill has.
CREATE TABLE paper_fills (
    id              bigserial PRIMARY KEY,
    cloid           text NOT NULL REFERENCES copies (cloid),
    coin            text NOT NULL,
    is_buy          boolean NOT NULL,
    sz              numeric NOT NULL,
    px              numeric NOT NULL,
    fee             numeric NOT NULL,
    closed_pnl      numeric NOT NULL,
    start_position  numeric NOT NULL,
    dir             text NOT NULL,
    time_ms         bigint NOT NULL
);
CREATE INDEX paper_fills_time ON paper_fills (time_ms);

-- Funding booked on paper positions, one row per coin and funding hour.
CREATE TABLE paper_funding (
    hour_ms   bigint NOT NULL,
    coin      text NOT NULL,
    szi       numeric NOT NULL,
    px        numeric NOT NULL,                   -- the oracle price it was paid at
    rate      numeric NOT NULL,
    hours     integer NOT NULL DEFAULT 1,         -- more than 1 after a downtime
    usdc      numeric NOT NULL,                   -- received (negative: paid)
    PRIMARY KEY (hour_ms, coin)
);
