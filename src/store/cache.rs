//! In-memory views in front of the database, so the hot path reads no rows:
//! the catalog (grants with their systems and owners, revocation epochs,
//! admin tokens) and an index of issued credentials by `jti`.
//!
//! Both views are caches of the database, never the other way round, and
//! each is dropped the moment it may be stale:
//! - a write by this process bumps the catalog generation (or marks the one
//!   revoked credential) before the caller is answered, so a replica always
//!   reads its own writes;
//! - on PostgreSQL, triggers `NOTIFY` every replica of catalog changes and
//!   of each revoked `jti`; while the listener is disconnected the views are
//!   not trusted at all and every read goes to the database, and on
//!   reconnect they are dropped whole;
//! - a periodic poll of the `changes` revision (bumped by the same triggers,
//!   on both backends) catches writes by other processes, such as
//!   `halflife apply` run against a live SQLite database, and any
//!   notification lost in transit.
//!
//! A fill that raced with an invalidation is discarded: fills carry the
//! generation (or credential epoch) they started from.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::domain::model::{GrantContext, Owner, System};

use super::{AdminTokenRecord, CredentialRecord};

/// Most credentials indexed; beyond it, lookups of further credentials read
/// the database. 2^21 buckets at the hash tables' 7/8 load: the shards
/// never grow past about 86 MB together (41 bytes a bucket).
pub const MAX_INDEXED_CREDENTIALS: usize = 1_835_008;

/// Independently locked parts of the credential index, chosen by random
/// bits of the `jti`. Pruning scans every entry; one lock at a time, it
/// holds none of them for long (a whole-index lock held for a scan of a
/// million entries stalled every exchange for 10 ms or more).
const SHARDS: usize = 64;

/// Most credentials in one shard: 2^15 buckets at 7/8 load.
const MAX_PER_SHARD: usize = MAX_INDEXED_CREDENTIALS / SHARDS;

/// Rows per page when the index is loaded from the database.
pub const WARM_PAGE: usize = 2_000;

/// One system as the hot path needs it.
#[derive(Debug, Clone)]
pub struct SystemEntry {
    pub system: System,
    pub business_owner: Owner,
    pub technical_owner: Owner,
    pub revoked_through: i64,
}

/// Everything the catalog view holds, loaded in one go.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub grants_by_issuer: HashMap<String, Arc<Vec<GrantContext>>>,
    pub systems: HashMap<String, SystemEntry>,
    /// `(issuer, subject)` → revocation epoch.
    pub workloads: HashMap<(String, String), i64>,
    /// `(system, issuer, subject)` → revocation epoch raised by a removed
    /// or narrowed grant that covered the workload in that system.
    pub grant_epochs: HashMap<(String, String, String), i64>,
    pub admin_tokens: HashMap<[u8; 32], AdminTokenRecord>,
}

impl Snapshot {
    pub fn workload_epoch(&self, issuer: &str, subject: &str) -> i64 {
        // Keyed by owned strings, so a lookup allocates: skip it when no
        // workload was ever revoked (the common case).
        if self.workloads.is_empty() {
            return 0;
        }
        self.workloads.get(&(issuer.to_owned(), subject.to_owned())).copied().unwrap_or(0)
    }

    pub fn grant_epoch(&self, system: &str, issuer: &str, subject: &str) -> i64 {
        // As for workloads: most catalogs never removed a grant.
        if self.grant_epochs.is_empty() {
            return 0;
        }
        self.grant_epochs.get(&(system.to_owned(), issuer.to_owned(), subject.to_owned())).copied().unwrap_or(0)
    }
}

/// What the index keeps of one credential, in 24 bytes: the immutable
/// facts plus the only mutable one, its single revocation. Times are unix
/// seconds (u32 lasts until 2106; a later `exp` saturates, which only delays
/// pruning).
#[derive(Debug, Clone, Copy)]
struct IndexEntry {
    id: i64,
    exp: u32,
    revoked_at: Option<std::num::NonZeroU32>,
    system: u32,
    /// The [`Parties`] number.
    parties: u32,
}

/// A `jti` (a UUID) as the index's key; two u64s keep the entry at 8-byte
/// alignment.
type Key = [u64; 2];

fn seconds(t: i64) -> u32 {
    u32::try_from(t.max(0)).unwrap_or(u32::MAX)
}

