//! Decoding throughput of the pgoutput decoder over real captured streams
//! (`src/replication/testdata/`), reported in messages per second.
//!
//! - `usage_events`: 1,963 messages of INSERT/UPDATE transactions on a
//!   billing-like table (7 columns, text format), the steady-state shape.
//! - `all_message_kinds`: every v1 message kind, including ~9.6 KB TOASTed
//!   values, so per-message cost includes large zero-copy slices.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use walshift::replication::pgoutput::{Decoder, ProtoVersion};

const USAGE_EVENTS: &str = include_str!("../src/replication/testdata/usage_events_v1.txt");
const ALL_MESSAGE_KINDS: &str = include_str!("../src/replication/testdata/pgoutput_v1.txt");

/// The payloads of a `<lsn> <hex>` fixture, skipping `#` comments.
fn payloads(fixture: &str) -> Vec<Bytes> {
    fixture
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (_, hex) = line.split_once(' ').expect("fixture line is `<lsn> <hex>`");
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("fixture hex"))
                .collect();
            Bytes::from(bytes)
        })
        .collect()
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("pgoutput_decode");
    for (name, fixture) in
        [("usage_events", USAGE_EVENTS), ("all_message_kinds", ALL_MESSAGE_KINDS)]
    {
        let payloads = payloads(fixture);
        group.throughput(Throughput::Elements(payloads.len() as u64));
        group.bench_function(name, |b| {
            let mut decoder = Decoder::new(ProtoVersion::V1);
            b.iter(|| {
                for data in &payloads {
                    let message = decoder.decode(data.clone()).expect("captured messages decode");
                    black_box(message);
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
