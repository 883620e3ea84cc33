//! Columns, joins and row mapping shared by the store's reads.

use super::*;

/// A credential's (`c`) workload identity (`k`), that workload's
/// revocation epoch, if any (`w`); for a delegated credential the identity
/// it acts for (`pk`) and that identity's epoch, if any (`pw`); and the
/// workload's epoch in the credential's system from removed or narrowed
/// grants, if any (`gr`).
macro_rules! workload_joins {
    () => {
        "JOIN workloads k ON k.id = c.workload_id \
         LEFT JOIN workload_revocations w ON w.issuer = k.issuer AND w.subject = k.subject \
         LEFT JOIN workloads pk ON pk.id = c.principal_id \
         LEFT JOIN workload_revocations pw ON pw.issuer = pk.issuer AND pw.subject = pk.subject \
         LEFT JOIN grant_revocations gr ON gr.system_id = c.system_id AND gr.workload_id = c.workload_id"
    };
}
pub(crate) const WORKLOAD_JOINS: &str = workload_joins!();

/// Credential `c` is revoked by none of the epochs of [`WORKLOAD_JOINS`],
/// nor by its system's (`s`, joined), nor by itself.
macro_rules! not_revoked {
    () => {
        "c.revoked_at IS NULL AND c.id > s.revoked_through \
         AND c.id > COALESCE(w.revoked_through, 0) AND c.id > COALESCE(pw.revoked_through, 0) \
         AND c.id > COALESCE(gr.revoked_through, 0)"
    };
}
pub(crate) const NOT_REVOKED: &str = not_revoked!();

/// The count bucket (system, expiry) of credential `$1`, if it is still
/// active: revoked neither by itself nor by an epoch.
pub(in crate::store) const ACTIVE_CREDENTIAL: &str = concat!(
    "SELECT c.system_id, c.exp FROM credentials c JOIN systems s ON s.id = c.system_id ",
    workload_joins!(),
    " WHERE c.jti = $1 AND ",
    not_revoked!()
);

/// The kind of a credential's issuance event.
pub(super) const ISSUED: &str = "credential.issued";

/// A credential's grant, audience, scopes and iat, as `grant_id`,
/// `audience`, `scopes` and `iat`: its own where its row holds them, else
/// its issuance event's (see [`Told`]). Needs [`ISSUED_EVENT`] joined.
pub(super) const ISSUED_TERMS: &str = "COALESCE(c.grant_id, e.grant_id) AS grant_id, \
     COALESCE(c.audience, (SELECT name FROM audit_names WHERE id = e.audience_id)) AS audience, \
     COALESCE(c.scopes, (SELECT name FROM audit_names WHERE id = e.scopes_id)) AS scopes, \
     COALESCE(c.iat, e.iat) AS iat";
/// The issuance event `e` of credential `c`.
pub(super) const ISSUED_EVENT: &str = "LEFT JOIN audit_events e ON e.jti = c.jti AND e.kind = 'credential.issued'";

pub(super) fn corrupt(what: &str) -> impl Fn(sqlx::Error) -> StoreError + '_ {
    move |e| StoreError::Corrupt(format!("{what}: {e}"))
}

pub(super) fn json_list<T: FromStr>(text: &str, what: &str) -> Result<Vec<T>, StoreError> {
    let items: Vec<String> = serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))?;
    items
        .iter()
        .map(|s| s.parse::<T>().map_err(|_| StoreError::Corrupt(format!("{what}: invalid item {s:?}"))))
        .collect()
}

pub(super) fn scope_set(text: &str, what: &str) -> Result<ScopeSet, StoreError> {
    let items: Vec<String> = serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))?;
    ScopeSet::from_list(&items).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// Reads an owner from columns prefixed with `p`.
pub(super) fn owner_from(row: &DbRow, p: &str) -> Result<Owner, StoreError> {
    let col = |c: &str| format!("{p}{c}");
    let id: String = row.try_get(col("id").as_str()).map_err(corrupt("owner"))?;
    let status: String = row.try_get(col("status").as_str()).map_err(corrupt("owner"))?;
    Ok(Owner {
        id: OwnerId::parse(&id).map_err(|e| StoreError::Corrupt(e.0))?,
        display_name: row.try_get(col("display_name").as_str()).map_err(corrupt("owner"))?,
        email: row.try_get(col("email").as_str()).map_err(corrupt("owner"))?,
        status: OwnerStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("owner status {status:?}")))?,
        attested_until: from_ts(row.try_get(col("attested_until").as_str()).map_err(corrupt("owner"))?)?,
    })
}

