-- walshift state schema, version 6: the write cutover.
-- Append-only: never edit a released migration; add 0007_*.sql instead.

-- One row per attempt of the write cutover (see docs/cutover.md, "Write
-- cutover"). The row is written before the fence is taken and updated at
-- every step, so a restarted walshift (or the standby) finds an attempt
-- that did not end (outcome is null) and brings it to an end: forward when
-- the fence triggers exist on the old tables (the fence committed), back
-- otherwise. The fence itself lives on the source; this row is the record
-- of what was attempted, not the commit point.
create table walshift.cutover_attempts (
    id bigserial primary key,
    migration text not null references walshift.migrations (name) on delete cascade,
    started_at timestamptz not null default clock_timestamp(),
    requested_by text not null,
    -- The last step reached: check, announce, precheck, fence, drain,
    -- final_check, sequences, flip.
    step text not null,
    -- null while in progress; 'cut_over', 'aborted', 'recovered_forward',
    -- 'recovered_back', 'undone' (rollback after the flip).
    outcome text,
    reason text,
    -- The barrier written once the fence was held: every change to a
    -- mapped table committed after it is a write that got past the fence.
    barrier_lsn pg_lsn,
    lock_attempts integer,
    lock_wait_seconds float8,
    drain_seconds float8,
    check_seconds float8,
    -- From the lock granted to write "new" published.
    pause_seconds float8,
    -- The sequences moved: [{"sequence", "source", "from", "to"}].
    sequences jsonb,
    finished_at timestamptz
);

create index cutover_attempts_open on walshift.cutover_attempts (migration) where outcome is null;

comment on table walshift.cutover_attempts is
    'write cutover attempts: steps reached, outcome, measured pause (walshift cutover)';

-- A command the leader has started on (a write cutover takes seconds):
-- the requester stops offering to withdraw it, and waits for the answer.
alter table walshift.commands add column picked_at timestamptz;
-- The command was carried out and failed (a cutover that aborted), as
-- opposed to refused (ok = false, failed = false: nothing was attempted).
alter table walshift.commands add column failed boolean not null default false;
