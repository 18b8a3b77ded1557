//! The sync transaction: every write the data sync makes to a target goes through one.
//!
//! A [`SyncTx`]:
//! - **marks** its writes (a row in `sync_applying`), so the target's own capture triggers skip
//!   them: a relay's, a backfill's or a repair's writes are never captured again, and the two
//!   directions of a carve-out cannot echo;
//! - **locks** the stream it serves (its checkpoint row, `FOR UPDATE` on PostgreSQL; on SQLite
//!   the marker's write takes the database's writer lock): relay batches, backfill chunks and
//!   operator actions on one stream run one at a time;
//! - **ends** by removing the marker and, for a relay batch, moving the checkpoint, in the same
//!   commit as the writes: a crash at any point loses nothing and applies nothing twice.
//!
//! The PostgreSQL `COPY` path of the backfill runs on a native connection and uses the same
//! statements ([`MARK`], [`UNMARK`], [`ENSURE_CHECKPOINT`], [`LOCK_CHECKPOINT_PG`]).

use sqlkit::{Backend, Db};
use sqlx::Row;

/// Marks the transaction's writes as the sync's own (`$1`: who writes, e.g. `sync`).
pub(crate) const MARK: &str = "INSERT INTO sync_applying (origin) VALUES ($1)";
/// Removes the mark before the commit (triggers of later transactions see none).
pub(crate) const UNMARK: &str = "DELETE FROM sync_applying";
/// Makes sure the stream (`$1`) has a checkpoint row to lock (`$2`: now).
pub(crate) const ENSURE_CHECKPOINT: &str = "INSERT INTO sync_checkpoints (stream, seq, at) \
     VALUES ($1, 0, $2) ON CONFLICT (stream) DO NOTHING";
/// Locks the stream's checkpoint row on PostgreSQL and reads it.
pub(crate) const LOCK_CHECKPOINT_PG: &str =
    "SELECT seq FROM sync_checkpoints WHERE stream = $1 FOR UPDATE";
const READ_CHECKPOINT: &str = "SELECT seq FROM sync_checkpoints WHERE stream = $1";
const MOVE_CHECKPOINT: &str = "INSERT INTO sync_checkpoints (stream, seq, at) VALUES ($1, $2, $3) \
     ON CONFLICT (stream) DO UPDATE SET seq = excluded.seq, at = excluded.at";

/// One transaction of the data sync on a target (see the module doc).
pub(crate) struct SyncTx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    stream: Option<String>,
    checkpoint: i64,
}

impl SyncTx {
    /// Begins a marked transaction holding `stream`'s lock; `origin` names the writer.
    pub(crate) async fn begin(db: &Db, stream: &str, origin: &str) -> anyhow::Result<SyncTx> {
        let mut tx = db.pool().begin().await?;
        sqlx::query(MARK).bind(origin).execute(&mut *tx).await?;
        sqlx::query(ENSURE_CHECKPOINT)
            .bind(stream)
            .bind(sqlkit::now())
            .execute(&mut *tx)
            .await?;
        let lock = match db.backend() {
            Backend::Postgres => LOCK_CHECKPOINT_PG,
            Backend::Sqlite => READ_CHECKPOINT,
        };
        let checkpoint: i64 = sqlx::query(lock)
            .bind(stream)
            .fetch_one(&mut *tx)
            .await?
            .try_get("seq")?;
        Ok(SyncTx {
            tx,
            stream: Some(stream.to_owned()),
            checkpoint,
        })
    }

    /// Begins a marked transaction that serves no stream (a repair of drifted rows).
    pub(crate) async fn begin_unlocked(db: &Db, origin: &str) -> anyhow::Result<SyncTx> {
        let mut tx = db.pool().begin().await?;
        sqlx::query(MARK).bind(origin).execute(&mut *tx).await?;
        Ok(SyncTx {
            tx,
            stream: None,
            checkpoint: 0,
        })
    }

    /// The stream's checkpoint when the lock was taken.
    pub(crate) fn checkpoint(&self) -> i64 {
        self.checkpoint
    }

    /// The transaction, for the writes.
    pub(crate) fn tx(&mut self) -> &mut sqlx::Transaction<'static, sqlx::Any> {
        &mut self.tx
    }

    /// Removes the mark and commits, the checkpoint unchanged.
    pub(crate) async fn commit(self) -> anyhow::Result<()> {
        self.finish(None).await
    }

    /// Removes the mark, moves the stream's checkpoint to `seq`, and commits.
    pub(crate) async fn commit_at(self, seq: i64) -> anyhow::Result<()> {
        self.finish(Some(seq)).await
    }

    async fn finish(mut self, seq: Option<i64>) -> anyhow::Result<()> {
        sqlx::query(UNMARK).execute(&mut *self.tx).await?;
        if let (Some(seq), Some(stream)) = (seq, &self.stream) {
            sqlx::query(MOVE_CHECKPOINT)
                .bind(stream.as_str())
                .bind(seq)
                .bind(sqlkit::now())
                .execute(&mut *self.tx)
                .await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}
