//! The relay: reads the source's change log in order and applies it to the target. Each batch
//! commits together with its checkpoint in one target transaction, so a crash at any point loses
//! nothing and applies nothing twice; applying is an upsert or delete by key, idempotent anyway.
//!
//! Gaps: on PostgreSQL a change's sequence number is taken before its transaction commits, so
//! number 11 can become visible after 12. The relay never moves its cursor past a missing
//! number while a transaction that may hold it is still running: when it first sees the gap it
//! notes the next transaction id to be assigned, and it skips the gap only once every
//! transaction older than that has ended (the number was rolled back). A gap that stays open
//! longer than a bound is reported loudly (a warning, and [`Step::gap`] in every step).
//!
//! A change the target refuses for its data is parked by key (see [`crate::parked`]): the
//! batch is applied key by key, the refused keys wait, and the stream moves on.

use std::collections::HashMap;
use std::time::{Duration, Instant};
use tracing::Instrument as _;

use serde_json::{Map, Value};
use sqlkit::{Backend, Db, Statement};
use sqlx::Row;

use crate::capture::ensure_target_tables;
use crate::mapping::{Mapping, TableMap};
use crate::parked::{self, Held};
use crate::schema::Kind;
use crate::txn::SyncTx;

/// What one step did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Step {
    /// Changes applied.
    pub applied: usize,
    /// The cursor after the step (the last applied sequence number).
    pub cursor: i64,
    /// A missing sequence number the relay is waiting on, and for how long.
    pub gap: Option<(i64, Duration)>,
    /// Another relay holds the stream's lease: this one waits (and takes over when it lapses).
    pub standby: bool,
    /// Keys parked by this step (the target refused their change).
    pub parked: usize,
}

/// What a retry of parked changes did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RetryReport {
    /// Keys whose change applied and left the parking.
    pub applied: usize,
    /// Keys still parked, with the error of this attempt.
    pub still_parked: Vec<(String, String, String)>,
}

/// Why applying changes failed: the target refused the data (park it), or something else went
/// wrong (fail the batch, to be tried again whole).
enum ApplyError {
    Refused(String),
    Failed(anyhow::Error),
}

impl From<sqlx::Error> for ApplyError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::Database(db) if refuses_data(db.as_ref()) => {
                ApplyError::Refused(db.to_string())
            }
            other => ApplyError::Failed(other.into()),
        }
    }
}

impl From<anyhow::Error> for ApplyError {
    fn from(err: anyhow::Error) -> Self {
        match err.downcast::<sqlx::Error>() {
            Ok(sql) => sql.into(),
            // A value that does not convert to its target column.
            Err(other) => ApplyError::Refused(format!("{other:#}")),
        }
    }
}

/// Whether a database error refuses the data itself (a constraint, a value out of range or of
/// the wrong type), as opposed to the moment (a lock, a conflict, a lost connection), which is
/// worth trying again whole.
fn refuses_data(err: &dyn sqlx::error::DatabaseError) -> bool {
    use sqlx::error::ErrorKind;
    if !matches!(err.kind(), ErrorKind::Other) {
        return true;
    }
    let Some(code) = err.code() else {
        return false;
    };
    // PostgreSQL: SQLSTATE class 22 (data exception) and 23 (integrity constraint violation).
    if code.len() == 5 && (code.starts_with("22") || code.starts_with("23")) {
        return true;
    }
    // SQLite: (extended) result codes whose primary code is CONSTRAINT, MISMATCH or RANGE.
    code.parse::<i64>()
        .is_ok_and(|n| matches!(n & 0xff, 19 | 20 | 25))
}

struct Gap {
    seq: i64,
    /// The next transaction id when the gap was first seen.
    horizon: i64,
    since: Instant,
    reported: bool,
}

