-- walshift state schema, version 3: verification.
-- Append-only: never edit a released migration; add 0004_*.sql instead.

-- One row per mapped table and runner ('run': the periodic verification
-- inside walshift run; 'cli': walshift verify): the pass in progress, if
-- any, and the last finished one (see docs/verify.md). The cutover
-- controller reads last_clean_at / last_clean_lsn.
create table walshift.verify_tables (
    migration text not null references walshift.migrations (name) on delete cascade,
    source_table text not null,
    target_table text not null,
    runner text not null check (runner in ('run', 'cli')),
    -- The pass in progress ('full' or 'incremental'); null between passes.
    pass_kind text,
    pass_started_at timestamptz,
    -- Source WAL position when the pass started: every chunk it checks
    -- compares the source at or after this position.
    pass_start_lsn pg_lsn,
    -- Key of the last row of the last chunk checked (source text output
    -- per key column): a killed full pass resumes after it.
    pass_last_key text[],
    pass_rows bigint not null default 0,
    pass_chunks bigint not null default 0,
    pass_mismatched bigint not null default 0,
    pass_rechecked bigint not null default 0,
    pass_differences bigint not null default 0,
    pass_unconfirmed bigint not null default 0,
    -- The last finished pass.
    last_kind text,
    last_result text check (last_result in ('clean', 'differences', 'unconfirmed')),
    last_started_at timestamptz,
    last_finished_at timestamptz,
    last_lsn pg_lsn,
    last_rows bigint,
    last_chunks bigint,
    last_mismatched bigint,
    last_rechecked bigint,
    last_differences bigint,
    last_unconfirmed bigint,
    -- The last clean full pass, and the last clean pass of either kind
    -- (an incremental pass only counts after a clean full one).
    last_clean_full_at timestamptz,
    last_clean_full_lsn pg_lsn,
    last_clean_at timestamptz,
    last_clean_lsn pg_lsn,
    updated_at timestamptz not null default now(),
    primary key (migration, target_table, runner)
);

comment on table walshift.verify_tables is
    'verification passes per mapped table: the one in progress and the last finished';

-- Differences found by verification, down to the key; at most
-- [verify] max_differences per table and pass are kept.
create table walshift.verify_differences (
    migration text not null references walshift.migrations (name) on delete cascade,
    target_table text not null,
    -- Source text output of each key column.
    key text[] not null,
    -- 'missing' (in target), 'extra' (in target) or 'different'.
    kind text not null check (kind in ('missing', 'extra', 'different')),
    -- false: a change waiting in the slot could explain it (no running
    -- instance applied it yet); see docs/verify.md.
    confirmed boolean not null,
    -- Differing target columns, with abbreviated values.
    columns text[] not null default '{}',
    source_values text[] not null default '{}',
    target_values text[] not null default '{}',
    runner text not null,
    found_at timestamptz not null default now(),
    primary key (migration, target_table, key)
);

comment on table walshift.verify_differences is
    'differences between transform(source) and the target found by verification';