fn revoked_seconds(t: Option<i64>) -> Option<std::num::NonZeroU32> {
    t.map(|t| std::num::NonZeroU32::new(seconds(t)).unwrap_or(std::num::NonZeroU32::MIN))
}

/// The facts about one credential that the index records.
#[derive(Debug, Clone)]
pub struct IndexedCredential<'a> {
    pub jti: &'a str,
    pub id: i64,
    pub exp: i64,
    pub revoked_at: Option<i64>,
    pub system: &'a str,
    pub issuer: &'a str,
    pub subject: &'a str,
    /// For a delegated credential: the identity it acts for.
    pub principal: Option<(&'a str, &'a str)>,
}

/// Whom a credential answers to: its workload and, for a delegated one,
/// the identity it acts for (each as issuer name and subject). Interned as
/// one value, so an index entry stays 24 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Parties {
    pub workload: (String, String),
    pub principal: Option<(String, String)>,
}

impl Parties {
    fn of(credential: &IndexedCredential<'_>) -> Self {
        Self {
            workload: (credential.issuer.to_owned(), credential.subject.to_owned()),
            principal: credential.principal.map(|(i, s)| (i.to_owned(), s.to_owned())),
        }
    }
}

/// A credential found in the index.
#[derive(Debug, Clone)]
pub struct Found {
    pub id: i64,
    pub revoked_at: Option<i64>,
    pub system: Arc<str>,
    pub parties: Arc<Parties>,
}

/// One shard of the credential index.
#[derive(Default)]
struct Shard {
    entries: HashMap<Key, IndexEntry>,
    /// The [`Names`] generation its entries' `system` and `workload`
    /// numbers refer to.
    names: u64,
}

/// The systems and workloads that index entries name by number, shared by
/// all shards. Reset only while every shard is locked and emptied, which
/// starts a new generation: numbers from an older one are never resolved.
#[derive(Default)]
struct Names {
    generation: u64,
    systems: Interner<str>,
    parties: Interner<Parties>,
}

impl Names {
    /// Like [`Names::of`], for names already known.
    fn find(&self, credential: &IndexedCredential<'_>) -> Option<(u64, u32, u32)> {
        let system = *self.systems.ids.get(credential.system)?;
        let parties = *self.parties.ids.get(&Parties::of(credential))?;
        Some((self.generation, system, parties))
    }

    /// The numbers of `credential`'s system and parties, and the
    /// generation they belong to.
    fn of(&mut self, credential: &IndexedCredential<'_>) -> Option<(u64, u32, u32)> {
        let system = self.systems.intern(credential.system, |s| Arc::from(s))?;
        let parties = self.parties.intern(&Parties::of(credential), |p| Arc::new(p.clone()))?;
        Some((self.generation, system, parties))
    }
}

/// Stores each distinct value once and names it by a small number.
struct Interner<T: ?Sized> {
    values: Vec<Arc<T>>,
    ids: HashMap<Arc<T>, u32>,
}

impl<T: ?Sized> Default for Interner<T> {
    fn default() -> Self {
        Self { values: Vec::new(), ids: HashMap::new() }
    }
}

impl<T: ?Sized + Eq + std::hash::Hash> Interner<T> {
    fn intern(&mut self, value: &T, make: impl FnOnce(&T) -> Arc<T>) -> Option<u32> {
        if let Some(id) = self.ids.get(value) {
            return Some(*id);
        }
        let id = u32::try_from(self.values.len()).ok()?;
        let value = make(value);
        self.values.push(Arc::clone(&value));
        self.ids.insert(value, id);
        Some(id)
    }

    fn get(&self, id: u32) -> Option<&Arc<T>> {
        self.values.get(usize::try_from(id).ok()?)
    }
}

/// The views and their invalidation state.
pub struct Cache {
    /// Bumped on every catalog change; a snapshot is good for one value.
    generation: AtomicU64,
    snapshot: RwLock<Option<(u64, Arc<Snapshot>)>>,
    /// Serializes snapshot loads so a burst of misses loads once.
    loading: tokio::sync::Mutex<()>,
    /// Bumped whenever index entries may have gone stale.
    epoch: AtomicU64,
    /// Lock order: `names` before any shard, shards in index order.
    shards: Box<[Mutex<Shard>]>,
    names: RwLock<Names>,
    /// Whether invalidations are known to reach this process. Always on
    /// SQLite; on PostgreSQL only while the listener is connected.
    trusted: AtomicBool,
    /// The `changes` revision the last poll saw.
    polled: Mutex<Option<i64>>,
    /// Whether loading the index from the database has begun since it was
    /// last dropped.
    warming: AtomicBool,
}

