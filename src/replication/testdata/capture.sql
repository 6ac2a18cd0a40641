-- Workload behind pgoutput_v1.txt: real pgoutput protocol-version-1 messages
-- captured from PostgreSQL 15.
--
-- Re-capture (as a superuser, on a scratch cluster started with
-- `-c wal_level=logical`, in a fresh database):
--
--   createdb -p 54990 walshift_capture
--   psql -X -At -v ON_ERROR_STOP=1 -p 54990 -d walshift_capture \
--        -f capture.sql > body.txt
--
-- and prepend the comment header of pgoutput_v1.txt. The last statement
-- prints one line per message, `<lsn> <hex payload>`, then drops the slot
-- and the replication origin.
-- Relation oids, xids, LSNs, commit times and the random TOAST value differ
-- on every capture; the tests look relations up by name.

\set QUIET on
set client_min_messages = warning;

-- Schema. An enum column makes pgoutput send a Type ('Y') message.
create type mood as enum ('happy', 'sad');

create table kinds (
    id      int primary key,
    small   smallint,
    big_int bigint,
    amount  numeric(10, 2),
    ratio   numeric,
    label   varchar(20),
    note    text,
    raw     bytea,
    score   float8,
    flag    bool,
    at      timestamptz,
    doc     jsonb,
    tags    int[],
    uid     uuid,
    feeling mood,
    blob    text
);

create table parent (id int primary key, name text);
create table child (
    id        int primary key,
    parent_id int references parent (id),
    note      text
);
create table full_ident (id int, val text, blob text);
alter table full_ident replica identity full;
create table counters (id serial primary key, v text);

create publication pub for all tables;
select 'slot' from pg_create_logical_replication_slot('cap', 'pgoutput') \g /dev/null

-- 1. Insert covering many types, NULLs and unicode text.
insert into kinds values (
    1, -32768, 9223372036854775807, 12345678.90, 'NaN', 'varchar ✓',
    'héllo wörld ✓ 日本語 🐘', '\xdeadbeef00ff', '-Infinity', true,
    '2026-11-21 06:13:51.123456+00', '{"a": [1, 2, {"b": null}]}',
    '{1,NULL,3}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'happy', 'small'
);
insert into kinds (id) values (2);

-- 2. An incompressible value of ~9.6 KB is stored out of line (TOAST).
insert into kinds (id, note, blob)
select 3, 'toasted',
       (select string_agg(md5(random()::text), '') from generate_series(1, 300));

-- 3. An UPDATE that does not touch the TOASTed column: the new tuple
--    carries 'u' (unchanged TOAST) for `blob`.
update kinds set small = 7 where id = 3;

-- 4. An UPDATE that changes the primary key: old key tuple ('K').
update kinds set id = 10 where id = 1;

-- 5. DELETE with the default replica identity: old key tuple ('K').
delete from kinds where id = 2;

-- 6. REPLICA IDENTITY FULL: UPDATE and DELETE carry the whole old row ('O'),
--    including a TOASTed value the new tuple marks unchanged.
insert into full_ident
select 1, 'one', (select string_agg(md5(random()::text), '') from generate_series(1, 300));
update full_ident set val = 'uno' where id = 1;
delete from full_ident where id = 1;

-- 7. A multi-table transaction with a transactional logical message.
begin;
insert into parent values (1, 'p1'), (2, 'p2');
insert into child values (1, 1, 'c1'), (2, 2, null);
select 'msg' from pg_logical_emit_message(true, 'walshift', 'hello') \g /dev/null
update parent set name = 'p1 renamed' where id = 1;
commit;

-- 8. A non-transactional logical message (decoded outside any transaction)
--    with binary content.
select 'msg' from pg_logical_emit_message(false, 'walshift', '\x00ff0a'::bytea) \g /dev/null

-- 9. ALTER TABLE ADD COLUMN mid-stream: the Relation is re-sent with one more
--    column before the next change to the table.
alter table kinds add column extra text default 'x';
insert into kinds (id, note) values (4, 'after add column');

-- 10. A replica identity change re-sends the Relation too.
alter table child replica identity full;
update child set note = 'c2' where id = 2;

-- 11. TRUNCATE: CASCADE, RESTART IDENTITY, and both.
insert into counters (v) values ('a'), ('b');
truncate parent cascade;
truncate counters restart identity;
truncate counters, full_ident restart identity cascade;

-- 12. A transaction replayed through a replication origin carries an Origin
--     ('O') message; its commit time is the origin timestamp set here.
select 'origin' from pg_replication_origin_create('upstream') \g /dev/null
select 'origin' from pg_replication_origin_session_setup('upstream') \g /dev/null
begin;
select 'origin' from pg_replication_origin_xact_setup('0/AABBCCDD', '2026-01-02 03:04:05.123456+00') \g /dev/null
insert into counters (v) values ('from upstream');
commit;
select 'origin' from pg_replication_origin_session_reset() \g /dev/null

\pset tuples_only on
\pset format unaligned
select lsn || ' ' || encode(data, 'hex')
from pg_logical_slot_peek_binary_changes(
    'cap', null, null,
    'proto_version', '1', 'publication_names', 'pub', 'messages', 'true'
);
select 'drop' from pg_drop_replication_slot('cap') \g /dev/null
select 'drop' from pg_replication_origin_drop('upstream') \g /dev/null
