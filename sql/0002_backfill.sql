-- walshift state schema, version 2: backfill progress.
-- Append-only: never edit a released migration; add 0003_*.sql instead.

-- One row per mapped table: how far its backfill has copied. Updated in the
-- same target transaction as the chunk of rows it covers (see
-- docs/backfill.md), so after a crash the backfill resumes after the last
-- committed chunk.
create table walshift.backfill (
    migration text not null references walshift.migrations (name) on delete cascade,
    source_table text not null,
    target_table text not null,
    -- Key of the last row copied, as the source's text output of each key
    -- column; null before the first chunk.
    last_key text[],
    rows_copied bigint not null default 0,
    chunks bigint not null default 0,
    -- pg_class.reltuples of the source table when the backfill started.
    rows_estimated bigint not null default 0,
    -- Re-copy (walshift backfill --restart): overwrite rows the target has.
    overwrite boolean not null default false,
    -- Why the backfill is waiting, while it is (e.g. the lag threshold).
    paused_reason text,
    pauses bigint not null default 0,
    started_at timestamptz,
    completed_at timestamptz,
    updated_at timestamptz not null default now(),
    primary key (migration, source_table, target_table)
);

comment on table walshift.backfill is
    'backfill progress per mapped table, checkpointed with each chunk of copied rows';