/// A relay from one database to another, for one direction of one carve-out.
pub struct Relay {
    source: Db,
    target: Db,
    mapping: Mapping,
    stream: String,
    batch: i64,
    gap: Option<Gap>,
    gap_report_after: Duration,
    holder: String,
    lease: Duration,
    /// The next batch, read while the last one was applied: (the cursor it follows, changes).
    ahead: Option<(i64, Vec<Change>)>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

/// One change read from the log.
#[derive(Debug, Clone)]
struct Change {
    seq: i64,
    table: String,
    op: String,
    pk: Map<String, Value>,
    image: Option<Map<String, Value>>,
}

impl Change {
    /// The change as it waits in the parking, under `key`.
    fn held(&self, key: String) -> Held {
        Held {
            table: self.table.clone(),
            key,
            seq: self.seq,
            op: self.op.clone(),
            pk: self.pk.clone(),
            image: self.image.clone(),
        }
    }
}

impl Relay {
    /// A relay applying `source`'s change log to `target` with a checked `mapping`;
    /// `direction` names the stream (`forward`, `reverse`) whose checkpoint it keeps.
    pub async fn new(
        source: Db,
        target: Db,
        mapping: Mapping,
        direction: &str,
    ) -> anyhow::Result<Relay> {
        ensure_target_tables(&target).await?;
        Ok(Relay {
            stream: format!("{}:{direction}", mapping.carveout),
            source,
            target,
            mapping,
            batch: 1000,
            gap: None,
            gap_report_after: Duration::from_secs(10),
            holder: format!("{}-{:x}", std::process::id(), rand_id()),
            lease: Duration::from_secs(5),
            ahead: None,
        })
    }

    /// How long the lease lasts without renewal: a relay that dies is replaced after this.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Takes or renews the stream's lease: only one relay per stream applies changes. Returns
    /// whether this relay holds it.
    pub async fn hold_lease(&self) -> anyhow::Result<bool> {
        let now = sqlkit::now_ms();
        let expires = now + i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX / 2);
        let mut claim = self
            .target
            .statement("INSERT INTO sync_leases (stream, holder, expires_ms) VALUES (");
        claim
            .bind(self.stream.clone())
            .push(", ")
            .bind(self.holder.clone())
            .push(", ")
            .bind(expires)
            .push(
                ") ON CONFLICT (stream) DO UPDATE SET holder = excluded.holder, \
                 expires_ms = excluded.expires_ms WHERE sync_leases.holder = excluded.holder \
                 OR sync_leases.expires_ms < ",
            )
            .bind(now);
        claim.query()?.execute(self.target.pool()).await?;
        let mut held = self
            .target
            .statement("SELECT holder FROM sync_leases WHERE stream = ");
        held.bind(self.stream.clone());
        let holder: String = held
            .query()?
            .fetch_one(self.target.pool())
            .await?
            .try_get("holder")?;
        Ok(holder == self.holder)
    }

    /// Whether another relay holds this stream's lease now (a relay is running).
    pub async fn lease_held_by_another(&self) -> anyhow::Result<bool> {
        let mut held = self
            .target
            .statement("SELECT holder, expires_ms FROM sync_leases WHERE stream = ");
        held.bind(self.stream.clone());
        let Some(row) = held.query()?.fetch_optional(self.target.pool()).await? else {
            return Ok(false);
        };
        let holder: String = row.try_get("holder")?;
        let expires: i64 = row.try_get("expires_ms")?;
        Ok(holder != self.holder && expires > sqlkit::now_ms())
    }

    /// Gives the lease up (a clean stop), so a standby takes over at once.
    pub async fn release_lease(&self) -> anyhow::Result<()> {
        let mut release = self
            .target
            .statement("DELETE FROM sync_leases WHERE stream = ");
        release
            .bind(self.stream.clone())
            .push(" AND holder = ")
            .bind(self.holder.clone());
        release.query()?.execute(self.target.pool()).await?;
        Ok(())
    }

    /// Changes applied per transaction.
    pub fn with_batch(mut self, batch: i64) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// How long a gap may stay open before it is reported.
    pub fn with_gap_report_after(mut self, after: Duration) -> Self {
        self.gap_report_after = after;
        self
    }

    /// The stream's name (`catalog:forward`).
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The last applied sequence number (0 before the first).
    pub async fn cursor(&self) -> Result<i64, sqlx::Error> {
        let mut select = self
            .target
            .statement("SELECT seq FROM sync_checkpoints WHERE stream = ");
        select.bind(self.stream.clone());
        Ok(select
            .query()?
            .fetch_optional(self.target.pool())
            .await?
            .map(|row| row.try_get::<i64, _>("seq"))
            .transpose()?
            .unwrap_or(0))
    }