/// What [`Cache::index_page`] did with a page of credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Indexed {
    /// All of them are indexed.
    All,
    /// None: an invalidation happened since the page was read; read it again.
    Stale,
    /// The index is full; some or none were indexed.
    Full,
}

impl Cache {
    pub fn new(trusted: bool) -> Self {
        Self {
            generation: AtomicU64::new(0),
            snapshot: RwLock::new(None),
            loading: tokio::sync::Mutex::new(()),
            epoch: AtomicU64::new(0),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            names: RwLock::new(Names::default()),
            trusted: AtomicBool::new(trusted),
            polled: Mutex::new(None),
            warming: AtomicBool::new(false),
        }
    }

    pub fn trusted(&self) -> bool {
        self.trusted.load(Ordering::Acquire)
    }

    /// Marks the views trusted (the listener is up) or not (it is down).
    /// Either way everything cached so far is dropped: while untrusted,
    /// changes may have gone unseen.
    pub fn set_trusted(&self, trusted: bool) {
        self.trusted.store(trusted, Ordering::Release);
        self.drop_all();
    }

    /// The catalog changed.
    pub fn catalog_changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        *self.snapshot.write().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Everything cached may be stale.
    pub fn drop_all(&self) {
        self.catalog_changed();
        self.clear_index(false);
        self.warming.store(false, Ordering::Release);
    }

    /// Empties the index and forgets the names its entries used; with
    /// `if_empty`, only when no shard holds an entry.
    fn clear_index(&self, if_empty: bool) {
        let mut names = self.names.write().unwrap_or_else(PoisonError::into_inner);
        if if_empty && names.systems.values.is_empty() {
            return;
        }
        let mut shards = self.lock_all();
        if if_empty {
            if shards.iter().any(|s| !s.entries.is_empty()) {
                return;
            }
        } else {
            // Entries are dropped: fills read before now are stale.
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        let generation = names.generation.wrapping_add(1);
        *names = Names { generation, ..Names::default() };
        for shard in &mut shards {
            **shard = Shard { entries: HashMap::new(), names: generation };
        }
    }

    fn shard(&self, key: &Key) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[shard_of(key)].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every shard, locked in index order.
    fn lock_all(&self) -> Vec<std::sync::MutexGuard<'_, Shard>> {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner)).collect()
    }

    /// True once per trusted stretch: the caller should load the index
    /// from the database (see [`Cache::index_page`]).
    pub fn begin_warming(&self) -> bool {
        self.trusted() && !self.warming.swap(true, Ordering::AcqRel)
    }

    /// Loading failed part way; a later call to [`Cache::begin_warming`]
    /// starts it again.
    pub fn warming_failed(&self) {
        self.warming.store(false, Ordering::Release);
    }

    /// Records a page of credentials read from the database after `epoch`
    /// was taken, all or none (see [`Cache::index`]).
    pub fn index_page(&self, page: &[IndexedCredential<'_>], epoch: u64) -> Indexed {
        let mut numbered = Vec::with_capacity(page.len());
        {
            let mut names = self.names.write().unwrap_or_else(PoisonError::into_inner);
            for credential in page {
                let Some(key) = jti_key(credential.jti) else { continue };
                let Some(numbers) = names.of(credential) else { return Indexed::Full };
                numbered.push((key, credential, numbers));
            }
        }
        // All shards at once, so the page is indexed whole or not at all.
        let mut shards = self.lock_all();
        if epoch != self.epoch.load(Ordering::Acquire) {
            return Indexed::Stale;
        }
        for (key, credential, numbers) in numbered {
            let Some(shard) = shards.get_mut(shard_of(&key)) else { continue };
            match shard.insert(key, credential, numbers) {
                Inserted::Yes => {}
                Inserted::Full => return Indexed::Full,
                // The names were reset since: the epoch moved too.
                Inserted::Stale => return Indexed::Stale,
            }
        }
        Indexed::All
    }

    /// The current snapshot, if it is still good.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        let generation = self.generation.load(Ordering::Acquire);
        let guard = self.snapshot.read().unwrap_or_else(PoisonError::into_inner);
        guard.as_ref().filter(|(g, _)| *g == generation).map(|(_, s)| Arc::clone(s))
    }

