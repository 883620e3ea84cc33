//! Credential minting.

pub mod jwt;
pub mod secret;