    /// Changes in the log after the cursor (the lag in events), and the age of the oldest
    /// (the lag in seconds; zero when there is nothing to apply).
    pub async fn lag(&self) -> anyhow::Result<(i64, Duration)> {
        let cursor = self.cursor().await?;
        let mut select = self.source.statement(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n, MIN(at) AS oldest FROM sync_changes WHERE seq > ",
        );
        // This stream's tables only: other carve-outs share the change log.
        select.bind(cursor).push(" AND tbl IN (");
        select.bind_list(self.mapping.tables.iter().map(|t| t.source.clone()));
        select.push(")");
        let row = select.query()?.fetch_one(self.source.pool()).await?;
        let n: i64 = row.try_get("n")?;
        let oldest: Option<String> = row.try_get("oldest")?;
        let age = oldest.and_then(|at| chrono_age(&at)).unwrap_or_default();
        Ok((n, age))
    }

    /// Applies the next batch. Returns what it did; `applied == 0` means caught up (or waiting
    /// on a gap).
    pub async fn step(&mut self) -> anyhow::Result<Step> {
        if !self.hold_lease().await? {
            return Ok(Step {
                cursor: self.cursor().await?,
                standby: true,
                ..Step::default()
            });
        }
        let cursor = self.cursor().await?;
        // Whether a gap seen earlier can be skipped is decided before the read: a transaction
        // that committed the missing change before this check is visible to the read.
        let cleared = self.gap_cleared().await?;
        // A batch read ahead is used only while no gap is pending; a gap inside it is noted
        // with a horizon taken now (later than the read: a longer, safe wait).
        let changes = match self.ahead.take() {
            Some((after, changes)) if after == cursor && self.gap.is_none() => changes,
            _ => self.read(cursor).await?,
        };
        let mut expected = cursor + 1;
        let mut take = Vec::new();
        for change in changes {
            if change.seq != expected {
                if !self.gap_resolved(expected, cleared).await? {
                    break;
                }
                tracing::info!(stream = %self.stream, from = expected, to = change.seq - 1, "skipping sequence numbers no transaction will commit");
                self.gap = None;
            }
            expected = change.seq + 1;
            take.push(change);
        }
        if take.is_empty() {
            return Ok(Step {
                applied: 0,
                cursor,
                gap: self.gap.as_ref().map(|g| (g.seq, g.since.elapsed())),
                standby: false,
                parked: 0,
            });
        }
        let new_cursor = take.last().map_or(cursor, |c| c.seq);
        // A span per batch applied (none for an idle pass).
        let span = tracing::info_span!(
            "sync batch",
            strangler.stream = %self.stream,
            strangler.changes = take.len(),
            strangler.cursor = new_cursor,
        );
        let parked =
            if i64::try_from(take.len()).is_ok_and(|n| n >= self.batch) && self.gap.is_none() {
                // A full batch: there is a backlog, so read the next batch while this one is
                // applied (the source and the target are different databases).
                let (applied, next) = tokio::join!(
                    self.apply(&take, new_cursor).instrument(span),
                    self.read(new_cursor)
                );
                self.ahead = next.ok().map(|changes| (new_cursor, changes));
                applied?
            } else {
                self.apply(&take, new_cursor).instrument(span).await?
            };
        if self.gap.as_ref().is_some_and(|g| g.seq < new_cursor) {
            self.gap = None;
        }
        Ok(Step {
            applied: take.len(),
            cursor: new_cursor,
            gap: self.gap.as_ref().map(|g| (g.seq, g.since.elapsed())),
            standby: false,
            parked,
        })
    }

    /// How many keys of this stream are parked.
    pub async fn parked(&self) -> anyhow::Result<usize> {
        Ok(parked::list(&self.target, Some(&self.stream)).await?.len())
    }

