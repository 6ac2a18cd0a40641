-- Sample data for the seed billing schema (seed_billing.sql).

insert into public.organizations (name, email, plan_code)
select 'Org ' || g, 'Billing-' || g || '@Example.COM', (array['free', 'team', 'enterprise'])[1 + g % 3]
from generate_series(1, 100) g;

insert into public.usage_events (org_id, event_type, quantity, amount_cents, occurred_at, payload)
select 1 + g % 100,
       (array['api_call', 'storage_gb_hour', 'egress_gb'])[1 + g % 3],
       round((g % 1000) / 7.0, 6),
       g * 37 % 100000,
       now() - (g % 86400) * interval '1 second',
       jsonb_build_object('region', 'eu-' || (g % 5), 'sku', 'sku-' || (g % 37))
from generate_series(1, 200000) g;

insert into public.invoices (org_id, period_start, total_cents, currency, status, issued_at)
select 1 + g % 100, date '2026-01-01' + (g / 100) * interval '1 month', g * 1234 % 10000000,
       (array['usd', 'eur'])[1 + g % 2],
       (array['open', 'paid', 'void'])[1 + g % 3], now() - g * interval '1 hour'
from generate_series(1, 300) g;

analyze;
