//! Credential minting.

pub mod jwt;
pub mod login;
pub mod secret;
