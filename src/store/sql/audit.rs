//! The hash-chained audit log.
//!
//! Appends happen inside write transactions, and writers commit one at a time
//! (see `begin_write`), so reading the head and appending after it keeps one
//! linear chain however many requests, processes or replicas write
//! concurrently. On the request path the group-commit writer shares one
//! transaction among many appends.

use super::*;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};

use sqlx::QueryBuilder;

use crate::audit::{AuditRecord, Checkpoint, GENESIS, chain_digest};

/// Appends `e` after the current head, chained to it. Must run inside a
/// write transaction.
pub(super) async fn insert_event(conn: &mut Conn, e: &AuditEvent) -> Result<(), sqlx::Error> {
    let mut chain = Chain::head(conn).await?;
    let mut names = KnownNames::default();
    let details = names.resolve(conn, &[e]).await?;
    let mut statements = Statements::new();
    chain.push_inserts(&mut statements, &[e], &names, details)?;
    statements.run(conn).await.map(|_| ())
}

/// Most names the writer remembers the ids of.
const KNOWN_NAMES: usize = 65_536;
/// Names per INSERT (and read) of those a batch meets first.
const NAMES_PER_STATEMENT: usize = 256;
/// Longest detail stored by id: a longer one stays in its row, well inside
/// what one entry of PostgreSQL's unique index on names may hold.
const LONGEST_NAMED_DETAIL: usize = 512;

/// The values of an event stored once in `audit_names` (`NAMED`, in order).
fn named(e: &AuditEvent) -> [Option<&str>; 7] {
    [
        e.actor.as_deref(),
        e.owners.as_deref(),
        e.source.as_deref(),
        e.attestation_issuer.as_deref(),
        e.subject.as_deref(),
        e.audience.as_deref(),
        e.scopes.as_deref(),
    ]
}

/// The columns whose values repeat from event to event: each is stored once
/// in `audit_names`, and an event names it by id in `<column>_id`.
const NAMED: [&str; 7] = ["actor", "owners", "source", "attestation_issuer", "subject", "audience", "scopes"];

/// How an event's detail is stored: in its row, or, once events repeat
/// it, by id in `audit_names`.
pub(super) enum Detail {
    Absent,
    Inline(String),
    Named(i64),
}

/// The ids of strings in `audit_names`, as a writer has read or inserted
/// them, so a batch binds ids and reads or inserts only names it has not
/// met. Ids met in a batch are kept only once it commits. Names are never
/// deleted, so a known id stays right; past `KNOWN_NAMES` names the map
/// starts over.
///
/// An event's detail is a name too once the writer has seen it before:
/// an issuance's (signing key and credential kind) repeats until the key
/// rotates, but some are never repeated (a database login's role), and
/// those stay in their event's row.
#[derive(Default)]
pub(super) struct KnownNames {
    ids: HashMap<String, i64>,
    /// Met in the batch being written: known once it commits.
    pending: HashMap<String, i64>,
    /// Hashes of the details committed batches stored in their rows. A
    /// collision only stores a detail by id the first time it is seen.
    seen: HashSet<u64>,
    /// Stored in rows by the batch being written.
    seen_pending: Vec<u64>,
    hasher: RandomState,
}

impl KnownNames {
    fn id(&self, name: &str) -> Option<i64> {
        self.ids.get(name).or_else(|| self.pending.get(name)).copied()
    }

    pub(super) fn committed(&mut self) {
        if self.ids.len() + self.pending.len() > KNOWN_NAMES {
            self.ids.clear();
        }
        self.ids.extend(self.pending.drain());
        if self.seen.len() + self.seen_pending.len() > KNOWN_NAMES {
            self.seen.clear();
        }
        self.seen.extend(self.seen_pending.drain(..));
    }

    pub(super) fn rolled_back(&mut self) {
        self.pending.clear();
        self.seen_pending.clear();
    }

