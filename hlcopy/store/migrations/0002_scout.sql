-- Discovery, tracking and the leaderboard (issue 10).

-- Activity from the trade stream, and what tracking learned about each trader.
ALTER TABLE traders
    ADD COLUMN taker_count        bigint  NOT NULL DEFAULT 0,
    ADD COLUMN maker_count        bigint  NOT NULL DEFAULT 0,
    ADD COLUMN coins              text[]  NOT NULL DEFAULT '{}',
    ADD COLUMN master             text,              -- owner of an agent or sub-account
    ADD COLUMN role_at_ms         bigint,
    ADD COLUMN track_requested_ms bigint,            -- POST /traders/{address}/track
    ADD COLUMN seeded             boolean NOT NULL DEFAULT false,  -- from the public leaderboard
    ADD COLUMN account_value      numeric,
    ADD COLUMN positions          jsonb,             -- the last clearinghouseState's positions
    ADD COLUMN positions_at_ms    bigint,
    ADD COLUMN index_points       jsonb;             -- equity index per window, for charts
-- stats (jsonb): the analytics per window ({"day": {...}, "week": ...}); stats_at_ms: when.
CREATE INDEX traders_stats_at ON traders (stats_at_ms) WHERE stats IS NOT NULL;

-- Position events gain liquidations and the figures a reader wants next to them.
ALTER TABLE position_events DROP CONSTRAINT position_events_kind_check;
ALTER TABLE position_events ADD CONSTRAINT position_events_kind_check
    CHECK (kind IN ('open', 'increase', 'decrease', 'close', 'flip', 'liquidated'));
ALTER TABLE position_events
    ADD COLUMN entry_px  numeric,
    ADD COLUMN notional  numeric,
    ADD COLUMN leverage  numeric;
-- One event per (address, coin, time): snapshots have no tid, and a unique constraint over a
-- NULL tid would not deduplicate them.
ALTER TABLE position_events DROP CONSTRAINT position_events_address_coin_time_ms_tid_key;
CREATE UNIQUE INDEX position_events_once ON position_events (address, coin, time_ms, kind);
CREATE INDEX position_events_time ON position_events (time_ms);
CREATE INDEX fills_time ON fills (time_ms);
ALTER TABLE fills ADD COLUMN liquidation boolean NOT NULL DEFAULT false;
