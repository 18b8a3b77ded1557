//! `strangler cutover` and `strangler rollback`: ask the control plane to move a carve-out's
//! writes between the monolith and its service.
//!
//! The procedure (guards, write fence acknowledged by every replica, relay drained, re-verify,
//! ownership flipped and acknowledged, fence lifted) is the control plane's
//! ([`strangler_proxy::control::ownership`]): it runs in the proxy replica that the admin API
//! belongs to, which knows the carve-out's databases from its configuration. Each step is printed
//! on stderr; a refusal or an abort names its cause and exits non-zero.

use anyhow::bail;
use clap::Args;
use serde_json::Value;
use strangler_proxy::control::admin::{MoveBody, MoveReport};

use crate::Admin;

/// What a cut-over or roll-back needs.
#[derive(Debug, Clone, Args)]
pub struct CutoverArgs {
    /// Why (recorded in the audit log).
    #[arg(long)]
    pub reason: String,
    /// Cut-over only: proceed without a green contract verification (audited); no other guard
    /// is passed.
    #[arg(long)]
    pub force: bool,
    /// Who you are, for an admin API without tokens (with a token, the audit log records the
    /// operator the token belongs to, and another name is refused).
    #[arg(long)]
    pub actor: Option<String>,
    /// Roll-back only: the canary share the carve-out returns to.
    #[arg(long)]
    pub percent: Option<f64>,
}

/// What `strangler retire` needs.
#[derive(Debug, Clone, Args)]
pub struct RetireArgs {
    /// Why (recorded in the audit log).
    #[arg(long)]
    pub reason: String,
    /// Who you are, for an admin API without tokens.
    #[arg(long)]
    pub actor: Option<String>,
}

/// Runs a cut-over (`to_service`) or a roll-back, printing each step on stderr as the control
/// plane reports it; returns the steps and a closing line.
pub async fn run(
    admin: &Admin,
    name: &str,
    args: CutoverArgs,
    to_service: bool,
) -> anyhow::Result<String> {
    let route = if to_service { "cutover" } else { "rollback" };
    let body = MoveBody {
        reason: args.reason,
        force: args.force,
        percent: args.percent,
        actor: args.actor,
    };
    procedure(admin, name, route, &body).await
}

/// Retires a carve-out (after its dwell in `extracted`), printing each step on stderr.
pub async fn retire(admin: &Admin, name: &str, args: RetireArgs) -> anyhow::Result<String> {
    let body = MoveBody {
        reason: args.reason,
        force: false,
        percent: None,
        actor: args.actor,
    };
    procedure(admin, name, "retire", &body).await
}

/// Asks the control plane to run `route` (`cutover`, `rollback`, `retire`) on `name`.
async fn procedure(
    admin: &Admin,
    name: &str,
    route: &str,
    body: &MoveBody,
) -> anyhow::Result<String> {
    // A move holds the writes for a while and verifies: give it more than a plain call.
    let request = admin
        .request(reqwest::Method::POST, &format!("/carveouts/{name}/{route}"))
        .timeout(std::time::Duration::from_secs(600))
        .json(body);
    let response = request.send().await?;
    let status = response.status();
    let answer: Value = response.json().await?;
    let steps = |answer: &Value| -> String {
        answer["steps"]
            .as_array()
            .map(|steps| {
                steps
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|s| format!("{s}\n"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let done = steps(&answer);
    let _ = std::io::Write::write_all(&mut std::io::stderr(), done.as_bytes());
    if !status.is_success() {
        let detail = answer["detail"].as_str().unwrap_or("no detail");
        bail!("{detail}");
    }
    let report: MoveReport = serde_json::from_value(answer)?;
    Ok(format!("{done}{route} of {} done\n", report.carveout))
}
