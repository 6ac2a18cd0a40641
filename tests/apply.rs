//! `walshift run`: changes applied into shadow tables, compared row by row
//! with `transform(source)`.

use std::time::Duration;

use crate::support::cli::Walshift;
use crate::support::pg::{PgCluster, TestDb};
use crate::support::shadow::assert_converges;

const WAIT: Duration = Duration::from_secs(60);

/// The seed billing tables (empty), created on the source.
const SOURCE_DDL: &str = "
create table organizations (
    id bigint primary key, name text not null, email text not null,
    plan_code text not null default 'free', created_at timestamptz not null default now());
create table usage_events (
    id bigint primary key, org_id bigint not null references organizations (id),
    event_type text not null, quantity numeric(20, 6) not null, amount_cents bigint not null,
    occurred_at timestamptz not null default now(), payload jsonb);
create table invoices (
    id bigint primary key, org_id bigint not null references organizations (id),
    period_start date not null, total_cents bigint not null, currency text not null default 'usd',
    status text not null default 'open', issued_at timestamptz);
";

/// Mappings with renames, constants, casts, expressions, a filter and a
/// `verify = false` column (as in config/dev.toml, plus a filter).
const BILLING_TABLES: &str = r#"
[[tables]]
source = "public.organizations"
target = "billing_new.organizations"
[tables.columns]
id = "id"
name = "name"
billing_email = "lower(email)"
plan = "plan_code"
created_at = "created_at"

[[tables]]
source = "public.usage_events"
target = "billing_new.usage_events"
filter = "event_type <> 'internal_test'"
[tables.columns]
id = "id"
organization_id = "org_id"
event_type = "event_type"
quantity = "quantity::numeric(20,6)"
amount = "amount_cents / 100.0"
occurred_at = "occurred_at"
processing_status = "'migrated'"
processed_at = { expr = "now()", verify = false }

[[tables]]
source = "public.invoices"
target = "billing_new.invoices"
truncate = false
[tables.columns]
id = "id"
organization_id = "org_id"
total = "total_cents / 100.0"
currency = "upper(currency)"
issued_at = "issued_at"
status = "status"
"#;

/// `transform(source)` per table, evaluated on the source with the target
/// column types, and the matching target query (verified columns only).
const COMPARE: &[(&str, &str)] = &[
    (
        "select id, name, lower(email) as billing_email, plan_code as plan, created_at from public.organizations",
        "select id, name, billing_email, plan, created_at from billing_new.organizations",
    ),
    (
        "select id, org_id, event_type, quantity::numeric(20,6), (amount_cents / 100.0)::numeric(14,2), \
         occurred_at, 'migrated'::text from public.usage_events where event_type <> 'internal_test'",
        "select id, organization_id, event_type, quantity, amount, occurred_at, processing_status \
         from billing_new.usage_events",
    ),
    (
        "select id, org_id, (total_cents / 100.0)::numeric(14,2), upper(currency)::char(3), issued_at, status \
         from public.invoices",
        "select id, organization_id, total, currency, issued_at, status from billing_new.invoices",
    ),
];

async fn billing_source(db: &TestDb<'_>) {
    db.execute(SOURCE_DDL).await;
}

/// A workload over the billing tables touching every mapping feature.
const WORKLOAD: &str = "
insert into organizations (id, name, email, plan_code)
    select g, 'Org ' || g, 'Billing-' || g || '@Example.COM', 'team' from generate_series(1, 50) g;
insert into usage_events (id, org_id, event_type, quantity, amount_cents)
    select g, 1 + g % 50, (array['api_call', 'internal_test', 'egress_gb'])[1 + g % 3], g / 7.0, g * 37
    from generate_series(1, 600) g;
insert into invoices (id, org_id, period_start, total_cents, currency)
    select g, 1 + g % 50, date '2026-01-01', g * 1234, 'eur' from generate_series(1, 40) g;
update usage_events set amount_cents = amount_cents + 1 where id % 5 = 0;
-- moves rows into and out of the filter
update usage_events set event_type = 'internal_test' where id between 1 and 30 and event_type = 'api_call';
update usage_events set event_type = 'api_call' where id between 31 and 60 and event_type = 'internal_test';
delete from usage_events where id % 11 = 0;
-- key changes
update usage_events set id = id + 100000 where id between 100 and 120;
update organizations set email = 'NEW-' || id || '@X.ORG' where id < 10;
begin;
insert into organizations (id, name, email) values (1000, 'late', 'Late@Org');
insert into usage_events (id, org_id, event_type, quantity, amount_cents) values (5000, 1000, 'api_call', 1, 1);
update invoices set status = 'paid' where id < 20;
commit;
delete from invoices where id > 35;
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_database_mapping_applies_renames_casts_expressions_and_filter() {
    let db = TestDb::new(PgCluster::shared()).await;
    billing_source(&db).await;
    db.execute(include_str!("../sql/billing_new.sql")).await;
    let ws = Walshift::with_tables(&db, None, BILLING_TABLES, "");
    ws.run_ok(&["setup"]).await;
    let run = ws.spawn_run();
    db.execute(WORKLOAD).await;
    let client = db.client().await;
    for (source_sql, target_sql) in COMPARE {
        assert_converges(&client, source_sql, &client, target_sql, WAIT).await;
    }
    // TRUNCATE propagates to organizations' children only where configured:
    // invoices has truncate = false, so its rows stay.
    let invoices_before: i64 =
        client.query_one("select count(*) from billing_new.invoices", &[]).await.unwrap().get(0);
    db.execute("truncate usage_events").await;
    assert_converges(&client, COMPARE[1].0, &client, COMPARE[1].1, WAIT).await;
    let invoices_after: i64 =
        client.query_one("select count(*) from billing_new.invoices", &[]).await.unwrap().get(0);
    assert_eq!(invoices_before, invoices_after);
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "log:\n{log}");
    let processed: i64 = client
        .query_one("select count(*) from billing_new.usage_events where processed_at is null", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(processed, 0, "processed_at = now() is filled");
}
