//! One integration binary: every module starts real servers on random ports.

mod exchange;
mod failure;
mod helpers;
mod independent;
mod introspection;
mod jwks_remote;
mod listener;
mod quickstart;
mod rejections;
