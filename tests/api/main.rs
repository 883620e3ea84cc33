//! One integration binary: every module starts real servers on random ports.
#![expect(clippy::unwrap_used, reason = "test helpers abort the test on setup failure")]
#![expect(clippy::expect_used, reason = "test helpers abort the test on setup failure")]

mod agent;
mod approvals;
mod audit;
mod browser;
mod canary;
mod cli;
mod clients;
mod console;
mod console_browser;
mod crash;
mod delegation;
mod deploy;
mod disk;
mod docs;
mod exchange;
mod failure;
mod faults;
mod governance;
mod helpers;
mod hostile;
mod idp;
mod independent;
mod introspection;
mod jwks_remote;
mod lifecycle;
mod listener;
mod logins;
mod metrics;
mod mtls;
mod openapi;
mod people;
mod people_cli;
mod quickstart;
mod rejections;
mod rotation;
mod secrets;
mod single_use;
mod storage_errors;
mod throttle;
mod tls_scan;
mod token_status;
