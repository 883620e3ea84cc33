//! Credential minting.

pub mod jwt;
