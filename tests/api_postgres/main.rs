//! The API suite again, on PostgreSQL: the same test sources as `tests/api`
//! (the helpers give every test a database of its own on the server
//! `HALFLIFE_TEST_DATABASE_URL` names), plus what only several replicas
//! sharing one database can show. Without the variable every test is
//! skipped with the reason printed.
#![expect(clippy::unwrap_used, reason = "test helpers abort the test on setup failure")]
#![expect(clippy::expect_used, reason = "test helpers abort the test on setup failure")]
#![allow(dead_code, reason = "the shared helpers also serve modules only the SQLite binary includes")]

#[path = "../api/approvals.rs"]
mod approvals;
#[path = "../api/audit.rs"]
mod audit;
#[path = "../api/cli.rs"]
mod cli;
#[path = "../api/crash.rs"]
mod crash;
#[path = "../api/delegation.rs"]
mod delegation;
#[path = "../api/exchange.rs"]
mod exchange;
#[path = "../api/failure.rs"]
mod failure;
#[path = "../api/faults.rs"]
mod faults;
#[path = "../api/governance.rs"]
mod governance;
#[path = "../api/helpers.rs"]
mod helpers;
#[path = "../api/hostile.rs"]
mod hostile;
#[path = "../api/independent.rs"]
mod independent;
#[path = "../api/introspection.rs"]
mod introspection;
#[path = "../api/jwks_remote.rs"]
mod jwks_remote;
#[path = "../api/lifecycle.rs"]
mod lifecycle;
#[path = "../api/logins.rs"]
mod logins;
#[path = "../api/metrics.rs"]
mod metrics;
#[path = "../api/mtls.rs"]
mod mtls;
mod outage;
#[path = "../api/people.rs"]
mod people;
#[path = "../api/rejections.rs"]
mod rejections;
mod replicas;
#[path = "../api/rotation.rs"]
mod rotation;
#[path = "../api/secrets.rs"]
mod secrets;
#[path = "../api/single_use.rs"]
mod single_use;
#[path = "../api/storage_errors.rs"]
mod storage_errors;
#[path = "../api/token_status.rs"]
mod token_status;