    /// Loads the snapshot with `load` unless another caller just did. The
    /// result is installed only if no change happened while it loaded;
    /// either way the caller gets data at least as fresh as its request.
    pub async fn snapshot_or_load<E, F>(&self, load: F) -> Result<Arc<Snapshot>, E>
    where
        F: AsyncFnOnce() -> Result<Snapshot, E>,
    {
        if let Some(s) = self.snapshot() {
            return Ok(s);
        }
        let _one_at_a_time = self.loading.lock().await;
        if let Some(s) = self.snapshot() {
            return Ok(s);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let snapshot = Arc::new(load().await?);
        let mut slot = self.snapshot.write().unwrap_or_else(PoisonError::into_inner);
        if self.generation.load(Ordering::Acquire) == generation {
            *slot = Some((generation, Arc::clone(&snapshot)));
        }
        Ok(snapshot)
    }

    /// The current credential epoch, taken before a database read whose
    /// result will be offered to [`Cache::index`].
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Records a credential. `epoch` is from before its row was read (or
    /// `None` for a credential this process just committed): a read that
    /// raced with a revocation is not recorded.
    pub fn index(&self, credential: &IndexedCredential<'_>, epoch: Option<u64>) {
        let Some(key) = jti_key(credential.jti) else { return };
        let known = self.names.read().unwrap_or_else(PoisonError::into_inner).find(credential);
        let numbers = match known {
            Some(n) => n,
            None => match self.names.write().unwrap_or_else(PoisonError::into_inner).of(credential) {
                Some(n) => n,
                None => return,
            },
        };
        let mut shard = self.shard(&key);
        if epoch.is_some_and(|e| e != self.epoch.load(Ordering::Acquire)) {
            return;
        }
        // Full or stale: lookups of this one read the database.
        let _ = shard.insert(key, credential, numbers);
    }

    pub fn lookup(&self, jti: &str) -> Option<Found> {
        let key = jti_key(jti)?;
        let (entry, generation) = {
            let shard = self.shard(&key);
            (*shard.entries.get(&key)?, shard.names)
        };
        let names = self.names.read().unwrap_or_else(PoisonError::into_inner);
        if names.generation != generation {
            return None;
        }
        Some(Found {
            id: entry.id,
            revoked_at: entry.revoked_at.map(|t| i64::from(t.get())),
            system: Arc::clone(names.systems.get(entry.system)?),
            parties: Arc::clone(names.parties.get(entry.parties)?),
        })
    }

    /// This process revoked `jti` at `at`.
    pub fn revoked(&self, jti: &str, at: i64) {
        let Some(key) = jti_key(jti) else { return };
        let mut shard = self.shard(&key);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(entry) = shard.entries.get_mut(&key) {
            entry.revoked_at = entry.revoked_at.or(revoked_seconds(Some(at)));
        }
    }

    /// Another process revoked `jti`: forget it, so the next lookup reads
    /// the database.
    pub fn forget(&self, jti: &str) {
        let Some(key) = jti_key(jti) else { return };
        let mut shard = self.shard(&key);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        shard.entries.remove(&key);
    }

    /// Drops credentials that expired before `now` (unix seconds), one
    /// shard at a time; returns how many remain. A scan of the whole index:
    /// run it off the async workers.
    pub fn prune(&self, now: i64) -> usize {
        let now = seconds(now);
        let mut remaining = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            shard.entries.retain(|_, e| e.exp >= now);
            if shard.entries.is_empty() {
                shard.entries = HashMap::new();
            }
            remaining += shard.entries.len();
        }
        if remaining == 0 {
            self.clear_index(true);
        }
        remaining
    }

    /// Compares the database's `changes` revision with the one the last
    /// poll saw; a difference means the catalog changed, perhaps by a
    /// process that cannot notify this one.
    pub fn polled(&self, revision: i64) {
        let mut seen = self.polled.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.is_some_and(|s| s != revision) {
            self.catalog_changed();
        }
        *seen = Some(revision);
    }
}

/// Builds the record the introspection and revocation paths read, from the
/// index and the snapshot; `None` when the snapshot lacks the system (then
/// the caller reads the database).
pub fn record_from(jti: &str, found: &Found, snapshot: &Snapshot) -> Option<CredentialRecord> {
    let system = snapshot.systems.get(&*found.system)?;
    let (issuer, subject) = &found.parties.workload;
    let revoked_at = match found.revoked_at {
        Some(t) => Some(time::OffsetDateTime::from_unix_timestamp(t).ok()?),
        None => None,
    };
    Some(CredentialRecord {
        jti: jti.to_owned(),
        id: found.id,
        revoked_at,
        system_revoked_through: system.revoked_through,
        workload_revoked_through: snapshot.workload_epoch(issuer, subject),
        principal_revoked_through: found.parties.principal.as_ref().map_or(0, |(i, s)| snapshot.workload_epoch(i, s)),
        grant_revoked_through: snapshot.grant_epoch(&found.system, issuer, subject),
        system: system.system.clone(),
        business_owner: system.business_owner.clone(),
        technical_owner: system.technical_owner.clone(),
        parties: Arc::clone(&found.parties),
    })
}

/// The shard that holds `key`: UUIDs end in random bits (UUIDv7's `rand_b`).
fn shard_of(key: &Key) -> usize {
    usize::try_from(key[1] % SHARDS as u64).unwrap_or(0)
}

/// Issued `jti`s are UUIDs; anything else is not indexed.
fn jti_key(jti: &str) -> Option<Key> {
    let (high, low) = uuid::Uuid::try_parse(jti).ok()?.as_u64_pair();
    Some([high, low])
}

/// What [`Shard::insert`] did.
enum Inserted {
    Yes,
    /// The shard is full.
    Full,
    /// The numbers are from a generation of names that has been reset.
    Stale,
}

impl Shard {
    fn insert(&mut self, key: Key, credential: &IndexedCredential<'_>, numbers: (u64, u32, u32)) -> Inserted {
        let (generation, system, parties) = numbers;
        if generation != self.names {
            return Inserted::Stale;
        }
        if self.entries.len() >= MAX_PER_SHARD && !self.entries.contains_key(&key) {
            return Inserted::Full;
        }
        let entry = IndexEntry {
            id: credential.id,
            exp: seconds(credential.exp),
            revoked_at: revoked_seconds(credential.revoked_at),
            system,
            parties,
        };
        self.entries.insert(key, entry);
        Inserted::Yes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JTI: &str = "0193b8f0-7c1e-7a6b-9d55-0e1f2a3b4c5d";

    fn credential(jti: &str) -> IndexedCredential<'_> {
        IndexedCredential {
            jti,
            id: 7,
            exp: 1_000,
            revoked_at: None,
            system: "summarizer",
            issuer: "k8s",
            subject: "system:serviceaccount:ai:summarizer",
            principal: None,
        }
    }