    /// Makes sure every name of `events` has an id: known ones from
    /// memory, the others read, after inserting those not stored yet; and
    /// returns how each event's detail is to be stored. Must run inside the
    /// batch's write transaction.
    pub(super) async fn resolve(
        &mut self,
        conn: &mut Conn,
        events: &[&AuditEvent],
    ) -> Result<Vec<Detail>, sqlx::Error> {
        // Each detail's text, and whether it is stored by id: it is known,
        // or a committed batch stored it in its row before.
        let mut details: Vec<Option<(String, bool)>> = Vec::with_capacity(events.len());
        for e in events {
            // `serde_json::to_string` writes the same compact text as `Value`'s
            // `Display`, into one growing buffer rather than fragment by
            // fragment through a formatter.
            let Some(text) = e.detail.as_ref().and_then(|d| serde_json::to_string(d).ok()) else {
                details.push(None);
                continue;
            };
            let by_id = text.len() <= LONGEST_NAMED_DETAIL
                && (self.id(&text).is_some() || {
                    let seen = self.hasher.hash_one(&text);
                    let repeated = self.seen.contains(&seen);
                    if !repeated {
                        self.seen_pending.push(seen);
                    }
                    repeated
                });
            details.push(Some((text, by_id)));
        }
        let mut unknown: Vec<&str> = details
            .iter()
            .flatten()
            .filter(|(text, by_id)| *by_id && self.id(text).is_none())
            .map(|(text, _)| text.as_str())
            .collect();
        unknown.extend(events.iter().flat_map(|e| named(e)).flatten().filter(|name| self.id(name).is_none()));
        unknown.sort_unstable();
        unknown.dedup();
        for chunk in unknown.chunks(NAMES_PER_STATEMENT) {
            let mut insert = QueryBuilder::<Db>::new("INSERT INTO audit_names (name) SELECT column1 FROM (");
            insert.push_values(chunk, |mut row, name| {
                row.push_bind(*name);
            });
            insert.push(
                ") AS v WHERE NOT EXISTS (SELECT 1 FROM audit_names n WHERE n.name = v.column1) \
                 ON CONFLICT (name) DO NOTHING",
            );
            insert.build().execute(&mut *conn).await?;
            let mut read = QueryBuilder::<Db>::new("SELECT CAST(id AS BIGINT), name FROM audit_names WHERE name IN (");
            let mut names = read.separated(", ");
            for name in chunk {
                names.push_bind(*name);
            }
            read.push(")");
            let rows: Vec<(i64, String)> = read.build_query_as().fetch_all(&mut *conn).await?;
            self.pending.extend(rows.into_iter().map(|(id, name)| (name, id)));
        }
        details
            .into_iter()
            .map(|detail| match detail {
                None => Ok(Detail::Absent),
                Some((text, false)) => Ok(Detail::Inline(text)),
                Some((text, true)) => self.stored(&text).map(Detail::Named),
            })
            .collect()
    }

    /// The id of `name`, which `resolve` has met.
    fn stored(&self, name: &str) -> Result<i64, sqlx::Error> {
        self.id(name).ok_or_else(|| sqlx::Error::Protocol("an audit name was not stored".into()))
    }

    /// The id of `name`, if any, which `resolve` has met.
    fn bind(&self, name: Option<&str>) -> Result<Option<i64>, sqlx::Error> {
        name.map(|name| self.stored(name)).transpose()
    }
}

/// The head of the chain, read once per write transaction and carried
/// through a batch of appends.
pub(super) struct Chain {
    seq: i64,
    hash: String,
}

/// Rows per multi-row INSERT: 22 columns each stays well inside both
/// backends' bind-parameter limits.
const EVENTS_PER_STATEMENT: usize = 256;

impl Chain {
    pub(super) async fn head(conn: &mut Conn) -> Result<Self, sqlx::Error> {
        let row: Option<(i64, Option<String>)> = sqlx::query_as(&format!(
            "SELECT seq, {} FROM audit_events ORDER BY seq DESC LIMIT 1",
            Backend::hash_hex("hash")
        ))
        .fetch_optional(&mut *conn)
        .await?;
        Ok(row.map_or_else(Self::empty, |(seq, hash)| Self::after(seq, hash)))
    }

