-- walshift state schema, version 4: running instances.
-- Append-only: never edit a released migration; add 0005_*.sql instead.

-- The `walshift run` of each migration records where its HTTP listener is,
-- so `walshift status` can ask it for live figures (and falls back to the
-- state schema when it does not answer). Updated at every start.
create table walshift.instances (
    migration text primary key references walshift.migrations (name) on delete cascade,
    pid integer not null,
    host text not null,
    http_addr text not null,
    started_at timestamptz not null default now()
);

comment on table walshift.instances is
    'the last walshift run started per migration and where its /status answers';
