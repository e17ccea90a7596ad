-- The leaderboard's figures of traders.stats, packed (scout/leaderboard.py `pack_metrics`):
-- written with stats in the same statement, read at start instead of the JSON, which takes
-- PostgreSQL and Python seconds per 100,000 traders to take apart. NULL for rows written before
-- this migration: the start reads those from stats and writes the packed form back.
ALTER TABLE traders ADD COLUMN board_figures bytea;
-- Floats do not compress; keep them out of pglz (they are a few hundred bytes, stored inline).
ALTER TABLE traders ALTER COLUMN board_figures SET STORAGE EXTERNAL;