    /// The chain of an empty log.
    pub(super) fn empty() -> Self {
        Self { seq: 0, hash: GENESIS.to_owned() }
    }

    /// The chain after event `seq` with `hash`. A head without a hash was
    /// tampered with after sealing: chain to nothing, so verification
    /// reports it rather than papering over it.
    pub(super) fn after(seq: i64, hash: Option<String>) -> Self {
        Self { seq, hash: hash.unwrap_or_default() }
    }

    /// Seals `events` in order after the head and adds their multi-row
    /// INSERTs to `statements`, which must run inside the write transaction
    /// the head was read in, after `names` has resolved the events' names
    /// and `details`.
    pub(super) fn push_inserts<'a>(
        &mut self,
        statements: &mut Statements<'a>,
        events: &[&'a AuditEvent],
        names: &KnownNames,
        details: Vec<Detail>,
    ) -> Result<(), sqlx::Error> {
        let mut details = details.into_iter();
        for chunk in events.chunks(EVENTS_PER_STATEMENT) {
            let mut rows = Vec::with_capacity(chunk.len());
            for e in chunk {
                let ids = named(e).map(|name| names.bind(name));
                let [actor, owners, source, issuer, subject, audience, scopes] = ids;
                let ids = [actor?, owners?, source?, issuer?, subject?, audience?, scopes?];
                let detail = match details.next() {
                    Some(Detail::Inline(text)) => (Some(text), None),
                    Some(Detail::Named(id)) => (None, Some(id)),
                    Some(Detail::Absent) if e.detail.is_none() => (None, None),
                    _ => return Err(sqlx::Error::Protocol("an audit detail was not resolved".into())),
                };
                let (seq, time_ms, digest) = self.seal(e);
                rows.push((seq, time_ms, *e, ids, detail, digest));
            }
            let q = statements.next();
            q.push(format!("INSERT INTO audit_events ({INSERT_COLUMNS}) "));
            q.push_values(rows, |mut row, (seq, time_ms, e, ids, (detail, detail_id), digest)| {
                let [actor, owners, source, issuer, subject, audience, scopes] = ids;
                row.push_bind(seq)
                    .push_bind(time_ms)
                    .push_bind(e.kind.as_str())
                    .push_bind(e.outcome.as_str())
                    .push_bind(e.reason.as_deref())
                    .push_bind(actor)
                    .push_bind(e.system_id.as_deref())
                    .push_bind(owners)
                    .push_bind(e.grant_id.as_deref())
                    .push_bind(e.jti.as_deref().map(StoredId::of))
                    .push_bind(e.request_id.as_deref().map(StoredId::of))
                    .push_bind(source)
                    .push_bind(issuer)
                    .push_bind(subject)
                    .push_bind(e.attestation_id.as_deref().map(StoredId::of))
                    .push_bind(audience)
                    .push_bind(scopes)
                    .push_bind(e.iat)
                    .push_bind(e.exp)
                    .push_bind(detail)
                    .push_bind(detail_id)
                    .push_bind(digest.to_vec());
            });
        }
        Ok(())
    }

    /// `e` as the next link: its sequence number, time in milliseconds and
    /// chain hash (as [`AuditRecord::seal`] gives them, without a copy of
    /// the event).
    fn seal(&mut self, e: &AuditEvent) -> (i64, i64, [u8; 32]) {
        self.seq += 1;
        let (time_ms, digest) = e.link(self.seq, &self.hash);
        self.hash = crate::crypto::hex(&digest);
        (self.seq, time_ms, digest)
    }
}

/// The hashed columns, in `Canonical` order, as stored: the `NAMED` ones
/// by id. The chain hash is stored beside them as its 32 bytes; an event's
/// `prev_hash` is not stored, as it is its predecessor's hash.
const INSERT_COLUMNS: &str = "seq, time_ms, kind, outcome, reason, actor_id, system_id, owners_id, grant_id, jti, \
    request_id, source_id, attestation_issuer_id, subject_id, attestation_id, audience_id, scopes_id, iat, exp, detail, \
    detail_id, hash";

