//! Only a failure to reach the database or to commit is an outage. An
//! error a request's own query causes (PostgreSQL refuses a NUL in text:
//! SQLSTATE 22021, `invalid byte sequence for encoding "UTF8": 0x00`) is the
//! request's, reported as such by the store, and a write refused for it
//! fails alone, not the group-commit batch it shared.

use halflife::clock::Clock;
use halflife::store::{AuditEvent, AuditFilter, Outcome, RequestMeta, StoreError};

use crate::helpers::*;

fn event(kind: &str, reason: &str, app: &TestApp) -> AuditEvent {
    let mut event = AuditEvent::new(kind, Outcome::Failure, app.clock.now(), &RequestMeta::default());
    event.reason = Some(reason.to_owned());
    event
}

#[tokio::test]
async fn a_value_the_database_refuses_is_not_an_outage() {
    let Some(app) = spawn_app().await else { return };
    let nul = "credential\u{0}issued".to_owned();
    let filters = [
        AuditFilter { system: Some(nul.clone()), ..AuditFilter::default() },
        AuditFilter { owner: Some(nul.clone()), ..AuditFilter::default() },
        AuditFilter { workload: Some(nul.clone()), ..AuditFilter::default() },
        AuditFilter { issuer: Some(nul.clone()), ..AuditFilter::default() },
        AuditFilter { kind: Some(nul.clone()), ..AuditFilter::default() },
    ];
    for filter in filters {
        match app.broker.audit.audit_events(&filter, None, 10).await {
            // SQLite compares the text and finds nothing.
            Ok(events) => assert!(!postgres() && events.is_empty(), "{filter:?}: {events:?}"),
            Err(StoreError::InvalidValue(why)) => assert!(postgres() && why.contains("0x00"), "{why}"),
            Err(other) => panic!("{filter:?}: {other:?} (only a value refused may answer)"),
        }
    }
    match app.broker.log.record_event(event("test.refused", &nul, &app)).await {
        Ok(()) => assert!(!postgres()),
        Err(StoreError::InvalidValue(why)) => assert!(postgres() && why.contains("0x00"), "{why}"),
        Err(other) => panic!("{other:?}"),
    }
    // The writer goes on as before.
    app.broker.log.record_event(event("test.refused", "after", &app)).await.unwrap();
    let reasons: Vec<_> = app.events("test.refused").await.into_iter().map(|e| e.reason.unwrap()).collect();
    assert_eq!(reasons.last().map(String::as_str), Some("after"));
}

/// On PostgreSQL: a write the database refuses, queued in one batch with
/// others, fails alone; the others commit. The batch is made by holding the
/// audit table's lock while a first write waits for it, then queueing the
/// two more.
#[tokio::test]
async fn a_refused_write_fails_alone_not_with_its_batch() {
    if !postgres() {
        return; // SQLite stores a NUL in text: nothing is refused.
    }
    let Some(app) = spawn_app().await else { return };
    let log = std::sync::Arc::clone(&app.broker.log);
    let mut lock = app.lock_database().await;
    let first = tokio::spawn({
        let (log, event) = (log.clone(), event("test.batch", "first", &app));
        async move { log.record_event(event).await }
    });
    // The writer is inside the first write's transaction, waiting for the
    // lock: whatever is queued now is the next batch.
    let waiting = "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                   AND datname = current_database()";
    assert!(eventually(std::time::Duration::from_secs(10), || async { app.scalar(waiting).await > 0 }).await);
    let refused = tokio::spawn({
        let (log, event) = (log.clone(), event("test.batch", "refused\u{0}", &app));
        async move { log.record_event(event).await }
    });
    let second = tokio::spawn({
        let (log, event) = (log.clone(), event("test.batch", "second", &app));
        async move { log.record_event(event).await }
    });
    // Both are polled up to the writer's queue before this task goes on.
    tokio::task::yield_now().await;
    lock.execute("ROLLBACK").await.unwrap();

    first.await.unwrap().unwrap();
    second.await.unwrap().expect("a write queued with a refused one is not refused for it");
    match refused.await.unwrap() {
        Err(StoreError::InvalidValue(why)) => assert!(why.contains("0x00"), "{why}"),
        other => panic!("{other:?}"),
    }
    let reasons: Vec<_> = app.events("test.batch").await.into_iter().map(|e| e.reason.unwrap()).collect();
    assert_eq!(reasons, ["first", "second"]);
}
