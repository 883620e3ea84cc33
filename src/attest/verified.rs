//! Attestations verified recently, remembered so that a proof presented
//! again is not verified again.
//!
//! A workload presents the same proof until it rotates it: a platform
//! token by every renewal of every credential for most of an hour, an
//! X.509-SVID on every request of its connections. Verifying it (a
//! signature, a certificate chain) is most of what checking it costs. An
//! entry is found by the SHA-256 of the whole proof, and answers only
//! while `now` is within the times its verification checked and while
//! what it was verified against (an issuer's key set, a trust domain's
//! bundle) is still the one in use; anything else sends the proof through
//! full verification again.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use time::OffsetDateTime;

use super::jwt::Attestation;

const SHARDS: usize = 16;
/// Most proofs remembered per shard; a full shard forgets expired entries,
/// then everything.
const PER_SHARD: usize = 1024;

/// Verified proofs, by the SHA-256 of the proof; `B` is what each was
/// verified against.
pub(super) struct Verified<B> {
    shards: [Mutex<HashMap<[u8; 32], Entry<B>>>; SHARDS],
}

/// One verified proof.
pub(super) struct Entry<B> {
    pub attestation: Attestation,
    /// What the proof was verified against.
    pub basis: B,
    /// The proof's times hold from `valid_from` until before `valid_until`
    /// (unix seconds).
    pub valid_from: i64,
    pub valid_until: i64,
}

impl<B> Default for Verified<B> {
    fn default() -> Self {
        Self { shards: std::array::from_fn(|_| Mutex::default()) }
    }
}

impl<B> Verified<B> {
    fn shard(&self, digest: &[u8; 32]) -> MutexGuard<'_, HashMap<[u8; 32], Entry<B>>> {
        self.shards[usize::from(digest[0]) % SHARDS].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The attestation remembered for `digest`, if its times hold at `now`
    /// and `in_use` says what it was verified against still is.
    pub fn get(&self, digest: &[u8; 32], now: OffsetDateTime, in_use: impl FnOnce(&B) -> bool) -> Option<Attestation> {
        let now = now.unix_timestamp();
        let shard = self.shard(digest);
        let entry = shard.get(digest)?;
        (entry.valid_from <= now && now < entry.valid_until && in_use(&entry.basis)).then(|| entry.attestation.clone())
    }

    pub fn put(&self, digest: [u8; 32], entry: Entry<B>, now: OffsetDateTime) {
        let now = now.unix_timestamp();
        let mut shard = self.shard(&digest);
        if shard.len() >= PER_SHARD {
            shard.retain(|_, e| now < e.valid_until);
            if shard.len() >= PER_SHARD {
                shard.clear();
            }
        }
        shard.insert(digest, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(t).unwrap()
    }

    fn entry(basis: u32, valid_from: i64, valid_until: i64) -> Entry<u32> {
        let attestation = Attestation {
            issuer_name: "spire".into(),
            iss: "spiffe://prod.example".into(),
            subject: format!("spiffe://prod.example/ns/ai/sa/agent-{basis}"),
            token_id: "x509-sha256:00".into(),
            expires_at: at(valid_until),
            single_use: false,
            replay_until: at(valid_until),
        };
        Entry { attestation, basis, valid_from, valid_until }
    }

    /// A digest in shard 0, numbered `i`.
    fn digest(i: usize) -> [u8; 32] {
        let mut d = [0u8; 32];
        d[1..9].copy_from_slice(&(i as u64).to_le_bytes());
        d
    }

    #[test]
    fn an_entry_answers_within_its_times_while_its_basis_is_in_use() {
        let verified = Verified::default();
        let remembered = entry(7, 100, 200);
        let attestation = remembered.attestation.clone();
        verified.put(digest(1), remembered, at(150));
        let current = |b: &u32| *b == 7;
        assert_eq!(verified.get(&digest(1), at(100), current), Some(attestation.clone()));
        assert_eq!(verified.get(&digest(1), at(199), current), Some(attestation));
        assert_eq!(verified.get(&digest(1), at(99), current), None, "before valid_from");
        assert_eq!(verified.get(&digest(1), at(200), current), None, "valid_until is excluded");
        assert_eq!(verified.get(&digest(1), at(150), |b: &u32| *b == 8), None, "another basis is in use");
        assert_eq!(verified.get(&digest(2), at(150), current), None, "another proof");
    }

    #[test]
    fn a_full_shard_forgets_expired_entries_then_everything() {
        let verified = Verified::default();
        verified.put(digest(0), entry(0, 0, 1_000), at(0));
        for i in 1..PER_SHARD {
            verified.put(digest(i), entry(0, 0, 10), at(0));
        }
        // Full: at 50 all but the first have expired and are forgotten.
        verified.put(digest(PER_SHARD), entry(0, 0, 1_000), at(50));
        assert_eq!(verified.shard(&digest(0)).len(), 2);
        assert!(verified.get(&digest(0), at(50), |_| true).is_some());
        assert!(verified.get(&digest(PER_SHARD), at(50), |_| true).is_some());
        // Full of live entries: all are forgotten but the newest.
        for i in PER_SHARD + 1..2 * PER_SHARD - 1 {
            verified.put(digest(i), entry(0, 0, 1_000), at(50));
        }
        verified.put(digest(2 * PER_SHARD), entry(0, 0, 1_000), at(50));
        assert_eq!(verified.shard(&digest(0)).len(), 1);
        assert!(verified.get(&digest(2 * PER_SHARD), at(50), |_| true).is_some());
    }
}
