//! The control database: each carve-out's live phase and the audit log, shared by every replica.

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::migrate::Migrator;
use sqlx::Row;

use crate::config::CarveOutSpec;
use crate::phase::Phase;

static SQLITE: Migrator = sqlx::migrate!("../migrations/control/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("../migrations/control/postgres");

const MIGRATIONS: sqlkit::Migrations = sqlkit::Migrations {
    name: "control",
    sqlite: &SQLITE,
    postgres: &POSTGRES,
};

/// A carve-out's stored state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CarveOutState {
    /// The carve-out.
    pub name: String,
    /// Its phase.
    pub phase: Phase,
    /// Bumped by every change; a change names the version it was decided on.
    pub version: i64,
    /// When it last changed (RFC 3339, UTC).
    pub updated_at: String,
    /// Who changed it.
    pub updated_by: String,
    /// Why.
    pub reason: String,
    /// Writes are held until this time (Unix ms); 0 when there is no fence.
    pub fenced_until_ms: i64,
}

/// One audited change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Sequence number.
    pub id: i64,
    /// When (RFC 3339, UTC).
    pub at: String,
    /// The carve-out.
    pub carveout: String,
    /// Who.
    pub actor: String,
    /// The phase before (`canary 10.00%` style).
    pub from: String,
    /// The phase after.
    pub to: String,
    /// Why.
    pub reason: String,
    /// Whether the ordering rule was overridden with force.
    pub forced: bool,
}

/// A contract verification reported for a carve-out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// Sequence number.
    pub id: i64,
    /// When it was reported (RFC 3339, UTC).
    pub at: String,
    /// The carve-out.
    pub carveout: String,
    /// The provider that was verified (URL).
    pub provider: String,
    /// Who reported it.
    pub actor: String,
    /// How many interactions were verified.
    pub interactions: i64,
    /// How many failed.
    pub failures: i64,
    /// Green: at least one interaction, none failed.
    pub passed: bool,
}

/// The control database.
#[derive(Debug, Clone)]
pub struct ControlStore {
    db: sqlkit::Db,
    /// The PostgreSQL URL, to listen for changes (`None` on SQLite).
    listen_url: Option<String>,
    /// An SQLite control database's file and its identity when opened: a file deleted or
    /// replaced under a running replica would take acknowledged changes with it.
    file: Option<(std::path::PathBuf, (u64, u64))>,
}

/// A registered proxy replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// Its id (unique per process start).
    pub id: String,
    /// Its data plane's address.
    pub address: String,
    /// Its admin API's address.
    pub admin_address: String,
    /// Its version.
    pub version: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// Its last heartbeat (Unix ms, its clock).
    pub heartbeat_ms: i64,
    /// How long its routing view holds without a successful read of the control database.
    pub lease_ms: i64,
    /// The control epoch it has applied.
    pub applied_epoch: i64,
}

/// Extra time, on top of a replica's lease, before another process counts it as gone: clocks
/// of different machines may disagree by this much.
pub const CLOCK_SKEW_MS: i64 = 1_000;

impl Replica {
    /// Whether it is live at `now_ms`: its heartbeat is within its lease (and the skew margin).
    /// A replica that is not live has stopped forwarding carve-out writes by itself.
    pub fn live(&self, now_ms: i64) -> bool {
        now_ms - self.heartbeat_ms <= self.lease_ms + CLOCK_SKEW_MS
    }
}

/// The PostgreSQL channel every change is announced on.
pub const CHANNEL: &str = "strangler_control";