/// What `record_from` reads: the hashed columns (the `NAMED` ones looked
/// up), the hash in hex, and the hash of the event before (by sequence
/// number) as `prev_hash`.
fn read_columns() -> String {
    let mut columns = String::from(
        "seq, time_ms, kind, outcome, reason, system_id, grant_id, jti, request_id, \
        attestation_id, iat, exp, \
        COALESCE(detail, (SELECT name FROM audit_names WHERE id = audit_events.detail_id)) AS detail",
    );
    for column in NAMED {
        columns.push_str(&format!(", (SELECT name FROM audit_names WHERE id = audit_events.{column}_id) AS {column}"));
    }
    format!(
        "{columns}, {} AS hash, (SELECT {} FROM audit_events AS before \
         WHERE before.seq = audit_events.seq - 1) AS prev_hash",
        Backend::hash_hex("audit_events.hash"),
        Backend::hash_hex("before.hash")
    )
}

/// The condition that `column`'s name (a `NAMED` column) is the value
/// bound next.
fn named_is(column: &str) -> String {
    format!(" AND {column}_id = (SELECT id FROM audit_names WHERE name = ")
}

fn record_from(row: &DbRow) -> Result<AuditRecord, StoreError> {
    let c = corrupt("audit event");
    let time_ms: i64 = row.try_get("time_ms").map_err(&c)?;
    let detail: Option<String> = row.try_get("detail").map_err(&c)?;
    let seq: i64 = row.try_get("seq").map_err(&c)?;
    let time = crate::audit::time_of(time_ms)
        .ok_or_else(|| StoreError::Corrupt(format!("audit event {seq}: time {time_ms} out of range")))?;
    let outcome: String = row.try_get("outcome").map_err(&c)?;
    let outcome = outcome.parse().map_err(|e| StoreError::Corrupt(format!("audit event {seq}: {e}")))?;
    let event = AuditEvent {
        time,
        kind: row.try_get("kind").map_err(&c)?,
        outcome,
        reason: row.try_get("reason").map_err(&c)?,
        actor: row.try_get("actor").map_err(&c)?,
        system_id: row.try_get("system_id").map_err(&c)?,
        owners: row.try_get("owners").map_err(&c)?,
        grant_id: row.try_get("grant_id").map_err(&c)?,
        jti: stored_id(row, "jti").map_err(&c)?,
        request_id: stored_id(row, "request_id").map_err(&c)?,
        source: row.try_get("source").map_err(&c)?,
        attestation_issuer: row.try_get("attestation_issuer").map_err(&c)?,
        subject: row.try_get("subject").map_err(&c)?,
        attestation_id: stored_id(row, "attestation_id").map_err(&c)?,
        audience: row.try_get("audience").map_err(&c)?,
        scopes: row.try_get("scopes").map_err(&c)?,
        iat: row.try_get("iat").map_err(&c)?,
        exp: row.try_get("exp").map_err(&c)?,
        detail: detail.map(|d| serde_json::from_str(&d).unwrap_or(serde_json::Value::String(d))),
    };
    Ok(AuditRecord {
        seq,
        event,
        time_ms,
        // The first event follows the genesis hash; any other without a
        // predecessor follows a deleted one, and links to nothing.
        prev_hash: row
            .try_get::<Option<String>, _>("prev_hash")
            .map_err(&c)?
            .unwrap_or_else(|| if seq == 1 { GENESIS.to_owned() } else { String::new() }),
        hash: row.try_get::<Option<String>, _>("hash").map_err(&c)?.unwrap_or_default(),
        issuer: None,
        issuer_url: None,
    })
}

