-- walshift state schema, version 1.
-- Append-only: never edit a released migration; add 0002_*.sql instead.

create table walshift.migrations (
    name text primary key,
    source_slot text not null,
    source_publication text not null,
    created_at timestamptz not null default now()
);

comment on table walshift.migrations is
    'one row per walshift migration using this target (set up by walshift setup)';

-- The applied position of the stream, written in the same transaction as
-- the rows it covers (see docs/apply.md).
create table walshift.progress (
    migration text primary key references walshift.migrations (name) on delete cascade,
    applied_lsn pg_lsn not null,
    updated_at timestamptz not null default now()
);