    /// Tries the parked changes of this stream again (of one key when `only` names its source
    /// table and key): each that applies leaves the parking, each that fails stays with the new
    /// error. Serialised with the relay's batches.
    pub async fn retry_parked(&self, only: Option<(&str, &str)>) -> anyhow::Result<RetryReport> {
        let mut sync = SyncTx::begin(&self.target, &self.stream, "sync").await?;
        let tx = sync.tx();
        let mut report = RetryReport::default();
        for held in parked::held(tx, &self.target, &self.stream, only).await? {
            let index = self.table_index(&held.table)?;
            let mut savepoint = sqlx::Acquire::begin(&mut *tx).await?;
            match apply_changes(
                &self.target,
                &mut savepoint,
                &self.mapping,
                &[(index, &held)],
            )
            .await
            {
                Ok(()) => {
                    savepoint.commit().await?;
                    parked::release(
                        &mut **tx,
                        &self.target,
                        &self.stream,
                        &held.table,
                        &held.key,
                    )
                    .await?;
                    report.applied += 1;
                }
                Err(ApplyError::Refused(error)) => {
                    savepoint.rollback().await?;
                    parked::failed_again(tx, &self.target, &self.stream, &held, &error).await?;
                    report.still_parked.push((held.table, held.key, error));
                }
                Err(ApplyError::Failed(err)) => return Err(err),
            }
        }
        sync.commit().await?;
        Ok(report)
    }

    fn table_index(&self, source_table: &str) -> anyhow::Result<usize> {
        self.mapping
            .tables
            .iter()
            .position(|t| t.source == source_table)
            .ok_or_else(|| anyhow::anyhow!("{source_table} is not in the mapping"))
    }