impl Store {
    /// Chains events written before the chain existed, once: only while no
    /// event carries a hash yet. Afterwards a missing hash is tampering, and
    /// verification reports it.
    pub(super) async fn seal_unhashed(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        Backend::begin_write(&mut conn).await.map_err(unavailable)?;
        let result = async {
            let (chained,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM audit_events WHERE hash IS NOT NULL")
                .fetch_one(&mut *conn)
                .await
                .map_err(unavailable)?;
            if chained > 0 {
                return Ok(());
            }
            let rows =
                sqlx::query(&format!("SELECT {} FROM audit_events WHERE hash IS NULL ORDER BY seq", read_columns()))
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(unavailable)?;
            for row in &rows {
                let mut record = record_from(row)?;
                let prev: Option<(Option<String>,)> = sqlx::query_as(&format!(
                    "SELECT {} FROM audit_events WHERE seq < $1 ORDER BY seq DESC LIMIT 1",
                    Backend::hash_hex("hash")
                ))
                .bind(record.seq)
                .fetch_optional(&mut *conn)
                .await
                .map_err(unavailable)?;
                record.prev_hash = prev.and_then(|(h,)| h).unwrap_or_else(|| GENESIS.to_owned());
                let digest = chain_digest(&record.prev_hash, &record.canonical());
                sqlx::query("UPDATE audit_events SET hash = $1 WHERE seq = $2")
                    .bind(digest.to_vec())
                    .bind(record.seq)
                    .execute(&mut *conn)
                    .await
                    .map_err(unavailable)?;
            }
            Ok::<(), StoreError>(())
        }
        .await;
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        sqlx::query(end).execute(&mut *conn).await.map_err(unavailable)?;
        result
    }
}

/// The kind the partial index `audit_by_kind` leaves out: most events are
/// issuances, and a query for them finds them in log order.
const ISSUED: &str = "credential.issued";

/// The events of credentials issued on behalf of subject `v`, as an
/// `IN` list of their `jti`.
fn push_acted_for(q: &mut QueryBuilder<'_, Db>, v: &str) {
    q.push(
        "jti IN (SELECT c.jti FROM credentials c WHERE c.principal_id IN (SELECT id FROM workloads WHERE subject = ",
    )
    .push_bind(v.to_owned())
    .push("))");
}

/// `acted_for`: whether the `workload` of the filter is the subject of some
/// delegation, so its events include those of credentials issued on its
/// behalf. (Most workloads are not: their query keeps its plain plan.)
pub(in crate::store) fn push_filter(
    q: &mut QueryBuilder<'_, Db>,
    filter: &AuditFilter,
    after: Option<i64>,
    acted_for: bool,
) {
    q.push(" WHERE 1 = 1");
    // A family of kinds without issuances (`system.*`) of one system: the
    // partial index by kind holds the few such events, while the system's
    // index holds all its issuances, most of the log, to be walked through
    // before the first match. A planner without statistics prefers the
    // latter (it gives the order), so the system's index is ruled out.
    let family = filter.kind.as_deref().and_then(|k| k.strip_suffix('*')).filter(|p| !ISSUED.starts_with(p));
    if let Some(v) = &filter.system {
        let column =
            if family.is_some() && Backend::PLANS_WITHOUT_STATISTICS { "system_id || ''" } else { "system_id" };
        q.push(format_args!(" AND {column} = ")).push_bind(v.clone());
    }
    if let Some(v) = &filter.owner {
        // Whole-word match in the space-separated owners, without LIKE, so
        // '%' and '_' in the value are plain characters.
        // Each distinct owners value is one name: the few that match are
        // looked up once.
        q.push(format!(
            " AND owners_id IN (SELECT id FROM audit_names WHERE {}(' ' || name || ' ', ",
            Backend::CONTAINS_FN
        ))
        .push_bind(format!(" {v} "))
        .push(") > 0)");
    }
    if let Some(v) = &filter.workload {
        if acted_for {
            q.push(" AND (subject_id = (SELECT id FROM audit_names WHERE name = ").push_bind(v.clone()).push(") OR ");
            push_acted_for(q, v);
            q.push(")");
        } else {
            q.push(named_is("subject")).push_bind(v.clone()).push(")");
        }
    }
    if let Some(v) = &filter.actor {
        q.push(named_is("subject")).push_bind(v.clone()).push(")");
    }
    if let Some(v) = &filter.subject {
        q.push(" AND ");
        push_acted_for(q, v);
    }
    if let Some(v) = &filter.issuer {
        q.push(named_is("attestation_issuer")).push_bind(v.clone()).push(")");
    }
    if let Some(v) = &filter.kind {
        match v.strip_suffix('*') {
            Some(prefix) => {
                q.push(" AND substr(kind, 1, ")
                    .push_bind(i32::try_from(prefix.len()).unwrap_or(0))
                    .push(") = ")
                    .push_bind(prefix.to_owned());
                if let Some(prefix) = family.filter(|p| !p.is_empty()) {
                    // The family as a range of the partial index by kind,
                    // which holds all of it and none of the issuances.
                    // (Kinds are ASCII; the backends compare bytes here.)
                    q.push(format_args!(" AND kind <> '{ISSUED}'"));
                    if Backend::PLANS_WITHOUT_STATISTICS {
                        let mut end = prefix.as_bytes().to_vec();
                        if let Some(last) = end.last_mut().filter(|b| **b < 0x7f) {
                            *last += 1;
                            q.push(" AND kind >= ").push_bind(prefix.to_owned());
                            q.push(" AND kind < ").push_bind(String::from_utf8_lossy(&end).into_owned());
                        }
                    }
                }
            }
            None => {
                q.push(" AND kind = ").push_bind(v.clone());
                if v != ISSUED {
                    // The condition of the partial index by kind, spelled
                    // out so the planner may use it.
                    q.push(format_args!(" AND kind <> '{ISSUED}'"));
                }
            }
        }
    }
    if let Some(v) = &filter.outcome {
        q.push(" AND outcome = ").push_bind(v.clone());
    }
    if let Some(v) = &filter.jti {
        q.push(" AND jti = ").push_bind(StoredId::owned(v.clone()));
    }
    if let Some(v) = filter.since_ms {
        q.push(" AND time_ms >= ").push_bind(v);
    }
    if let Some(v) = filter.until_ms {
        q.push(" AND time_ms < ").push_bind(v);
    }
    if let Some(v) = filter.from_seq {
        q.push(" AND seq >= ").push_bind(v);
    }
    if let Some(v) = filter.to_seq {
        q.push(" AND seq <= ").push_bind(v);
    }
    if let Some(v) = after {
        q.push(" AND seq > ").push_bind(v);
    }
}

#[async_trait]
impl AuditReader for Store {
    async fn audit_events(
        &self,
        filter: &AuditFilter,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let acted_for = match &filter.workload {
            Some(v) => sqlx::query_as::<_, (i64,)>(
                "SELECT id FROM credentials WHERE principal_id IN (SELECT id FROM workloads WHERE subject = $1) LIMIT 1",
            )
            .bind(v)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
            .is_some(),
            None => false,
        };
        let mut q = QueryBuilder::<Db>::new(format!("SELECT {} FROM audit_events", read_columns()));
        if filter.newest_first {
            push_filter(&mut q, filter, None, acted_for);
            if let Some(before) = after {
                q.push(" AND seq < ").push_bind(before);
            }
            q.push(" ORDER BY seq DESC LIMIT ").push_bind(i64::from(limit));
        } else {
            push_filter(&mut q, filter, after, acted_for);
            q.push(" ORDER BY seq LIMIT ").push_bind(i64::from(limit));
        }
        let rows = q.build().fetch_all(&self.pool).await.map_err(unavailable)?;
        rows.iter().map(record_from).collect()
    }

