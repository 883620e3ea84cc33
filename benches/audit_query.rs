//! First page of one system's audit events out of 1,000,000.
//!
//! Run: `cargo bench --bench audit_query`. Builds a SQLite database of
//! 1,000,000 events spread over 100 systems in a temporary directory, then
//! times the first page (100 events) of one system's events through the
//! store, as `GET /v1/audit/events?system=…` runs it. Prints the median of
//! 21 runs in milliseconds.
#![expect(clippy::unwrap_used, reason = "a benchmark aborts on setup failure")]

use std::time::{Duration, Instant};

use halflife::store::sqlite::SqliteStore;
use halflife::store::{AuditFilter, AuditReader};

const EVENTS: i64 = 1_000_000;

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/bench.db", dir.path().display());
    let store = SqliteStore::open(&url, Duration::from_secs(5), 4, true).await.unwrap();
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url).await.unwrap();
    let started = Instant::now();
    sqlx::query(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 999) \
         INSERT INTO audit_names (id, name) SELECT 1 + i, 'spiffe://prod/ns/ai/sa/w' || i FROM n; \
         INSERT INTO audit_names (id, name) VALUES (1001, 'k8s workload'), (1002, 'biz tech'); \
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {EVENTS}) \
         INSERT INTO audit_events (seq, time_ms, kind, outcome, actor_id, system_id, owners_id, jti, subject_id, hash) \
         SELECT i, 1700000000000 + i, 'credential.issued', 'success', 1001, 'system-' || (i % 100), \
         1002, 'jti-' || i, 1 + i % 1000, randomblob(32) FROM n"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query("ANALYZE").execute(&mut conn).await.unwrap();
    println!("loaded {EVENTS} events in {:.1} s", started.elapsed().as_secs_f64());

    let filter = AuditFilter { system: Some("system-42".into()), ..AuditFilter::default() };
    let mut runs: Vec<f64> = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        let page = store.audit_events(&filter, None, 100).await.unwrap();
        runs.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(page.len(), 100);
    }
    runs.sort_by(f64::total_cmp);
    println!("first page of one system's events out of {EVENTS}: median {:.2} ms (max {:.2} ms)", runs[10], runs[20]);
}
