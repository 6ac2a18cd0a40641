-- Workload behind usage_events_v1.txt: a larger stream of real pgoutput
-- protocol-version-1 messages from PostgreSQL 15 for the decode benchmark
-- (benches/decode.rs): 12 transactions of 100 INSERTs and 9 transactions of
-- 80 UPDATEs on a billing-like table.
--
-- Re-capture exactly like capture.sql (scratch cluster with
-- `-c wal_level=logical`, fresh database, superuser):
--
--   psql -X -At -v ON_ERROR_STOP=1 -d walshift_capture \
--        -f capture_usage_events.sql > body.txt

\set QUIET on
set client_min_messages = warning;

create table usage_events (
    id           bigint primary key,
    org_id       bigint,
    event_type   text,
    quantity     numeric,
    amount_cents bigint,
    occurred_at  timestamptz,
    payload      jsonb
);

create publication pub for all tables;
select 'slot' from pg_create_logical_replication_slot('cap', 'pgoutput') \g /dev/null

select 'seed' from setseed(0.42) \g /dev/null

do $$
begin
    for batch in 0..11 loop
        insert into usage_events
        select id,
               1000 + (random() * 50)::int,
               (array['api_call', 'storage_gb_hour', 'seat', 'egress_gb'])[1 + (random() * 3)::int],
               round((random() * 100)::numeric, 3),
               (random() * 100000)::bigint,
               '2026-03-01 00:00:00+00'::timestamptz + id * interval '37 seconds',
               jsonb_build_object('region', 'eu-west-1', 'sku', 'sku-' || (id % 17))
        from generate_series(batch * 100 + 1, batch * 100 + 100) as id;
        commit;
    end loop;
    for batch in 0..8 loop
        update usage_events
        set quantity = quantity + 1, amount_cents = amount_cents + 250
        where id > batch * 80 and id <= batch * 80 + 80;
        commit;
    end loop;
end
$$;

\pset tuples_only on
\pset format unaligned
select lsn || ' ' || encode(data, 'hex')
from pg_logical_slot_peek_binary_changes(
    'cap', null, null,
    'proto_version', '1', 'publication_names', 'pub', 'messages', 'true'
);
select 'drop' from pg_drop_replication_slot('cap') \g /dev/null