/// Reads a system from columns prefixed with `s_`.
pub(super) fn system_from(row: &DbRow) -> Result<System, StoreError> {
    let get = |c: &str| -> Result<String, StoreError> { row.try_get(c).map_err(corrupt("system")) };
    let tier = get("s_tier")?;
    let state = get("s_state")?;
    let pilot_ends_at: Option<i64> = row.try_get("s_pilot_ends_at").map_err(corrupt("system"))?;
    Ok(System {
        id: SystemId::parse(&get("s_id")?).map_err(|e| StoreError::Corrupt(e.0))?,
        name: get("s_name")?,
        purpose: get("s_purpose")?,
        business_owner: OwnerId::parse(&get("s_business_owner")?).map_err(|e| StoreError::Corrupt(e.0))?,
        technical_owner: OwnerId::parse(&get("s_technical_owner")?).map_err(|e| StoreError::Corrupt(e.0))?,
        tier: Tier::parse(&tier).ok_or_else(|| StoreError::Corrupt(format!("tier {tier:?}")))?,
        state: SystemState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("state {state:?}")))?,
        pilot_ends_at: pilot_ends_at.map(from_ts).transpose()?,
        data_classification: row.try_get("s_data_classification").map_err(corrupt("system"))?,
        suspended_reason: row.try_get("s_suspended_reason").map_err(corrupt("system"))?,
        tier_started_at: from_ts(row.try_get("s_tier_started_at").map_err(corrupt("system"))?)?,
    })
}

pub(super) fn grant_from(row: &DbRow) -> Result<Grant, StoreError> {
    let get = |c: &str| -> Result<String, StoreError> { row.try_get(c).map_err(corrupt("grant")) };
    let max_ttl: i64 = row.try_get("g_max_ttl").map_err(corrupt("grant"))?;
    Ok(Grant {
        id: GrantId::parse(&get("g_id")?).map_err(|e| StoreError::Corrupt(e.0))?,
        system: SystemId::parse(&get("g_system_id")?).map_err(|e| StoreError::Corrupt(e.0))?,
        issuer: get("g_issuer")?,
        subject: SubjectMatch::parse(&get("g_subject")?).map_err(|e| StoreError::Corrupt(e.0))?,
        audiences: json_list(&get("g_audiences")?, "grant audiences")?,
        scopes: scope_set(&get("g_scopes")?, "grant scopes")?,
        default_scopes: scope_set(&get("g_default_scopes")?, "grant default scopes")?,
        kinds: json_list(&get("g_kinds")?, "grant kinds")?,
        max_ttl: Duration::from_secs(u64::try_from(max_ttl).map_err(|_| StoreError::Corrupt("grant max_ttl".into()))?),
        binding: {
            let binding = get("g_binding")?;
            Binding::parse(&binding).ok_or_else(|| StoreError::Corrupt(format!("grant binding {binding:?}")))?
        },
        max_audiences: {
            let n: i64 = row.try_get("g_max_audiences").map_err(corrupt("grant"))?;
            u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("grant max_audiences {n}")))?
        },
        on_behalf_of: serde_json::from_str(&get("g_on_behalf_of")?)
            .map_err(|e| StoreError::Corrupt(format!("grant on_behalf_of: {e}")))?,
        approval: row
            .try_get::<Option<String>, _>("g_approval")
            .map_err(corrupt("grant"))?
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("grant approval: {e}")))?,
    })
}

/// A system's own columns (`s`), as [`system_from`] reads them.
macro_rules! system_fields {
    () => {
        "s.id AS s_id, s.name AS s_name, s.purpose AS s_purpose, \
         s.business_owner AS s_business_owner, s.technical_owner AS s_technical_owner, s.tier AS s_tier, \
         s.state AS s_state, s.pilot_ends_at AS s_pilot_ends_at, s.data_classification AS s_data_classification, \
         s.suspended_reason AS s_suspended_reason, s.tier_started_at AS s_tier_started_at"
    };
}

/// A system's own columns, without its owners.
pub(super) const SYSTEM_FIELDS: &str = system_fields!();

/// A system's columns and its owners' (`bo`, `tecn`; see [`SYSTEM_JOINS`]).
pub(super) const SYSTEM_COLUMNS: &str = concat!(
    system_fields!(),
    ", bo.id AS bo_id, bo.display_name AS bo_display_name, bo.email AS bo_email, bo.status AS bo_status, \
     bo.attested_until AS bo_attested_until, \
     tecn.id AS to_id, tecn.display_name AS to_display_name, tecn.email AS to_email, tecn.status AS to_status, \
     tecn.attested_until AS to_attested_until"
);

/// A grant's columns (`g`), as [`grant_from`] reads them, and its version.
pub(super) const GRANT_COLUMNS: &str = "g.id AS g_id, g.system_id AS g_system_id, g.issuer AS g_issuer, g.subject AS g_subject, \
     g.audiences AS g_audiences, g.scopes AS g_scopes, g.default_scopes AS g_default_scopes, g.kinds AS g_kinds, \
     g.max_ttl AS g_max_ttl, g.binding AS g_binding, g.version AS g_version, g.max_audiences AS g_max_audiences, \
     g.on_behalf_of AS g_on_behalf_of, g.approval AS g_approval";

pub(super) const SYSTEM_JOINS: &str =
    "JOIN owners bo ON bo.id = s.business_owner JOIN owners tecn ON tecn.id = s.technical_owner";