async fn bump_epoch(tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> Result<(), sqlx::Error> {
    let epoch: i64 = sqlx::query_scalar(
        "UPDATE control_epoch SET epoch = epoch + 1 WHERE id = 1 RETURNING epoch",
    )
    .fetch_one(&mut **tx)
    .await?;
    // Replicas listening on PostgreSQL apply it at once; delivered when the change commits.
    if tx.backend_name() == "PostgreSQL" {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(epoch.to_string())
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// A file's device and inode.
fn identity(path: &std::path::Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

fn phase_columns(phase: Phase) -> (&'static str, i64) {
    match phase {
        Phase::Canary { basis_points } => ("canary", i64::from(basis_points)),
        other => (other.name(), 0),
    }
}

fn state(row: &AnyRow) -> Result<CarveOutState, sqlx::Error> {
    let name: String = row.try_get("phase")?;
    let basis_points: i64 = row.try_get("basis_points")?;
    let phase = match name.as_str() {
        "canary" => Phase::Canary {
            basis_points: u32::try_from(basis_points)
                .unwrap_or(0)
                .min(crate::phase::BUCKETS),
        },
        other => Phase::from_parts(other, None).map_err(|e| sqlx::Error::Decode(e.into()))?,
    };
    Ok(CarveOutState {
        name: row.try_get("name")?,
        phase,
        version: row.try_get("version")?,
        updated_at: row.try_get("updated_at")?,
        updated_by: row.try_get("updated_by")?,
        reason: row.try_get("reason")?,
        fenced_until_ms: row.try_get("fenced_until_ms")?,
    })
}

const STATE_COLUMNS: &str =
    "name, phase, basis_points, version, updated_at, updated_by, reason, fenced_until_ms";

impl ControlStore {
    /// Connects (an SQLite path or a postgres:// URL) and migrates.
    pub async fn connect(url: &str) -> anyhow::Result<ControlStore> {
        let options = sqlkit::DbOptions {
            max_connections: 4,
            ..sqlkit::DbOptions::default()
        };
        let db = sqlkit::Db::connect(url, &options, &MIGRATIONS).await?;
        let file = match sqlkit::sqlite_file(url) {
            Some(path) => {
                let id = identity(&path).with_context(|| {
                    format!("cannot read the control database file {}", path.display())
                })?;
                Some((path, id))
            }
            None => None,
        };
        let listen_url = (db.backend() == sqlkit::Backend::Postgres).then(|| url.to_owned());
        Ok(ControlStore {
            db,
            file,
            listen_url,
        })
    }

    /// Whether the control database can be used: its file (SQLite) is still the one opened,
    /// and it answers a query. An error says what is wrong.
    pub async fn health(&self) -> Result<(), sqlx::Error> {
        if let Some((path, opened)) = &self.file {
            let gone = |what: &str| {
                sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "the control database file {} was {what} while this replica ran; restart it once the file is restored",
                        path.display()
                    ),
                ))
            };
            match identity(path) {
                Ok(now) if now == *opened => {}
                Ok(_) => return Err(gone("replaced")),
                Err(_) => return Err(gone("deleted")),
            }
        }
        sqlx::query("SELECT 1").execute(self.db.pool()).await?;
        Ok(())
    }

    /// Adds the carve-outs the database does not know yet, in their configured phase. Known ones
    /// keep their stored phase: the database, not the file, is the truth once a replica ran.
    pub async fn seed(&self, carveouts: &[CarveOutSpec]) -> Result<(), sqlx::Error> {
        for carveout in carveouts {
            let (phase, basis_points) = phase_columns(carveout.phase);
            sqlx::query(
                "INSERT INTO control_carveouts (name, phase, basis_points, version, updated_at, updated_by, reason) \
                 VALUES ($1, $2, $3, 1, $4, 'config', 'seeded from the configuration file') \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(&carveout.name)
            .bind(phase)
            .bind(basis_points)
            .bind(sqlkit::now())
            .execute(self.db.pool())
            .await?;
        }
        Ok(())
    }

    /// Sets (or, with 0, lifts) a carve-out's write fence; false for an unknown carve-out.
    pub async fn fence(&self, name: &str, until_ms: i64) -> Result<bool, sqlx::Error> {
        let mut tx = self.db.pool().begin().await?;
        let known =
            sqlx::query("UPDATE control_carveouts SET fenced_until_ms = $1 WHERE name = $2")
                .bind(until_ms)
                .bind(name)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                > 0;
        if known {
            bump_epoch(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(known)
    }

    /// A listener of the changes announced on PostgreSQL (`None` on SQLite, where replicas
    /// poll).
    pub async fn listener(&self) -> Result<Option<sqlx::postgres::PgListener>, sqlx::Error> {
        let Some(url) = &self.listen_url else {
            return Ok(None);
        };
        let mut listener = sqlx::postgres::PgListener::connect(url).await?;
        listener.listen(CHANNEL).await?;
        Ok(Some(listener))
    }

    /// Records an event in the audit log that changed no phase (a move that held the writes
    /// and then gave up): from and to are both the carve-out's phase.
    pub async fn audit_event(
        &self,
        carveout: &str,
        actor: &str,
        phase: Phase,
        reason: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO control_audit (at, carveout, actor, from_phase, to_phase, reason, forced) \
             VALUES ($1, $2, $3, $4, $4, $5, 0)",
        )
        .bind(sqlkit::now())
        .bind(carveout)
        .bind(actor)
        .bind(phase.to_string())
        .bind(reason)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// The control epoch: bumped by every phase change and fence.
    pub async fn epoch(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT epoch FROM control_epoch WHERE id = 1")
            .fetch_one(self.db.pool())
            .await
    }

    /// Registers (or re-registers) a replica.
    pub async fn register(&self, replica: &Replica) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO control_replicas (id, address, admin_address, version, started_at, heartbeat_ms, lease_ms, applied_epoch) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO UPDATE SET \
             heartbeat_ms = excluded.heartbeat_ms, applied_epoch = excluded.applied_epoch",
        )
        .bind(&replica.id)
        .bind(&replica.address)
        .bind(&replica.admin_address)
        .bind(&replica.version)
        .bind(&replica.started_at)
        .bind(replica.heartbeat_ms)
        .bind(replica.lease_ms)
        .bind(replica.applied_epoch)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Records a replica's heartbeat and the epoch it has applied (never lowering it).
    pub async fn heartbeat(&self, id: &str, applied_epoch: i64) -> Result<(), sqlx::Error> {
        let updated = sqlx::query(
            "UPDATE control_replicas SET heartbeat_ms = $1, \
             applied_epoch = CASE WHEN applied_epoch > $2 THEN applied_epoch ELSE $2 END WHERE id = $3",
        )
        .bind(sqlkit::now_ms())
        .bind(applied_epoch)
        .bind(id)
        .execute(self.db.pool())
        .await?;
        if updated.rows_affected() == 0 {
            return Err(sqlx::Error::RowNotFound);
        }
        Ok(())
    }

    /// Removes a replica that stops cleanly.
    pub async fn deregister(&self, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM control_replicas WHERE id = $1")
            .bind(id)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// Every registered replica, live or not, by id.
    pub async fn replicas(&self) -> Result<Vec<Replica>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT id, address, admin_address, version, started_at, heartbeat_ms, lease_ms, applied_epoch \
             FROM control_replicas ORDER BY id",
        )
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Replica {
                    id: row.try_get("id")?,
                    address: row.try_get("address")?,
                    admin_address: row.try_get("admin_address")?,
                    version: row.try_get("version")?,
                    started_at: row.try_get("started_at")?,
                    heartbeat_ms: row.try_get("heartbeat_ms")?,
                    lease_ms: row.try_get("lease_ms")?,
                    applied_epoch: row.try_get("applied_epoch")?,
                })
            })
            .collect()
    }

    /// Every carve-out's state, by name.
    pub async fn states(&self) -> Result<Vec<CarveOutState>, sqlx::Error> {
        let sql = format!("SELECT {STATE_COLUMNS} FROM control_carveouts ORDER BY name");
        let rows = sqlx::query(&sql).fetch_all(self.db.pool()).await?;
        rows.iter().map(state).collect()
    }

    /// One carve-out's state.
    pub async fn state(&self, name: &str) -> Result<Option<CarveOutState>, sqlx::Error> {
        let sql = format!("SELECT {STATE_COLUMNS} FROM control_carveouts WHERE name = $1");
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(self.db.pool())
            .await?;
        row.as_ref().map(state).transpose()
    }

    /// Moves a carve-out from the state at `expected_version` to `to`, and audits it, in one
    /// transaction. Returns `None` when the state changed meanwhile (nothing is written).
    pub async fn change(
        &self,
        current: &CarveOutState,
        to: Phase,
        actor: &str,
        reason: &str,
        forced: bool,
    ) -> Result<Option<CarveOutState>, sqlx::Error> {
        let (phase, basis_points) = phase_columns(to);
        let now = sqlkit::now();
        let mut tx = self.db.pool().begin().await?;
        let sql = format!(
            "UPDATE control_carveouts SET phase = $1, basis_points = $2, version = version + 1, \
             updated_at = $3, updated_by = $4, reason = $5 WHERE name = $6 AND version = $7 \
             RETURNING {STATE_COLUMNS}"
        );
        let Some(row) = sqlx::query(&sql)
            .bind(phase)
            .bind(basis_points)
            .bind(&now)
            .bind(actor)
            .bind(reason)
            .bind(&current.name)
            .bind(current.version)
            .fetch_optional(&mut *tx)
            .await?
        else {
            tx.rollback().await?;
            return Ok(None);
        };
        sqlx::query(
            "INSERT INTO control_audit (at, carveout, actor, from_phase, to_phase, reason, forced) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&now)
        .bind(&current.name)
        .bind(actor)
        .bind(current.phase.to_string())
        .bind(to.to_string())
        .bind(reason)
        .bind(i64::from(forced))
        .execute(&mut *tx)
        .await?;
        bump_epoch(&mut tx).await?;
        tx.commit().await?;
        Ok(Some(state(&row)?))
    }

    /// Records a verification; it is green only when it verified something and nothing failed.
    pub async fn record_verification(
        &self,
        carveout: &str,
        provider: &str,
        actor: &str,
        interactions: i64,
        failures: i64,
    ) -> Result<Verification, sqlx::Error> {
        let passed = interactions > 0 && failures == 0;
        let mut insert = self.db.statement(
            "INSERT INTO control_verifications (at, carveout, provider, actor, interactions, failures, passed) VALUES (",
        );
        insert
            .bind(sqlkit::now())
            .push(", ")
            .bind(carveout.to_owned())
            .push(", ")
            .bind(provider.to_owned())
            .push(", ")
            .bind(actor.to_owned())
            .push(", ")
            .bind(interactions)
            .push(", ")
            .bind(failures)
            .push(", ")
            .bind(i64::from(passed))
            .push(") RETURNING id, at, carveout, provider, actor, interactions, failures, passed");
        let row = insert.query()?.fetch_one(self.db.pool()).await?;
        verification(&row)
    }

    /// The latest verifications of a carve-out, newest first.
    pub async fn verifications(
        &self,
        carveout: &str,
        limit: i64,
    ) -> Result<Vec<Verification>, sqlx::Error> {
        let mut select = self.db.statement(
            "SELECT id, at, carveout, provider, actor, interactions, failures, passed FROM control_verifications WHERE carveout = ",
        );
        select
            .bind(carveout.to_owned())
            .push(" ORDER BY id DESC LIMIT ")
            .bind(limit);
        let rows = select.query()?.fetch_all(self.db.pool()).await?;
        rows.iter().map(verification).collect()
    }

    /// The latest audit entries (of one carve-out, or all), newest first.
    pub async fn audit(
        &self,
        carveout: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, sqlx::Error> {
        let mut select = self
            .db
            .statement("SELECT id, at, carveout, actor, from_phase, to_phase, reason, forced FROM control_audit");
        if let Some(carveout) = carveout {
            select.push(" WHERE carveout = ").bind(carveout.to_owned());
        }
        select.push(" ORDER BY id DESC LIMIT ").bind(limit);
        let rows = select.query()?.fetch_all(self.db.pool()).await?;
        rows.iter()
            .map(|row| {
                Ok(AuditEntry {
                    id: row.try_get("id")?,
                    at: row.try_get("at")?,
                    carveout: row.try_get("carveout")?,
                    actor: row.try_get("actor")?,
                    from: row.try_get("from_phase")?,
                    to: row.try_get("to_phase")?,
                    reason: row.try_get("reason")?,
                    forced: row.try_get::<i64, _>("forced")? != 0,
                })
            })
            .collect()
    }

    /// Writes what a replica measured of a carve-out since its previous flush at `at_ms`.
    pub async fn add_window(
        &self,
        replica: &str,
        carveout: &str,
        at_ms: i64,
        counts: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO control_windows (replica, carveout, at_ms, counts) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (replica, carveout, at_ms) DO NOTHING",
        )
        .bind(replica)
        .bind(carveout)
        .bind(at_ms)
        .bind(counts)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Every replica's windows of a carve-out flushed in `[from_ms, to_ms)`, as stored.
    pub async fn windows(
        &self,
        carveout: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT counts FROM control_windows WHERE carveout = $1 AND at_ms >= $2 AND at_ms < $3",
        )
        .bind(carveout)
        .bind(from_ms)
        .bind(to_ms)
        .fetch_all(self.db.pool())
        .await
    }

    /// Forgets windows flushed before `before_ms`.
    pub async fn prune_windows(&self, before_ms: i64) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM control_windows WHERE at_ms < $1")
            .bind(before_ms)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// Takes (or keeps) the lease `name` for `holder` until `expires_ms`, unless another holder
    /// has it and it has not expired. True when `holder` has it now.
    pub async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: i64,
        expires_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let taken = sqlx::query(
            "INSERT INTO control_leases (name, holder, expires_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms \
             WHERE control_leases.holder = excluded.holder OR control_leases.expires_ms < $4",
        )
        .bind(name)
        .bind(holder)
        .bind(expires_ms)
        .bind(now_ms)
        .execute(self.db.pool())
        .await?;
        Ok(taken.rows_affected() > 0)
    }

    /// Who holds the lease `name`, until when (Unix ms).
    pub async fn lease(&self, name: &str) -> Result<Option<(String, i64)>, sqlx::Error> {
        let row = sqlx::query("SELECT holder, expires_ms FROM control_leases WHERE name = $1")
            .bind(name)
            .fetch_optional(self.db.pool())
            .await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }

    /// A carve-out's rollout record, as stored.
    pub async fn rollout(&self, carveout: &str) -> Result<Option<RolloutRow>, sqlx::Error> {
        let row = sqlx::query(&format!(
            "SELECT {ROLLOUT_COLUMNS} FROM control_rollouts WHERE carveout = $1"
        ))
        .bind(carveout)
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref().map(rollout_row).transpose()
    }

    /// The rollouts in one of `states`.
    pub async fn rollouts_in(&self, states: &[&str]) -> Result<Vec<RolloutRow>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT {ROLLOUT_COLUMNS} FROM control_rollouts ORDER BY carveout"
        ))
        .fetch_all(self.db.pool())
        .await?;
        let all = rows
            .iter()
            .map(rollout_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(all
            .into_iter()
            .filter(|r| states.contains(&r.state.as_str()))
            .collect())
    }

    /// Writes a rollout record over the version it was read at (`row.version`; 0 for a new
    /// one) and bumps it. False when the stored one changed meanwhile: nothing is written.
    pub async fn put_rollout(&self, row: &RolloutRow) -> Result<bool, sqlx::Error> {
        let written = sqlx::query(
            "INSERT INTO control_rollouts (carveout, state, plan, progress, evaluated_to_ms, last_checks, history, updated_at, version) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (carveout) DO UPDATE SET \
             state = excluded.state, plan = excluded.plan, progress = excluded.progress, \
             evaluated_to_ms = excluded.evaluated_to_ms, last_checks = excluded.last_checks, \
             history = excluded.history, updated_at = excluded.updated_at, version = excluded.version \
             WHERE control_rollouts.version = $10",
        )
        .bind(&row.carveout)
        .bind(&row.state)
        .bind(&row.plan)
        .bind(&row.progress)
        .bind(row.evaluated_to_ms)
        .bind(&row.last_checks)
        .bind(&row.history)
        .bind(sqlkit::now())
        .bind(row.version + 1)
        .bind(row.version)
        .execute(self.db.pool())
        .await?;
        Ok(written.rows_affected() > 0)
    }

    /// Writes what a replica found in its shadow comparisons since its last flush, in one
    /// transaction: the mismatches (keeping the newest `keep` of each carve-out), their counts
    /// by field and by route, and the comparisons made (`totals`: carve-out, compared,
    /// mismatched).
    pub async fn record_mismatches(
        &self,
        replica: &str,
        found: &[StoredMismatch],
        totals: &[(String, u64, u64)],
        keep: i64,
    ) -> Result<(), sqlx::Error> {
        if found.is_empty() && totals.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.pool().begin().await?;
        let count = "INSERT INTO control_mismatch_counts (carveout, kind, key, count) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (carveout, kind, key) DO UPDATE SET count = control_mismatch_counts.count + excluded.count";
        for m in found {
            sqlx::query(
                "INSERT INTO control_mismatches (carveout, replica, at, method, path, differences) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&m.carveout)
            .bind(replica)
            .bind(&m.at)
            .bind(&m.method)
            .bind(&m.path)
            .bind(&m.differences)
            .execute(&mut *tx)
            .await?;
            let keys = m
                .fields
                .iter()
                .map(|f| ("field", f.as_str()))
                .chain(std::iter::once(("route", m.route.as_str())));
            for (kind, key) in keys {
                sqlx::query(count)
                    .bind(&m.carveout)
                    .bind(kind)
                    .bind(key)
                    .bind(1_i64)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        for (carveout, compared, mismatched) in totals {
            for (key, n) in [("compared", compared), ("mismatched", mismatched)] {
                sqlx::query(count)
                    .bind(carveout)
                    .bind("total")
                    .bind(key)
                    .bind(i64::try_from(*n).unwrap_or(i64::MAX))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let carveouts: std::collections::BTreeSet<&str> =
            found.iter().map(|m| m.carveout.as_str()).collect();
        for carveout in carveouts {
            sqlx::query(
                "DELETE FROM control_mismatches WHERE carveout = $1 AND id <= \
                 (SELECT id FROM control_mismatches WHERE carveout = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)",
            )
            .bind(carveout)
            .bind(keep)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    /// The newest `limit` mismatches of a carve-out, newest first.
    pub async fn mismatches(
        &self,
        carveout: &str,
        limit: i64,
    ) -> Result<Vec<StoredMismatch>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT carveout, replica, at, method, path, differences FROM control_mismatches \
             WHERE carveout = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(carveout)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredMismatch {
                    carveout: r.try_get("carveout")?,
                    replica: r.try_get("replica")?,
                    at: r.try_get("at")?,
                    method: r.try_get("method")?,
                    path: r.try_get("path")?,
                    differences: r.try_get("differences")?,
                    fields: Vec::new(),
                    route: String::new(),
                })
            })
            .collect()
    }

    /// A carve-out's mismatch counts: (kind, key, count), largest first.
    pub async fn mismatch_counts(
        &self,
        carveout: &str,
    ) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT kind, key, count FROM control_mismatch_counts WHERE carveout = $1 \
             ORDER BY count DESC, key",
        )
        .bind(carveout)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }
}