    async fn audit_hash(&self, seq: i64) -> Result<Option<String>, StoreError> {
        let row: Option<(Option<String>,)> =
            sqlx::query_as(&format!("SELECT {} FROM audit_events WHERE seq = $1", Backend::hash_hex("hash")))
                .bind(seq)
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
        Ok(row.and_then(|(h,)| h))
    }

    async fn audit_head(&self) -> Result<Option<(i64, String)>, StoreError> {
        let row: Option<(i64, Option<String>)> = sqlx::query_as(&format!(
            "SELECT seq, {} FROM audit_events ORDER BY seq DESC LIMIT 1",
            Backend::hash_hex("hash")
        ))
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(row.map(|(seq, hash)| (seq, hash.unwrap_or_default())))
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        let rows: Vec<(i64, String, String, String)> =
            sqlx::query_as("SELECT seq, hash, time, signature FROM audit_checkpoints ORDER BY seq")
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
        Ok(rows.into_iter().map(|(seq, hash, time, signature)| Checkpoint { seq, hash, time, signature }).collect())
    }

    async fn credential_row(&self, jti: &str) -> Result<Option<serde_json::Value>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT c.id, c.jti, c.kind, c.system_id, {ISSUED_TERMS}, k.issuer, k.subject, \
             c.exp, c.revoked_at, c.revoked_reason, s.revoked_through AS system_revoked_through, \
             COALESCE(w.revoked_through, 0) AS workload_revoked_through, \
             COALESCE(pw.revoked_through, 0) AS principal_revoked_through, pk.issuer AS principal_issuer, \
             pk.subject AS principal_subject, \
             COALESCE(gr.revoked_through, 0) AS grant_revoked_through, gr.grant_id AS revoking_grant \
             FROM credentials c JOIN systems s ON s.id = c.system_id {WORKLOAD_JOINS} {ISSUED_EVENT} \
             WHERE c.jti = $1",
        ))
        .bind(StoredId::of(jti))
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        let Some(r) = row else { return Ok(None) };
        let c = corrupt("credential");
        let id: i64 = r.try_get("id").map_err(&c)?;
        let revoked_at: Option<i64> = r.try_get("revoked_at").map_err(&c)?;
        let by_system = id <= r.try_get::<i64, _>("system_revoked_through").map_err(&c)?;
        let by_workload = id <= r.try_get::<i64, _>("workload_revoked_through").map_err(&c)?;
        let by_principal = id <= r.try_get::<i64, _>("principal_revoked_through").map_err(&c)?;
        let by_grant = id <= r.try_get::<i64, _>("grant_revoked_through").map_err(&c)?;
        let principal_issuer: Option<String> = r.try_get("principal_issuer").map_err(&c)?;
        let principal_subject: Option<String> = r.try_get("principal_subject").map_err(&c)?;
        let get = |col: &str| -> Result<String, StoreError> { r.try_get(col).map_err(corrupt("credential")) };
        Ok(Some(serde_json::json!({
            "jti": stored_id(&r, "jti").map_err(&c)?,
            "kind": get("kind")?,
            "system": get("system_id")?,
            "grant": get("grant_id")?,
            "issuer": get("issuer")?,
            "subject": get("subject")?,
            "audience": get("audience")?,
            "scopes": get("scopes")?,
            "iat": from_ts(r.try_get("iat").map_err(&c)?).map(crate::domain::rfc3339)?,
            "exp": from_ts(r.try_get("exp").map_err(&c)?).map(crate::domain::rfc3339)?,
            "on_behalf_of": principal_issuer.zip(principal_subject)
                .map(|(issuer, subject)| serde_json::json!({"issuer": issuer, "subject": subject})),
            "revoked": revoked_at.is_some() || by_system || by_workload || by_principal || by_grant,
            "revoked_by": match (revoked_at.is_some(), by_system, by_workload, by_principal, by_grant) {
                (true, ..) => Some("credential"),
                (_, true, ..) => Some("system"),
                (_, _, true, ..) => Some("workload"),
                (_, _, _, true, _) => Some("principal"),
                (.., true) => Some("grant"),
                _ => None,
            },
            "revoked_by_grant": if by_grant {
                r.try_get::<Option<String>, _>("revoking_grant").map_err(&c)?
            } else {
                None
            },
            "revoked_reason": r.try_get::<Option<String>, _>("revoked_reason").map_err(&c)?,
        })))
    }
}

#[async_trait]
impl CheckpointStore for Store {
    async fn write_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        match self.submit(WriteOp::Checkpoint(Box::new(checkpoint.clone()))).await? {
            WriteResult::Checkpoint => Ok(()),
            _ => Err(StoreError::Corrupt("writer answered the wrong request".into())),
        }
    }
}
