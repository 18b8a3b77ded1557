//! A carve-out's data sync as configured: its mapping file and its two databases, opened and
//! checked for one direction.

use std::path::PathBuf;

use anyhow::Context as _;
use sqlkit::{Db, DbOptions};

use crate::mapping::Mapping;
use crate::relay::Relay;

/// Which way the data flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Monolith → service (while the monolith owns the writes).
    Forward,
    /// Service → monolith (once the service owns them).
    Reverse,
}

impl Direction {
    /// `forward` or `reverse`.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Reverse => "reverse",
        }
    }

    /// The other way.
    pub fn opposite(self) -> Direction {
        match self {
            Direction::Forward => Direction::Reverse,
            Direction::Reverse => Direction::Forward,
        }
    }
}

impl std::str::FromStr for Direction {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "forward" => Ok(Direction::Forward),
            "reverse" => Ok(Direction::Reverse),
            other => Err(format!("{other:?} is no direction: forward or reverse")),
        }
    }
}

/// Where a carve-out's data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncSetup {
    /// The carve-out.
    pub carveout: String,
    /// Its mapping file.
    pub mapping: PathBuf,
    /// The monolith's database (SQLite path or postgres:// URL).
    pub monolith_db: String,
    /// The service's database.
    pub service_db: String,
}

/// A direction's source and target, with the mapping as it reads in that direction.
pub struct Sides {
    /// The mapping (reversed for `reverse`).
    pub mapping: Mapping,
    /// Where changes come from.
    pub source: Db,
    /// Where they go.
    pub target: Db,
    /// Which way.
    pub direction: Direction,
}

impl Sides {
    /// The stream's name (`catalog:forward`).
    pub fn stream(&self) -> String {
        format!("{}:{}", self.mapping.carveout, self.direction.name())
    }

    /// The relay of this direction.
    pub async fn relay(self) -> anyhow::Result<Relay> {
        Relay::new(
            self.source,
            self.target,
            self.mapping,
            self.direction.name(),
        )
        .await
    }
}

impl SyncSetup {
    /// Opens both databases and checks the mapping against them, as it reads in `direction`
    /// (a reverse mapping is checked both ways: the monolith's columns must be filled too).
    pub async fn open(&self, direction: Direction) -> anyhow::Result<Sides> {
        let mut mapping = Mapping::load(&self.mapping)?;
        anyhow::ensure!(
            mapping.carveout == self.carveout,
            "{} maps carve-out {}, not {}",
            self.mapping.display(),
            mapping.carveout,
            self.carveout
        );
        let options = DbOptions::default();
        let monolith = Db::connect_unmigrated(&self.monolith_db, &options)
            .await
            .context("the monolith's database")?;
        let service = Db::connect_unmigrated(&self.service_db, &options)
            .await
            .context("the service's database")?;
        mapping.check(&monolith, &service).await?;
        Ok(match direction {
            Direction::Forward => Sides {
                mapping,
                source: monolith,
                target: service,
                direction,
            },
            Direction::Reverse => {
                let mut reversed = mapping.reversed();
                reversed.check(&service, &monolith).await?;
                Sides {
                    mapping: reversed,
                    source: service,
                    target: monolith,
                    direction,
                }
            }
        })
    }
}