    /// Runs as a daemon until `shutdown` completes: applies what there is, polls every
    /// `interval` when caught up, keeps `metrics` current (lag and parked keys at most once a
    /// second), and on a failed step reports it, backs off (doubling up to 5 s) and tries again:
    /// a failed step applied nothing. On a standby (another relay holds the lease) it waits for
    /// the lease. At the end it gives the lease up, so a standby takes over at once. Returns
    /// how many changes it applied.
    pub async fn run_until(
        mut self,
        interval: Duration,
        metrics: Option<std::sync::Arc<crate::metrics::RelayMetrics>>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<i64> {
        tokio::pin!(shutdown);
        let mut total = 0i64;
        let mut last_figures: Option<Instant> = None;
        let mut failures = 0u32;
        let mut read_once = false;
        loop {
            if let Some(metrics) = &metrics {
                if last_figures.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                    last_figures = Some(Instant::now());
                    if let Ok((events, age)) = self.lag().await {
                        metrics.lag(events, age);
                    }
                    if let Ok(parked) = self.parked().await {
                        metrics.parked(parked);
                    }
                }
            }
            let started = std::time::Instant::now();
            let step = tokio::select! {
                step = self.step() => step,
                () = &mut shutdown => break,
            };
            let pause = match step {
                Ok(step) => {
                    read_once |= !step.standby;
                    failures = 0;
                    if let Some(metrics) = &metrics {
                        metrics.step(&step, started.elapsed());
                    }
                    total += i64::try_from(step.applied).unwrap_or(0);
                    (step.applied == 0).then_some(interval)
                }
                Err(err) => {
                    // Capture removed from the source after it ran (the carve-out was retired):
                    // nothing more will ever come; stop instead of failing for good. (Before
                    // capture is first installed, a relay waits for it.)
                    if read_once
                        && matches!(
                            crate::capture::installed(&self.source, &self.mapping).await,
                            Ok(false)
                        )
                    {
                        tracing::info!(stream = %self.stream, "capture was removed from the source; the relay stops");
                        break;
                    }
                    failures += 1;
                    if let Some(metrics) = &metrics {
                        metrics.error();
                    }
                    tracing::error!(stream = %self.stream, error = format!("{err:#}"), failures, "a relay step failed; retrying");
                    Some(
                        (interval.max(Duration::from_millis(10)) * (1 << failures.min(6)))
                            .min(Duration::from_secs(5)),
                    )
                }
            };
            if let Some(pause) = pause {
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = &mut shutdown => break,
                }
            }
        }
        self.release_lease().await?;
        Ok(total)
    }

    /// Steps until nothing is left to apply (a gap that stays open ends it too).
    pub async fn drain(&mut self) -> anyhow::Result<i64> {
        let mut total = 0;
        loop {
            let step = self.step().await?;
            total += i64::try_from(step.applied).unwrap_or(i64::MAX);
            if step.applied == 0 {
                return Ok(total);
            }
        }
    }

    async fn read(&self, cursor: i64) -> anyhow::Result<Vec<Change>> {
        let mut select = self
            .source
            .statement("SELECT seq, tbl, op, pk, image FROM sync_changes WHERE seq > ");
        select
            .bind(cursor)
            .push(" ORDER BY seq LIMIT ")
            .bind(self.batch);
        let rows = select.query()?.fetch_all(self.source.pool()).await?;
        rows.iter()
            .map(|row| {
                let object = |text: Option<String>| -> anyhow::Result<Option<Map<String, Value>>> {
                    match text {
                        None => Ok(None),
                        Some(text) => match serde_json::from_str(&text)? {
                            Value::Object(map) => Ok(Some(map)),
                            other => anyhow::bail!("a change row holds {other}, not an object"),
                        },
                    }
                };
                Ok(Change {
                    seq: row.try_get("seq")?,
                    table: row.try_get("tbl")?,
                    op: row.try_get("op")?,
                    pk: object(Some(row.try_get("pk")?))?.unwrap_or_default(),
                    image: object(row.try_get("image")?)?,
                })
            })
            .collect()
    }

    /// The source's oldest running and next transaction ids (PostgreSQL).
    async fn snapshot(&self) -> anyhow::Result<(i64, i64)> {
        let row = sqlx::query(
            "SELECT CAST(txid_snapshot_xmin(txid_current_snapshot()) AS BIGINT) AS xmin, \
                    CAST(txid_snapshot_xmax(txid_current_snapshot()) AS BIGINT) AS xmax",
        )
        .fetch_one(self.source.pool())
        .await?;
        Ok((row.try_get("xmin")?, row.try_get("xmax")?))
    }

    /// Whether every transaction that was running when the pending gap was first seen has
    /// ended (so its number can no longer appear in a read made after this call).
    async fn gap_cleared(&self) -> anyhow::Result<bool> {
        match &self.gap {
            Some(_) if self.source.backend() == Backend::Sqlite => Ok(true),
            Some(gap) => Ok(self.snapshot().await?.0 >= gap.horizon),
            None => Ok(false),
        }
    }

    /// Whether the missing sequence number `seq` can be skipped: `cleared` is
    /// [`Relay::gap_cleared`] from before the read that found it missing.
    async fn gap_resolved(&mut self, seq: i64, cleared: bool) -> anyhow::Result<bool> {
        if self.source.backend() == Backend::Sqlite {
            // One writer at a time: a number below a visible one is never still in flight.
            return Ok(true);
        }
        match &mut self.gap {
            Some(gap) if gap.seq == seq => {
                if cleared {
                    return Ok(true);
                }
                if !gap.reported && gap.since.elapsed() >= self.gap_report_after {
                    gap.reported = true;
                    tracing::warn!(stream = %self.stream, seq, waited = ?gap.since.elapsed(), "a change is missing and a transaction that may hold it is still open; not moving past it");
                }
                Ok(false)
            }
            _ => {
                let (_, xmax) = self.snapshot().await?;
                self.gap = Some(Gap {
                    seq,
                    horizon: xmax,
                    since: Instant::now(),
                    reported: false,
                });
                Ok(false)
            }
        }
    }

    /// Applies a batch with its checkpoint; returns how many keys it parked.
    async fn apply(&self, changes: &[Change], new_cursor: i64) -> anyhow::Result<usize> {
        let first = changes.first().map_or(new_cursor, |c| c.seq);
        // The stream's lock first: it serialises this batch with a backfill chunk (and with a
        // second relay that should not be running), and the checkpoint must not have moved.
        let mut sync = SyncTx::begin(&self.target, &self.stream, "sync").await?;
        let held = sync.checkpoint();
        let tx = sync.tx();
        anyhow::ensure!(
            held < first,
            "the checkpoint of {} moved to {held} while this relay read up to {first}: is another relay running?",
            self.stream
        );
        // The batch collapsed to the last change of each key (images are whole rows, so the
        // last one is the row's state): the same result as applying each change in order.
        let mut last: HashMap<(usize, String), Held> = HashMap::with_capacity(changes.len());
        for change in changes {
            // One change log serves every carve-out whose tables live in this database: a
            // change of another carve-out's table is that carve-out's relay's business. The
            // cursor moves past it (the log is read whole, so its sequence stays gap-checked).
            let Ok(index) = self.table_index(&change.table) else {
                continue;
            };
            let key: Vec<Value> = self.mapping.tables[index]
                .key
                .iter()
                .map(|c| change.pk.get(&c.source).cloned().unwrap_or(Value::Null))
                .collect();
            let key = Value::from(key).to_string();
            last.insert((index, key.clone()), change.held(key));
        }
        // Keys parked before wait: their new change queues behind the parked one.
        let parked_keys = parked::keys(tx, &self.target, &self.stream).await?;
        let mut ready = Vec::with_capacity(last.len());
        for ((index, _), change) in &last {
            if parked_keys.contains(&(change.table.clone(), change.key.clone())) {
                parked::park(
                    tx,
                    &self.target,
                    &self.stream,
                    change,
                    "waits behind a parked change",
                )
                .await?;
            } else {
                ready.push((*index, change));
            }
        }
        // One multi-row upsert per table and the deletes, in a savepoint; if the target refuses
        // the data, key by key, parking each key it refuses.
        let mut newly_parked = 0;
        let mut savepoint = sqlx::Acquire::begin(&mut *tx).await?;
        match apply_changes(&self.target, &mut savepoint, &self.mapping, &ready).await {
            Ok(()) => savepoint.commit().await?,
            Err(ApplyError::Failed(err)) => return Err(err),
            Err(ApplyError::Refused(_)) => {
                savepoint.rollback().await?;
                for one in &ready {
                    let mut savepoint = sqlx::Acquire::begin(&mut *tx).await?;
                    match apply_changes(&self.target, &mut savepoint, &self.mapping, &[*one]).await
                    {
                        Ok(()) => savepoint.commit().await?,
                        Err(ApplyError::Failed(err)) => return Err(err),
                        Err(ApplyError::Refused(error)) => {
                            savepoint.rollback().await?;
                            let change = one.1;
                            tracing::warn!(stream = %self.stream, table = %change.table, key = %change.key, seq = change.seq, %error, "the target refused a change; parked its key");
                            parked::park(tx, &self.target, &self.stream, change, &error).await?;
                            newly_parked += 1;
                        }
                    }
                }
            }
        }
        sync.commit_at(new_cursor).await?;
        Ok(newly_parked)
    }
}

