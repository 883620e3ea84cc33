//! halflife: a short-lived credential broker for AI workloads.
//!
//! A workload swaps an attested identity (an OIDC/JWT token such as a
//! Kubernetes service-account token or a SPIFFE JWT-SVID) for a scoped,
//! time-bound credential; every issuance is durably recorded before the
//! credential leaves the broker.
//!
//! Dependencies point one way: `http`/`cli` → `broker` → (`attest`, `mint`,
//! `keys`, `store` traits) → `domain`. Only `store` names sqlx, only `http`
//! names axum, and only `app` wires concrete types together.
//! `config` is plain data: each module turns its section into its own
//! settings (e.g. `KeyPolicy::from_config`), and `tests/module_graph.rs`
//! fails on any import cycle between top-level modules.
//!
//! Error policy: library modules return `thiserror` enums that say what went
//! wrong in their own terms (a domain error never wraps `sqlx::Error`);
//! `anyhow` is used only by the CLI, `main` and background jobs, with
//! `.context("failed to …")` at those boundaries.

pub mod agent;
pub mod app;
pub mod attest;
pub mod audit;
pub mod broker;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod http;
pub mod keys;
pub mod mint;
pub mod store;
