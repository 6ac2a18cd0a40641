-- walshift state schema, version 5: the cutover controller.
-- Append-only: never edit a released migration; add 0006_*.sql instead.

-- The controller's decision per migration: the authoritative copy of what
-- is published to Redis (see docs/cutover.md). Only the leader (the holder
-- of the Redis lease, recorded in `leader`) writes it; every write is
-- conditional on `leader`, so a deposed controller learns it at once.
create table walshift.controller (
    migration text primary key references walshift.migrations (name) on delete cascade,
    state text not null,
    reason text not null,
    entered_at timestamptz not null,
    -- Published share of reads on the new tables.
    read_new smallint not null check (read_new between 0 and 100),
    -- Published write side: 'old' (write cutover: 'fenced', 'new').
    write_side text not null default 'old',
    -- Version of the last decision published (or to publish).
    version bigint not null,
    -- Start of the soak at the current stage.
    stage_entered_at timestamptz not null,
    -- After a rollback: the configured read_new_percent at that time. A
    -- change of it re-arms the controller, as `walshift resume` does.
    rolled_back_at_percent smallint,
    -- The last decision as published (JSON), republished after a Redis
    -- outage.
    decision jsonb not null,
    -- Instance id of the leader and when it last evaluated.
    leader text,
    leader_seen_at timestamptz,
    updated_at timestamptz not null default now()
);

comment on table walshift.controller is
    'cutover controller state and the authoritative copy of the published traffic decision';

-- When verification last confirmed a difference in a table (either
-- runner). The controller's verification gate fails from then until a
-- clean pass of the table that started afterwards, even if the row was
-- repaired meanwhile: the copy was wrong while reads may have been on new.
alter table walshift.verify_tables add column differences_found_at timestamptz;

-- Audit trail: every decision and state change, with the gates' values.
create table walshift.audit (
    id bigserial primary key,
    migration text not null references walshift.migrations (name) on delete cascade,
    at timestamptz not null default clock_timestamp(),
    -- 'decision' (published), 'state' (state change without a new weight),
    -- 'command', 'leader', 'config'.
    kind text not null,
    from_state text,
    to_state text,
    read_new smallint,
    version bigint,
    reason text not null,
    gates jsonb,
    actor text
);

create index audit_migration_id on walshift.audit (migration, id);

comment on table walshift.audit is 'every controller decision and state change (walshift history)';

-- Commands for the running leader (`walshift resume`, `rollback`, later
-- `cutover`): the CLI inserts a row and waits for the leader's answer. The
-- HTTP listener changes nothing; this table is the only way in.
create table walshift.commands (
    id bigserial primary key,
    migration text not null references walshift.migrations (name) on delete cascade,
    command text not null,
    args jsonb not null default '{}',
    requested_by text not null,
    requested_at timestamptz not null default clock_timestamp(),
    answered_at timestamptz,
    ok boolean,
    answer text
);

create index commands_pending on walshift.commands (migration, id) where answered_at is null;

-- Read-your-writes for applications while reads are split (see
-- docs/traffic.md): the applied source position of a migration, and a wait
-- for it to cover a given position. `walshift.progress.applied_lsn` is the
-- end of the last source commit whose rows are committed on the target, in
-- the same transaction; it also moves past WAL holding nothing for the
-- target, because walshift's heartbeat is a source transaction it applies.
create function walshift.applied_lsn(migration_name text) returns pg_lsn
language sql stable security definer
set search_path = pg_catalog, pg_temp
as $$
    select applied_lsn from walshift.progress where migration = migration_name
$$;

comment on function walshift.applied_lsn(text) is
    'end of the last source commit applied to the target by migration_name (null before the first)';

-- Returns true once the applied position is >= lsn, false after timeout_ms.
-- Each loop iteration reads a new snapshot (volatile function, read
-- committed), so the rows of the applied commit are visible when it returns
-- true (a repeatable-read caller sees its own snapshot: call it outside such
-- a transaction).
create function walshift.wait_for_lsn(migration_name text, lsn pg_lsn, timeout_ms integer)
returns boolean
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    deadline timestamptz := clock_timestamp() + make_interval(secs => greatest(timeout_ms, 0) / 1000.0);
    applied pg_lsn;
begin
    if lsn is null then
        raise exception 'walshift.wait_for_lsn: lsn must not be null';
    end if;
    loop
        select p.applied_lsn into applied from walshift.progress p where p.migration = migration_name;
        if applied is not null and applied >= lsn then
            return true;
        end if;
        if clock_timestamp() >= deadline then
            return false;
        end if;
        perform pg_sleep(least(0.01, greatest(extract(epoch from deadline - clock_timestamp()), 0)));
    end loop;
end
$$;

comment on function walshift.wait_for_lsn(text, pg_lsn, integer) is
    'waits until migration_name has applied the source position lsn; false on timeout';
