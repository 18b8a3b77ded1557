//! Accounts: the shop's customers.
//!
//! Owns the `accounts_*` tables. Other modules reach customers only through [`AccountsApi`];
//! the storage (`store`) and the HTTP handlers (`http`) are private to this module.

mod http;
mod store;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::db::Db;
use crate::error::{Error, Result};

pub use http::router;
pub use store::seed_customers;

/// A registered customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Customer {
    /// Customer id.
    pub id: i64,
    /// Email address, unique across customers (stored lower-cased).
    pub email: String,
    /// Display name.
    pub name: String,
    /// When the customer registered (RFC 3339, UTC).
    pub created_at: String,
}

/// The body of `POST /accounts`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCustomer {
    /// Email address; must be unique.
    pub email: String,
    /// Display name.
    pub name: String,
}

/// The accounts module's facade: the only way other modules reach customers.
#[async_trait]
pub trait AccountsApi: Send + Sync {
    /// Registers a customer; a duplicate email is a conflict.
    async fn create_customer(&self, new: NewCustomer) -> Result<Customer>;
    /// The customer with this id, if any.
    async fn customer(&self, id: i64) -> Result<Option<Customer>>;
}

/// The in-process implementation of [`AccountsApi`], backed by the shop's database.
#[derive(Debug, Clone)]
pub struct Accounts {
    db: Db,
}

impl Accounts {
    /// Accounts stored in `db`.
    pub fn new(db: Db) -> Self {
        Accounts { db }
    }
}

#[async_trait]
impl AccountsApi for Accounts {
    async fn create_customer(&self, new: NewCustomer) -> Result<Customer> {
        let new = validate(new)?;
        store::insert(&self.db, &new).await
    }

    async fn customer(&self, id: i64) -> Result<Option<Customer>> {
        store::find(&self.db, id).await
    }
}

fn validate(new: NewCustomer) -> Result<NewCustomer> {
    let NewCustomer {
        email: raw_email,
        name,
    } = new;
    let email = raw_email.trim().to_lowercase();
    let name = name.trim().to_owned();
    let valid_email = email.len() <= 254
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
        && !email.contains(char::is_whitespace);
    if !valid_email {
        return Err(Error::Unprocessable(format!(
            "email {raw_email:?} is not a valid address"
        )));
    }
    if name.is_empty() || name.chars().count() > 200 {
        return Err(Error::Unprocessable(
            "name must be 1 to 200 characters".to_owned(),
        ));
    }
    Ok(NewCustomer { email, name })
}