/// Applies changes (one per key, table index beside each) inside `tx`: the upserts of each table
/// as one statement per chunk, and the deletes.
async fn apply_changes(
    db: &Db,
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    mapping: &Mapping,
    changes: &[(usize, &Held)],
) -> Result<(), ApplyError> {
    for (index, table) in mapping.tables.iter().enumerate() {
        let mut rows = Vec::new();
        for (i, change) in changes {
            if *i != index {
                continue;
            }
            let refused = |e: String| ApplyError::Refused(format!("change {}: {e}", change.seq));
            match (change.op.as_str(), &change.image) {
                ("D", _) => {
                    delete(db, table, &change.pk)
                        .map_err(refused)?
                        .query()
                        .map_err(|e| ApplyError::Failed(e.into()))?
                        .execute(&mut **tx)
                        .await?;
                }
                (_, Some(image)) => rows.push(table.to_target(image).map_err(refused)?),
                (op, None) => {
                    return Err(ApplyError::Refused(format!(
                        "change {} ({op}) has no row image",
                        change.seq
                    )))
                }
            }
        }
        upsert_all(db, tx, table, &rows).await?;
    }
    Ok(())
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

fn chrono_age(at: &str) -> Option<Duration> {
    let then =
        time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()?;
    let age = time::OffsetDateTime::now_utc() - then;
    Some(Duration::from_secs_f64(age.as_seconds_f64().max(0.0)))
}

/// Binds `value` as the kind of its column.
pub(crate) fn bind(statement: &mut Statement, kind: Kind, value: &Value) -> Result<(), String> {
    match kind {
        Kind::Integer => {
            let v = match value {
                Value::Null => None,
                Value::Number(n) => {
                    Some(n.as_i64().ok_or_else(|| format!("{n} is not an integer"))?)
                }
                Value::Bool(b) => Some(i64::from(*b)),
                Value::String(s) => {
                    Some(s.parse().map_err(|_| format!("{s:?} is not an integer"))?)
                }
                other => return Err(format!("{other} is not an integer")),
            };
            statement.bind(v);
        }
        Kind::Real => {
            let v = match value {
                Value::Null => None,
                Value::Number(n) => n.as_f64(),
                Value::String(s) => Some(s.parse().map_err(|_| format!("{s:?} is not a number"))?),
                other => return Err(format!("{other} is not a number")),
            };
            statement.bind(v);
        }
        Kind::Bool => {
            let v = match value {
                Value::Null => None,
                Value::Bool(b) => Some(*b),
                Value::Number(n) => Some(n.as_i64() != Some(0)),
                other => return Err(format!("{other} is not a boolean")),
            };
            statement.bind(v);
        }
        Kind::Text => {
            let v = match value {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            };
            statement.bind(v);
        }
    }
    Ok(())
}

/// Upserts target rows (values in [`TableMap::all`] order) in as few statements as the
/// database's limit on bound values allows.
pub(crate) async fn upsert_all(
    db: &Db,
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    table: &TableMap,
    rows: &[Vec<Value>],
) -> anyhow::Result<()> {
    // SQLite takes at most 32,766 bound values a statement.
    let per_statement = (30_000 / table.all().count().max(1)).max(1);
    for chunk in rows.chunks(per_statement) {
        upsert_rows(db, table, chunk)
            .map_err(|e| anyhow::anyhow!("{}: {e}", table.source))?
            .query()?
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// `INSERT ... ON CONFLICT (key) DO UPDATE` of a source row image into the target table.
pub(crate) fn upsert(
    db: &Db,
    table: &TableMap,
    image: &Map<String, Value>,
) -> Result<Statement, String> {
    upsert_rows(db, table, &[table.to_target(image)?])
}

/// One `INSERT ... ON CONFLICT (key) DO UPDATE` of many target rows (values in
/// [`TableMap::all`] order).
pub(crate) fn upsert_rows(
    db: &Db,
    table: &TableMap,
    rows: &[Vec<Value>],
) -> Result<Statement, String> {
    let columns: Vec<&str> = table.all().map(|c| c.target.as_str()).collect();
    let mut statement = db.statement(format!(
        "INSERT INTO {} ({}) VALUES ",
        table.target,
        columns.join(", ")
    ));
    for (r, values) in rows.iter().enumerate() {
        statement.push(if r == 0 { "(" } else { ", (" });
        for (i, (column, value)) in table.all().zip(values).enumerate() {
            if i > 0 {
                statement.push(", ");
            }
            bind(&mut statement, column.target_kind, value)?;
        }
        statement.push(")");
    }
    statement.push(&on_conflict(table));
    Ok(statement)
}

/// The ` ON CONFLICT (key) DO UPDATE SET ...` that makes an insert of target rows an upsert.
pub(crate) fn on_conflict(table: &TableMap) -> String {
    let keys: Vec<&str> = table.key.iter().map(|c| c.target.as_str()).collect();
    if table.columns.is_empty() {
        return format!(" ON CONFLICT ({}) DO NOTHING", keys.join(", "));
    }
    let sets: Vec<String> = table
        .columns
        .iter()
        .map(|c| format!("{0} = excluded.{0}", c.target))
        .collect();
    format!(
        " ON CONFLICT ({}) DO UPDATE SET {}",
        keys.join(", "),
        sets.join(", ")
    )
}

/// `DELETE` of the target row with a source key.
pub(crate) fn delete(
    db: &Db,
    table: &TableMap,
    pk: &Map<String, Value>,
) -> Result<Statement, String> {
    let mut statement = db.statement(format!("DELETE FROM {} WHERE ", table.target));
    for (i, column) in table.key.iter().enumerate() {
        let value = pk
            .get(&column.source)
            .ok_or_else(|| format!("the key column {} is missing", column.source))?;
        let value = column.transform.apply(value)?;
        if i > 0 {
            statement.push(" AND ");
        }
        statement.push(&format!("{} = ", column.target));
        bind(&mut statement, column.target_kind, &value)?;
    }
    Ok(statement)
}
