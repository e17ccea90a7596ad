-- A followed leader's leverage, aggregated per UTC day from its clearinghouseState reads: the
-- history its 30-day norm is computed from (follow/norms.py), kept across restarts.
CREATE TABLE leader_leverage_days (
    leader      text NOT NULL,
    day         integer NOT NULL,          -- days since the epoch, UTC
    lev_sum     double precision NOT NULL, -- sum of the sampled leverages (notional / value)
    samples     integer NOT NULL,
    lev_max     double precision NOT NULL,
    PRIMARY KEY (leader, day)
);
