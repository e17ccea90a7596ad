-- Counter-trade opportunities (issue 11 item 7: follow/opportunities.py, store/opportunities.py).

-- One row per top loser's open, add or flip: the opposite trade we would have made.
CREATE TABLE opportunities (
    id             bigserial PRIMARY KEY,
    trader         text NOT NULL,
    coin           text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('open', 'increase', 'flip')),
    trader_side    text NOT NULL CHECK (trader_side IN ('long', 'short')),
    our_side       text NOT NULL CHECK (our_side IN ('long', 'short') AND our_side <> trader_side),
    trader_sz      numeric NOT NULL CHECK (trader_sz > 0),  -- what the trader opened or added
    size           numeric NOT NULL CHECK (size > 0),       -- our suggested size
    price          numeric NOT NULL CHECK (price > 0),      -- p_0
    time_ms        bigint NOT NULL,                         -- when the trader's change was seen
    losers_rank    integer NOT NULL CHECK (losers_rank >= 1),
    losers_window  text NOT NULL,
    recorded_ms    bigint NOT NULL,
    -- The same change seen twice (a re-published event) is one opportunity.
    UNIQUE (trader, coin, time_ms)
);
CREATE INDEX opportunities_recent ON opportunities (time_ms DESC, id DESC);
CREATE INDEX opportunities_trader ON opportunities (trader, time_ms DESC);
CREATE INDEX opportunities_coin ON opportunities (coin, time_ms DESC);

-- One row per opportunity and horizon, written unresolved with the opportunity (so a restart
-- finds every outcome still owed) and resolved once its price is known.
CREATE TABLE opportunity_outcomes (
    opportunity_id  bigint NOT NULL REFERENCES opportunities (id) ON DELETE CASCADE,
    horizon_s       integer NOT NULL CHECK (horizon_s > 0),
    due_ms          bigint NOT NULL,
    price           numeric CHECK (price > 0),              -- p_h
    source          text CHECK (source IN ('mid', 'candle_1m', 'candle_1h')),
    move_bps        numeric,
    return_bps      numeric,                                -- the opposite position's return
    pnl_usd         numeric,                                -- our_sign x size x (p_h - p_0)
    hit             boolean,
    resolved_ms     bigint,
    tries           integer NOT NULL DEFAULT 0,             -- times its price could not be had
    next_try_ms     bigint,                                 -- not before then (candles not out)
    PRIMARY KEY (opportunity_id, horizon_s),
    CHECK ((resolved_ms IS NULL) = (price IS NULL)
           AND (price IS NULL) = (source IS NULL)
           AND (price IS NULL) = (pnl_usd IS NULL)
           AND (price IS NULL) = (hit IS NULL))
);
CREATE INDEX opportunity_outcomes_due ON opportunity_outcomes (due_ms) WHERE resolved_ms IS NULL;
