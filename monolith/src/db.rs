//! The shop's database: [`sqlkit`] with the monolith's migrations (`migrations/monolith/`).

use sqlx::migrate::Migrator;

pub use sqlkit::{is_unique_violation, now, redact, timestamp, Backend, DbOptions, Statement};

static SQLITE: Migrator = sqlx::migrate!("../migrations/monolith/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("../migrations/monolith/postgres");

/// The monolith's migrations.
pub const MIGRATIONS: sqlkit::Migrations = sqlkit::Migrations {
    name: "monolith",
    sqlite: &SQLITE,
    postgres: &POSTGRES,
};

/// A pooled connection to the shop's database.
#[derive(Debug, Clone)]
pub struct Db(sqlkit::Db);

impl Db {
    /// Connects to `url` (`sqlite:` path or `postgres://` URL) and applies the migrations.
    pub async fn connect(url: &str, options: &DbOptions) -> anyhow::Result<Db> {
        sqlkit::Db::connect(url, options, &MIGRATIONS).await.map(Db)
    }
}

impl std::ops::Deref for Db {
    type Target = sqlkit::Db;

    fn deref(&self) -> &sqlkit::Db {
        &self.0
    }
}
