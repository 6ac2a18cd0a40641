//! Comparing a shadow table with `transform(source)`, row by row, by query.
//!
//! Each side is a query; every row is rendered by the server as its row text
//! (`(1,acme,a@b.c)`), and the sorted lists are compared. The source query
//! applies the mapping's expressions (cast to the target column types) on the
//! source, so a cross-cluster comparison needs no shared connection.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

/// Every row of `sql`, as row text, sorted.
pub async fn rows(client: &Client, sql: &str) -> Vec<String> {
    let wrapped = format!("select x::text from ({sql}) as x");
    let rows =
        client.query(&wrapped, &[]).await.unwrap_or_else(|e| panic!("{wrapped}\nfailed: {e}"));
    let mut out: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    out.sort();
    out
}

/// The differences between two sorted row lists, for a failure message.
pub fn diff(expected: &[String], actual: &[String]) -> String {
    let missing: Vec<&String> =
        expected.iter().filter(|r| actual.binary_search(r).is_err()).take(10).collect();
    let extra: Vec<&String> =
        actual.iter().filter(|r| expected.binary_search(r).is_err()).take(10).collect();
    format!(
        "{} expected rows, {} actual\nmissing from the target (first 10): {missing:#?}\nunexpected in the target (first 10): {extra:#?}",
        expected.len(),
        actual.len()
    )
}

/// Waits until `target_sql` on `target` returns exactly the rows of
/// `source_sql` on `source`; panics with the difference after `timeout`.
#[track_caller]
pub fn assert_converges<'a>(
    source: &'a Client,
    source_sql: &'a str,
    target: &'a Client,
    target_sql: &'a str,
    timeout: Duration,
) -> impl Future<Output = usize> + 'a {
    let caller = std::panic::Location::caller();
    async move {
        let started = Instant::now();
        loop {
            let expected = rows(source, source_sql).await;
            let actual = rows(target, target_sql).await;
            if expected == actual {
                return expected.len();
            }
            if started.elapsed() > timeout {
                panic!(
                    "{caller}: target did not converge to transform(source) within {timeout:?}\n{}",
                    diff(&expected, &actual)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
