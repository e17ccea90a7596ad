-- Per-follow performance (issue 11 item 8): the attribution transfers between follows. The copier
-- nets two follows' opposite wishes in one coin inside the account: attribution moves at the mid,
-- no trade, so no copy row records it; without these rows a follow's PnL could not be rebuilt.
CREATE TABLE follow_transfers (
    id           bigserial PRIMARY KEY,
    coin         text    NOT NULL,
    from_follow  text    NOT NULL,
    to_follow    text    NOT NULL,
    sz           numeric NOT NULL CHECK (sz > 0),
    px           numeric NOT NULL CHECK (px > 0),
    time_ms      bigint  NOT NULL
);
CREATE INDEX follow_transfers_from ON follow_transfers (from_follow, time_ms);
CREATE INDEX follow_transfers_to ON follow_transfers (to_follow, time_ms);
