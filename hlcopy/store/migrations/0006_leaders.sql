-- Leader books (issue 11): every fill of a followed leader, once per (leader, tid), whichever
-- source saw it first (userFills stream or snapshot, trades firehose, REST gap-fill).
CREATE TABLE leader_fills (
    leader          text    NOT NULL,
    tid             bigint  NOT NULL,
    coin            text    NOT NULL,
    side            char(1) NOT NULL CHECK (side IN ('B', 'A')),
    px              numeric NOT NULL,
    sz              numeric NOT NULL,
    time_ms         bigint  NOT NULL,
    start_position  numeric,                 -- known from userFills and REST, not the firehose
    source          text    NOT NULL CHECK (source IN ('userFills', 'firehose', 'rest')),
    confirmed       boolean NOT NULL,        -- false: a firehose hint before calibration
    snapshot        boolean NOT NULL,        -- first seen in a userFills snapshot (history)
    changed         boolean NOT NULL,        -- moved the leader's book (a LeaderChange)
    received_ms     bigint  NOT NULL,
    PRIMARY KEY (leader, tid)
);
CREATE INDEX leader_fills_leader_time ON leader_fills (leader, time_ms DESC);
