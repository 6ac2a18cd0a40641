-- Example shadow schema for the seed billing tables (sql/demo/seed_billing.sql),
-- matching the mappings in config/dev.toml and config/walshift.example.toml.
-- walshift never creates target tables: the operator owns this DDL and runs
-- it before `walshift setup`.
--
-- What changes on the way:
--   organizations: email -> billing_email (lower-cased), plan_code -> plan
--   usage_events:  org_id -> organization_id, amount_cents -> amount (units),
--                  two new columns: processing_status, processed_at
--   invoices:      org_id -> organization_id, total_cents -> total,
--                  currency upper-cased, period_start dropped
--
-- Foreign keys between shadow tables are DEFERRABLE INITIALLY DEFERRED:
-- walshift merges source transactions and orders each batch parents-first,
-- and deferral makes the check happen once at the commit of the target
-- transaction, where every merged source transaction is complete (see
-- docs/apply.md, "Constraints").

create schema if not exists billing_new;

create table billing_new.organizations (
    id bigint primary key,
    name text not null,
    billing_email text not null,
    plan text not null,
    created_at timestamptz not null
);

create table billing_new.usage_events (
    id bigint primary key,
    organization_id bigint not null
        references billing_new.organizations (id) deferrable initially deferred,
    event_type text not null,
    quantity numeric(20, 6) not null,
    amount numeric(14, 2) not null,
    occurred_at timestamptz not null,
    processing_status text not null default 'pending',
    processed_at timestamptz
);
create index usage_events_organization_occurred
    on billing_new.usage_events (organization_id, occurred_at);

create table billing_new.invoices (
    id bigint primary key,
    organization_id bigint not null
        references billing_new.organizations (id) deferrable initially deferred,
    total numeric(14, 2) not null,
    currency char(3) not null,
    issued_at timestamptz,
    status text not null
);