    #[test]
    fn a_read_that_raced_with_a_revocation_is_not_indexed() {
        let cache = Cache::new(true);
        let before = cache.epoch();
        cache.forget(JTI);
        cache.index(&credential(JTI), Some(before));
        assert!(cache.lookup(JTI).is_none());

        cache.index(&credential(JTI), Some(cache.epoch()));
        let found = cache.lookup(JTI).unwrap();
        assert_eq!((found.id, &*found.system, found.revoked_at), (7, "summarizer", None));
        assert_eq!(found.parties.workload.1, "system:serviceaccount:ai:summarizer");
    }

    #[test]
    fn a_local_revocation_is_recorded_and_a_remote_one_forgets() {
        let cache = Cache::new(true);
        cache.index(&credential(JTI), None);
        cache.revoked(JTI, 500);
        assert_eq!(cache.lookup(JTI).unwrap().revoked_at, Some(500));
        cache.forget(JTI);
        assert!(cache.lookup(JTI).is_none());
    }

    #[test]
    fn expired_credentials_are_pruned_and_non_uuid_jtis_never_indexed() {
        let cache = Cache::new(true);
        cache.index(&credential(JTI), None);
        cache.index(&credential("not-a-uuid"), None);
        assert_eq!(cache.prune(1_000), 1);
        assert_eq!(cache.prune(1_001), 0);
        assert!(cache.lookup(JTI).is_none());
    }

