-- walshift state schema, version 7: what each version was, and who applied it.
-- Append-only: never edit a released migration; add 0008_*.sql instead.

-- The SHA-256 (hex) of each applied file as the walshift that applied it
-- had it (with LF line endings: `sha256sum sql/0007_schema_checksums.sql`
-- in a checkout), and that walshift ("walshift 0.1.0 on host (pid 4242)").
-- Every walshift compares the recorded checksums with its own files before
-- it uses the state schema, and refuses to when one differs: the file was
-- edited after it was applied (docs/operations.md, "Upgrading walshift").
-- Versions applied before this one have neither: they cannot be checked.
alter table walshift.schema_migrations
    add column checksum text,
    add column applied_by text;

comment on table walshift.schema_migrations is
    'walshift state schema versions applied (sql/NNNN_*.sql), with their checksum and applier';

-- 0005_controller.sql gained this column after its first commit (the one
-- edit ever made to an applied file, before any release): a state schema
-- created by a walshift built in between lacks it. Idempotent elsewhere.
alter table walshift.verify_tables add column if not exists differences_found_at timestamptz;
