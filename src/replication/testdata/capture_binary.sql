-- Workload behind pgoutput_v1_binary.txt: real pgoutput protocol-version-1
-- messages from PostgreSQL 15 with the `binary` option on, so column values
-- arrive as 'b' (type send/receive format) instead of 't' (text).
--
-- Re-capture exactly like capture.sql (scratch cluster with
-- `-c wal_level=logical`, fresh database, superuser):
--
--   psql -X -At -v ON_ERROR_STOP=1 -d walshift_capture \
--        -f capture_binary.sql > body.txt

\set QUIET on
set client_min_messages = warning;

create table bin (id int primary key, t text, n numeric, x bytea, ts timestamptz);

create publication pub for all tables;
select 'slot' from pg_create_logical_replication_slot('cap', 'pgoutput') \g /dev/null

insert into bin values (1, 'hi', 1.5, '\x01', '2000-01-01 00:00:00+00');
insert into bin values (2, null, null, null, null);

\pset tuples_only on
\pset format unaligned
select lsn || ' ' || encode(data, 'hex')
from pg_logical_slot_peek_binary_changes(
    'cap', null, null,
    'proto_version', '1', 'publication_names', 'pub', 'binary', 'true'
);
select 'drop' from pg_drop_replication_slot('cap') \g /dev/null