    #[tokio::test]
    async fn a_snapshot_loaded_across_a_change_is_used_once_but_not_kept() {
        let cache = Cache::new(true);
        let s = cache
            .snapshot_or_load(async || {
                cache.catalog_changed();
                Ok::<_, ()>(Snapshot::default())
            })
            .await
            .unwrap();
        assert!(s.systems.is_empty());
        assert!(cache.snapshot().is_none(), "a snapshot that raced with a change must not be kept");

        cache.snapshot_or_load(async || Ok::<_, ()>(Snapshot::default())).await.unwrap();
        assert!(cache.snapshot().is_some());
        cache.polled(3);
        assert!(cache.snapshot().is_some(), "the first poll only learns the revision");
        cache.polled(4);
        assert!(cache.snapshot().is_none(), "a new revision drops the snapshot");
    }

    #[test]
    fn a_page_read_before_an_invalidation_is_rejected_whole_and_warming_restarts_after_a_drop() {
        let cache = Cache::new(true);
        assert!(cache.begin_warming());
        assert!(!cache.begin_warming(), "one load at a time");
        let other = "0193b8f0-7c1e-7a6b-9d55-0e1f2a3b4c5e";
        let epoch = cache.epoch();
        cache.forget(other);
        assert_eq!(cache.index_page(&[credential(JTI), credential(other)], epoch), Indexed::Stale);
        assert!(cache.lookup(JTI).is_none());
        assert_eq!(cache.index_page(&[credential(JTI), credential(other)], cache.epoch()), Indexed::All);
        assert!(cache.lookup(other).is_some());

        cache.drop_all();
        assert!(cache.lookup(JTI).is_none());
        assert!(cache.begin_warming(), "a dropped index is loaded again");
        cache.set_trusted(false);
        assert!(!cache.begin_warming(), "an untrusted index is not loaded");
    }

    #[test]
    fn every_shard_is_looked_up_and_pruned() {
        let cache = Cache::new(true);
        let jtis: Vec<String> = (0..1_000u64).map(|i| uuid::Uuid::from_u64_pair(i, i * 7919).to_string()).collect();
        for (i, jti) in jtis.iter().enumerate() {
            let subject = format!("agent-{}", i % 3);
            let system = if i % 2 == 0 { "even" } else { "odd" };
            let exp = if i < 500 { 1_000 } else { 2_000 };
            let c = IndexedCredential {
                jti,
                id: i as i64,
                exp,
                revoked_at: None,
                system,
                issuer: "k8s",
                subject: &subject,
                principal: None,
            };
            cache.index(&c, None);
        }
        assert!(cache.shards.iter().all(|s| !s.lock().unwrap().entries.is_empty()), "1,000 keys reach every shard");
        for (i, jti) in jtis.iter().enumerate() {
            let found = cache.lookup(jti).unwrap();
            assert_eq!(found.id, i as i64);
            assert_eq!(&*found.system, if i % 2 == 0 { "even" } else { "odd" });
            assert_eq!(found.parties.workload.1, format!("agent-{}", i % 3));
        }
        assert_eq!(cache.prune(1_500), 500);
        assert!(jtis[..500].iter().all(|j| cache.lookup(j).is_none()));
        assert!(jtis[500..].iter().all(|j| cache.lookup(j).is_some()));
        assert_eq!(cache.prune(2_001), 0);
    }

    #[test]
    fn names_are_forgotten_with_the_last_entry_and_older_numbers_never_resolve() {
        let cache = Cache::new(true);
        let other = "0193b8f0-7c1e-7a6b-9d55-0e1f2a3b4c5e";
        cache.index(&credential(JTI), None);
        // Numbers taken now, used after the reset below.
        let stale = cache.names.write().unwrap().of(&credential(other)).unwrap();
        assert_eq!(cache.prune(2_000), 0);
        assert!(cache.names.read().unwrap().systems.values.is_empty(), "names go with the last entry");

        let mut renamed = credential(other);
        renamed.system = "indexer";
        cache.index(&renamed, None);
        assert_eq!(&*cache.lookup(other).unwrap().system, "indexer");
        let key = jti_key(other).unwrap();
        assert!(matches!(cache.shard(&key).insert(key, &credential(other), stale), Inserted::Stale));
        assert_eq!(&*cache.lookup(other).unwrap().system, "indexer", "a stale number is refused, not misread");
    }

    #[test]
    fn an_entry_stays_small() {
        assert_eq!(std::mem::size_of::<(Key, IndexEntry)>(), 40);
    }

    #[test]
    fn losing_trust_drops_everything() {
        let cache = Cache::new(true);
        cache.index(&credential(JTI), None);
        cache.set_trusted(false);
        assert!(!cache.trusted());
        assert!(cache.lookup(JTI).is_none());
    }
}