/// A shadow mismatch as the control database keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMismatch {
    /// The carve-out.
    pub carveout: String,
    /// The replica that found it.
    pub replica: String,
    /// When (RFC 3339).
    pub at: String,
    /// The request's method.
    pub method: String,
    /// The request's path and query.
    pub path: String,
    /// The differences, redacted, as JSON.
    pub differences: String,
    /// Where they differ (counted by field; not read back).
    pub fields: Vec<String>,
    /// The route it is counted under (not read back).
    pub route: String,
}

const ROLLOUT_COLUMNS: &str =
    "carveout, state, plan, progress, evaluated_to_ms, last_checks, history, updated_at, version";

/// A rollout's record as stored: the plan, progress, checks and history as JSON text
/// ([`super::rollout`] reads and writes them).
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRow {
    /// The carve-out.
    pub carveout: String,
    /// running, paused, awaiting_approval, halted, done or aborted.
    pub state: String,
    /// The plan.
    pub plan: String,
    /// Where it stands.
    pub progress: String,
    /// Measurements up to here were counted (Unix ms).
    pub evaluated_to_ms: i64,
    /// The latest interval's checks.
    pub last_checks: String,
    /// What happened, oldest first.
    pub history: String,
    /// When it was last written (RFC 3339).
    pub updated_at: String,
    /// Its version, bumped by every write.
    pub version: i64,
}

fn rollout_row(row: &AnyRow) -> Result<RolloutRow, sqlx::Error> {
    Ok(RolloutRow {
        carveout: row.try_get("carveout")?,
        state: row.try_get("state")?,
        plan: row.try_get("plan")?,
        progress: row.try_get("progress")?,
        evaluated_to_ms: row.try_get("evaluated_to_ms")?,
        last_checks: row.try_get("last_checks")?,
        history: row.try_get("history")?,
        updated_at: row.try_get("updated_at")?,
        version: row.try_get("version")?,
    })
}

fn verification(row: &AnyRow) -> Result<Verification, sqlx::Error> {
    Ok(Verification {
        id: row.try_get("id")?,
        at: row.try_get("at")?,
        carveout: row.try_get("carveout")?,
        provider: row.try_get("provider")?,
        actor: row.try_get("actor")?,
        interactions: row.try_get("interactions")?,
        failures: row.try_get("failures")?,
        passed: row.try_get::<i64, _>("passed")? != 0,
    })
}
