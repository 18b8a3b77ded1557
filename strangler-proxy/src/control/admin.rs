//! The admin API, on its own listener: carve-outs, phase changes, the audit log, shadow
//! mismatches and metrics.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /carveouts` | every carve-out with its phase |
//! | `GET /carveouts/{name}` | one carve-out |
//! | `POST /carveouts/{name}/phase` | `{"phase", "percent"?, "reason", "force"?, "actor"?}` |
//! | `GET /audit?carveout=&limit=` | audit entries, newest first |
//! | `GET /carveouts/{name}/status` | one view: phase, fence, traffic per side, shadow, data sync, contracts, replicas |
//! | `GET /carveouts/{name}/mismatches` | the latest shadow mismatches |
//! | `GET /carveouts/{name}/captures` | captured monolith exchanges (redacted), for contracts |
//! | `POST /carveouts/{name}/cutover` | move the writes to the service, guarded `{"reason", "force"?, "actor"?}` (a carve-out with a data sync) |
//! | `POST /carveouts/{name}/rollback` | move them back `{"reason", "percent"?, "actor"?}` |
//! | `POST /carveouts/{name}/retire` | retire a synced carve-out after its dwell in `extracted` `{"reason", "actor"?}` |
//! | `POST /carveouts/{name}/fence` | hold the carve-out's writes `{"hold_ms"}` (at most 30 s; a cut-over's write fence) |
//! | `DELETE /carveouts/{name}/fence` | let them go |
//! | `POST /carveouts/{name}/verifications` | report a contract verification `{"provider", "interactions", "failures", "actor"?}` |
//! | `GET /carveouts/{name}/verifications?limit=` | reported verifications, newest first |
//! | `GET /replicas` | every registered replica: address, version, heartbeat, applied epoch, live |
//! | `GET /control/epoch` | the control epoch (every change bumps it) |
//! | `POST /control/await` | `{"epoch", "timeout_ms"}`: 200 once every live replica applied it, 409 naming those that did not |
//! | `GET /metrics` | Prometheus text |
//! | `GET /livez` | liveness (no token needed) |
//! | `GET /readyz` | readiness: 503 while the control database is unavailable (no token needed) |
//! | `GET /dashboard` | the operator dashboard (see [`super::dashboard`]; the page holds no data) |
//! | `GET /dashboard/data` | everything the dashboard shows, in one read |
//! | `POST /dashboard/session` | `{"token"}`: signs the dashboard in (an HttpOnly cookie); `DELETE` signs it out |
//!
//! Every route but `/livez`, `/readyz` and the dashboard's page, script and sign-in needs
//! `Authorization: Bearer <token>` (or the dashboard's cookie, which a change must back with
//! `X-Strangler-Csrf: 1`) when tokens are configured;
//! the proxy refuses to start the admin API on a non-loopback address without one, and refuses
//! blank tokens. Each token belongs to a named operator: the audit log records that name as the
//! actor, and a request that claims another `actor` is refused (403). Only an open admin API
//! (loopback, no tokens) takes the caller's word for who it is. A reason is at most
//! [`super::MAX_REASON`] characters. Errors are problem+json.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};

use super::store::{AuditEntry, CarveOutState, Verification};
use super::{ControlPlane, PhaseChange, TransitionError};
use crate::config::OperatorToken;
use crate::phase::Phase;
use crate::problem::Problem;

/// State of the admin routes.
#[derive(Clone)]
struct Admin {
    control: ControlPlane,
    tokens: Arc<[OperatorToken]>,
}

/// Who made a request: the operator its token belongs to (`None` on an open admin API).
#[derive(Debug, Clone)]
struct Operator(Option<Arc<str>>);

impl Operator {
    /// The actor to record: the token's operator; on an open API, the caller's claim or
    /// `anonymous`. A claim that is not the token's operator is refused.
    fn actor(&self, claimed: Option<String>) -> Result<String, Problem> {
        match (&self.0, claimed) {
            (Some(name), Some(claimed)) if claimed != **name => Err(Problem::new(
                StatusCode::FORBIDDEN,
                "actor-mismatch",
                format!("this token belongs to {name}; it cannot act as {claimed:?}"),
            )),
            (Some(name), _) => Ok(name.to_string()),
            (None, Some(claimed)) if claimed.trim().is_empty() || claimed.len() > 64 => {
                Err(Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid-body",
                    "actor must be 1 to 64 characters",
                ))
            }
            (None, Some(claimed)) => Ok(claimed),
            (None, None) => Ok("anonymous".to_owned()),
        }
    }
}

/// The admin router. `tokens`: the operators whose bearer tokens are accepted on every route
/// but `/livez` (none: an open API).
pub fn router(control: ControlPlane, tokens: Vec<OperatorToken>) -> Router {
    let admin = Admin {
        control,
        tokens: tokens.into(),
    };
    Router::new()
        .route("/carveouts", get(list))
        .route("/carveouts/{name}", get(show))
        .route("/carveouts/{name}/phase", post(set_phase))
        .route("/carveouts/{name}/mismatches", get(mismatches))
        .route("/carveouts/{name}/status", get(status))
        .route("/carveouts/{name}/captures", get(captures))
        .route("/carveouts/{name}/fence", post(fence).delete(unfence))
        .route("/carveouts/{name}/cutover", post(cut_over))
        .route("/carveouts/{name}/rollback", post(roll_back))
        .route("/carveouts/{name}/retire", post(retire))
        .route(
            "/carveouts/{name}/rollout",
            get(rollout_show).post(rollout_start),
        )
        .route("/carveouts/{name}/rollout/{action}", post(rollout_act))
        .route(
            "/carveouts/{name}/verifications",
            get(verifications).post(report_verification),
        )
        .route("/audit", get(audit))
        .route("/replicas", get(replicas))
        .route("/control/epoch", get(epoch))
        .route("/control/await", post(await_applied))
        .route("/dashboard/data", get(dashboard_data))
        .route_layer(axum::middleware::from_fn_with_state(
            admin.clone(),
            require_control,
        ))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            admin.clone(),
            authorize,
        ))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        // The page and its script hold no data: whoever has no token sees the sign-in form.
        .route("/dashboard", get(dashboard_page))
        .route("/dashboard/app.js", get(dashboard_script))
        .route("/dashboard/session", post(sign_in).delete(sign_out))
        .fallback(|| async {
            Problem::new(StatusCode::NOT_FOUND, "not-found", "no such admin route")
        })
        .with_state(admin)
}

/// The dashboard's sign-in cookie: the token, base64url-encoded.
const COOKIE: &str = "strangler_admin";
/// The header a change signed in by the cookie must carry (a cross-site form cannot set it).
const CSRF_HEADER: &str = "x-strangler-csrf";

/// The operator a token belongs to.
fn operator_of(admin: &Admin, presented: &str) -> Option<Arc<str>> {
    // Every token is compared, whichever matches, so timing tells nothing.
    let mut found = None;
    for known in admin.tokens.iter() {
        if constant_time_eq(presented.as_bytes(), known.token.as_bytes()) {
            found = Some(Arc::<str>::from(known.name.as_str()));
        }
    }
    found
}

/// The token in the dashboard's cookie, if the request carries one.
fn cookie_token(headers: &axum::http::HeaderMap) -> Option<String> {
    use base64::Engine as _;
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .find_map(|value| {
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(value)
                .ok()?;
            String::from_utf8(bytes).ok()
        })
}

/// The answer of an admin route: a success, or a problem (every refusal is problem+json).
type Answer<T = Response> = Result<T, Problem>;

/// The control database failed: 503, with the cause (it names no secret), to try again.
fn unavailable(err: &sqlx::Error) -> Problem {
    tracing::warn!(error = %err, "control database unavailable");
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "control-database-unavailable",
        format!("the control database is unavailable: {err}"),
    )
    .with_header(header::RETRY_AFTER, "1")
}

impl From<sqlx::Error> for Problem {
    fn from(err: sqlx::Error) -> Problem {
        unavailable(&err)
    }
}

impl From<JsonRejection> for Problem {
    fn from(rejection: JsonRejection) -> Problem {
        Problem::new(rejection.status(), "invalid-body", rejection.body_text())
    }
}

impl From<QueryRejection> for Problem {
    fn from(rejection: QueryRejection) -> Problem {
        Problem::new(rejection.status(), "invalid-query", rejection.body_text())
    }
}

/// A refused phase change.
impl From<TransitionError> for Problem {
    fn from(err: TransitionError) -> Problem {
        let (status, slug) = match &err {
            TransitionError::UnknownCarveOut(_) => (StatusCode::NOT_FOUND, "not-found"),
            TransitionError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-request"),
            TransitionError::Skips { .. } => (StatusCode::CONFLICT, "transition-refused"),
            TransitionError::NoChange { .. } => (StatusCode::CONFLICT, "no-change"),
            TransitionError::Guarded { .. } => (StatusCode::CONFLICT, "precheck-failed"),
            TransitionError::Conflict(_) => (StatusCode::CONFLICT, "concurrent-change"),
            TransitionError::Store(err) => return unavailable(err),
        };
        Problem::new(status, slug, err.to_string())
    }
}

/// A refused rollout command.
impl From<super::rollout::RolloutError> for Problem {
    fn from(err: super::rollout::RolloutError) -> Problem {
        use super::rollout::RolloutError;
        match err {
            RolloutError::UnknownCarveOut(_) | RolloutError::NoRollout(_) => {
                Problem::new(StatusCode::NOT_FOUND, "not-found", err.to_string())
            }
            RolloutError::NoPlan(_) | RolloutError::Invalid(_) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-plan",
                err.to_string(),
            ),
            RolloutError::State(_) => {
                Problem::new(StatusCode::CONFLICT, "rollout-state", err.to_string())
            }
            RolloutError::Transition(err) => err.into(),
            RolloutError::Store(err) => err.into(),
        }
    }
}

/// 404 for a name that is not a carve-out.
fn no_carveout(name: &str) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        format!("no carve-out named {name}"),
    )
}

async fn authorize(State(admin): State<Admin>, mut request: Request, next: Next) -> Response {
    let mut operator = Operator(None);
    if !admin.tokens.is_empty() {
        let bearer = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let by_cookie = bearer.is_none();
        let presented = bearer
            .or_else(|| cookie_token(request.headers()))
            .unwrap_or_default();
        operator = Operator(operator_of(&admin, &presented));
        let reads = matches!(
            *request.method(),
            axum::http::Method::GET | axum::http::Method::HEAD
        );
        if operator.0.is_some() && by_cookie && !reads {
            let marked = request
                .headers()
                .get(CSRF_HEADER)
                .is_some_and(|v| v.as_bytes() == b"1");
            if !marked {
                return Problem::new(
                    StatusCode::FORBIDDEN,
                    "csrf",
                    "a change signed in by the dashboard's cookie needs the X-Strangler-Csrf: 1 header",
                )
                .into_response();
            }
        }
        if operator.0.is_none() {
            return Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid admin token is required (Authorization: Bearer <token>)",
            )
            .with_header(header::WWW_AUTHENTICATE, "Bearer")
            .into_response();
        }
    }
    request.extensions_mut().insert(operator);
    next.run(request).await
}

/// Every route that reads or writes the control database answers 503 while it is unavailable:
/// a change written to a deleted SQLite file would be acknowledged and lost.
async fn require_control(State(admin): State<Admin>, request: Request, next: Next) -> Response {
    if let Err(err) = admin.control.store().health().await {
        return unavailable(&err).into_response();
    }
    next.run(request).await
}

async fn ready(State(admin): State<Admin>) -> Answer<&'static str> {
    admin.control.ready().await.map_err(|why| {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "not-ready", why)
            .with_header(header::RETRY_AFTER, "1")
    })?;
    Ok("ready")
}

/// Compares without an early exit, so response time does not leak the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A carve-out as the admin API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct CarveOutView {
    /// Its name.
    pub name: String,
    /// `monolith`, `shadow`, `canary`, `extracted` or `retired`.
    pub phase: String,
    /// The canary share (0 to 100), for `canary`.
    pub percent: Option<f64>,
    /// Its service upstream.
    pub upstream: String,
    /// Its routes, as `METHODS pattern`.
    pub routes: Vec<String>,
    /// State version (bumped by each change).
    pub version: i64,
    /// Last change: when, who, why.
    pub updated_at: String,
    /// Who made the last change.
    pub updated_by: String,
    /// Why.
    pub reason: String,
    /// After a change: the control epoch that includes it (for `POST /control/await`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
}

fn view(control: &ControlPlane, state: CarveOutState) -> CarveOutView {
    let routing = control.proxy().routing();
    let live = routing
        .carveouts()
        .iter()
        .find(|c| c.spec.name == state.name);
    let routes = routing
        .routes()
        .iter()
        .filter(|r| r.carveout_name == state.name)
        .map(|r| {
            let methods = if r.methods.is_empty() {
                "*".to_owned()
            } else {
                r.methods
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            format!("{methods} {}", r.pattern.as_str())
        })
        .collect();
    CarveOutView {
        name: state.name,
        phase: state.phase.name().to_owned(),
        percent: match state.phase {
            Phase::Canary { basis_points } => Some(f64::from(basis_points) / 100.0),
            _ => None,
        },
        upstream: live.map_or_else(String::new, |c| c.service().name().to_owned()),
        routes,
        version: state.version,
        updated_at: state.updated_at,
        updated_by: state.updated_by,
        reason: state.reason,
        epoch: None,
    }
}

async fn list(State(admin): State<Admin>) -> Answer<Json<Vec<CarveOutView>>> {
    let states = admin.control.store().states().await?;
    Ok(Json(
        states
            .into_iter()
            .map(|s| view(&admin.control, s))
            .collect(),
    ))
}

async fn show(State(admin): State<Admin>, Path(name): Path<String>) -> Answer<Json<CarveOutView>> {
    let state = admin
        .control
        .store()
        .state(&name)
        .await?
        .ok_or_else(|| no_carveout(&name))?;
    Ok(Json(view(&admin.control, state)))
}

/// The body of `POST /carveouts/{name}/phase`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseRequest {
    /// The new phase.
    pub phase: String,
    /// The canary share (0 to 100, 0.01 steps), for `canary`.
    pub percent: Option<f64>,
    /// Why (required; recorded in the audit log).
    pub reason: String,
    /// Allow skipping phases (recorded as forced).
    #[serde(default)]
    pub force: bool,
    /// Who asks: with a token, its operator's name (or left out); on an open admin API,
    /// whoever the caller says (default `anonymous`).
    pub actor: Option<String>,
}

async fn set_phase(
    State(admin): State<Admin>,
    Extension(operator): Extension<Operator>,
    Path(name): Path<String>,
    body: Result<Json<PhaseRequest>, JsonRejection>,
) -> Answer<Json<CarveOutView>> {
    let Json(request) = body?;
    let to = Phase::from_parts(&request.phase, request.percent).map_err(|reason| {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-phase", reason)
    })?;
    let change = PhaseChange {
        to,
        actor: operator.actor(request.actor)?,
        reason: request.reason,
        force: request.force,
    };
    let state = admin.control.transition(&name, change).await?;
    let mut shown = view(&admin.control, state);
    shown.epoch = admin.control.store().epoch().await.ok();
    Ok(Json(shown))
}

/// The body of `POST /carveouts/{name}/rollout`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutStart {
    /// The plan, as a carve-out's `rollout` section is written (default: the configuration's).
    pub plan: Option<crate::rollout::PlanSection>,
    /// Who asks (see `POST /carveouts/{name}/phase`).
    pub actor: Option<String>,
}

/// The body of `POST /carveouts/{name}/rollout/{pause,resume,abort,approve}`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutCommand {
    /// Why (recorded in the rollout's history, and in the audit log for an abort).
    #[serde(default)]
    pub reason: String,
    /// Who asks (see `POST /carveouts/{name}/phase`).
    pub actor: Option<String>,
}

/// A JSON body that may be left out (then the defaults); a malformed one is a problem, as
/// every refusal of the admin API is.
fn optional_json<T: Default + serde::de::DeserializeOwned>(body: &[u8]) -> Answer<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|err| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-body",
            format!("the body is not the expected JSON: {err}"),
        )
    })
}

async fn rollout_show(State(admin): State<Admin>, Path(name): Path<String>) -> Answer {
    known(&admin, &name)?;
    let view = admin.control.rollout_view(&name).await?.ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("{name} has no rollout; start one with `strangler rollout start {name}`"),
        )
    })?;
    Ok(Json(view).into_response())
}

async fn rollout_start(
    State(admin): State<Admin>,
    Extension(operator): Extension<Operator>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Answer {
    let request: RolloutStart = optional_json(&body)?;
    let actor = operator.actor(request.actor)?;
    let plan = request
        .plan
        .as_ref()
        .map(crate::rollout::Plan::from_section)
        .transpose()
        .map_err(|reason| Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-plan", reason))?;
    let view = admin.control.start_rollout(&name, plan, &actor).await?;
    Ok(Json(view).into_response())
}

async fn rollout_act(
    State(admin): State<Admin>,
    Extension(operator): Extension<Operator>,
    Path((name, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Answer {
    use super::rollout::Action;
    let action = match action.as_str() {
        "pause" => Action::Pause,
        "resume" => Action::Resume,
        "abort" => Action::Abort,
        "approve" => Action::Approve,
        other => {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("no rollout action {other:?} (pause, resume, abort, approve)"),
            ))
        }
    };
    let request: RolloutCommand = optional_json(&body)?;
    if request.reason.chars().count() > super::MAX_REASON {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
            format!("a reason is at most {} characters", super::MAX_REASON),
        ));
    }
    let actor = operator.actor(request.actor)?;
    let view = admin
        .control
        .rollout_action(&name, action, &actor, &request.reason)
        .await?;
    Ok(Json(view).into_response())
}

/// The body of `POST /carveouts/{name}/cutover` and `/rollback`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveBody {
    /// Why (required; recorded in the audit log).
    pub reason: String,
    /// Cut-over only: proceed without a green contract verification (audited).
    #[serde(default)]
    pub force: bool,
    /// Roll-back only: the canary share the carve-out returns to (default 0).
    pub percent: Option<f64>,
    /// Who asks (see `POST /carveouts/{name}/phase`).
    pub actor: Option<String>,
}

/// What a move did.
#[derive(Debug, Serialize, Deserialize)]
pub struct MoveReport {
    /// The carve-out.
    pub carveout: String,
    /// Each step, in order.
    pub steps: Vec<String>,
}

async fn cut_over(
    State(admin): State<Admin>,
    Extension(operator): Extension<Operator>,
    Path(name): Path<String>,
    body: Result<Json<MoveBody>, JsonRejection>,
) -> Answer<Json<MoveReport>> {
    run_procedure(admin, operator, name, body, Asked::CutOver).await
}

async fn roll_back(
    State(admin): State<Admin>,
    Extension(operator): Extension<Operator>,
    Path(name): Path<String>,
    body: Result<Json<MoveBody>, JsonRejection>,
) -> Answer<Json<MoveReport>> {
    run_procedure(admin, operator, name, body, Asked::RollBack).await
}

async fn retire(
    State(admin): State<Admin>,
    Extension(operator): Extension<Operator>,
    Path(name): Path<String>,
    body: Result<Json<MoveBody>, JsonRejection>,
) -> Answer<Json<MoveReport>> {
    run_procedure(admin, operator, name, body, Asked::Retire).await
}

/// Which guarded procedure a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    CutOver,
    RollBack,
    Retire,
}

/// A guarded procedure, ready to run.
enum Procedure {
    Move(super::ownership::Move),
    Retire,
}

async fn run_procedure(
    admin: Admin,
    operator: Operator,
    name: String,
    body: Result<Json<MoveBody>, JsonRejection>,
    asked: Asked,
) -> Answer<Json<MoveReport>> {
    known(&admin, &name)?;
    let Json(body) = body?;
    let invalid =
        |slug, detail: String| Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY, slug, detail));
    if body.reason.trim().is_empty() || body.reason.chars().count() > super::MAX_REASON {
        return invalid(
            "invalid-request",
            format!(
                "a reason of 1 to {} characters is required",
                super::MAX_REASON
            ),
        );
    }
    let actor = operator.actor(body.actor)?;
    if body.percent.is_some() && asked != Asked::RollBack {
        return invalid("invalid-body", "percent belongs to a roll-back".to_owned());
    }
    if body.force && asked != Asked::CutOver {
        return invalid(
            "invalid-body",
            "force belongs to a cut-over (it passes the contract guard only)".to_owned(),
        );
    }
    let procedure = match asked {
        Asked::CutOver => Procedure::Move(super::ownership::Move::CutOver),
        Asked::Retire => Procedure::Retire,
        Asked::RollBack => {
            let phase = Phase::from_parts("canary", Some(body.percent.unwrap_or(0.0))).map_err(
                |reason| Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-phase", reason),
            )?;
            Procedure::Move(super::ownership::Move::RollBack(phase))
        }
    };
    let request = super::ownership::MoveRequest {
        actor,
        reason: body.reason,
        force: body.force,
    };
    let moved = match procedure {
        Procedure::Retire => admin.control.run_retire(&name, request).await,
        Procedure::Move(movement) => admin.control.run_move(&name, movement, request).await,
    };
    let steps = moved.map_err(|err| {
        let slug = if err.refused {
            "move-refused"
        } else {
            "move-aborted"
        };
        Problem::new(StatusCode::CONFLICT, slug, err.message)
            .with_members(serde_json::json!({ "steps": err.steps }))
    })?;
    Ok(Json(MoveReport {
        carveout: name,
        steps,
    }))
}

/// Query of `GET /audit`.
#[derive(Debug, Deserialize)]
struct AuditQuery {
    carveout: Option<String>,
    limit: Option<i64>,
}

async fn audit(
    State(admin): State<Admin>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Answer<Json<Vec<AuditEntry>>> {
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-query",
            "limit must be between 1 and 1000",
        ));
    }
    if let Some(name) = &query.carveout {
        known(&admin, name)?;
    }
    let entries = admin
        .control
        .store()
        .audit(query.carveout.as_deref(), limit)
        .await?;
    Ok(Json(entries))
}

/// Refuses (404) a name that is not a carve-out of this replica.
fn known(admin: &Admin, name: &str) -> Answer<()> {
    let known = admin
        .control
        .proxy()
        .routing()
        .carveouts()
        .iter()
        .any(|c| c.spec.name == name);
    if known {
        Ok(())
    } else {
        Err(no_carveout(name))
    }
}

async fn status(
    State(admin): State<Admin>,
    Path(name): Path<String>,
) -> Answer<Json<super::status::Status>> {
    let status = admin
        .control
        .status(&name)
        .await?
        .ok_or_else(|| no_carveout(&name))?;
    Ok(Json(status))
}

/// The query of `GET /carveouts/{name}/mismatches`.
#[derive(Debug, Deserialize)]
struct MismatchQuery {
    /// Samples to return (default 20, at most 500).
    limit: Option<i64>,
}

async fn mismatches(
    State(admin): State<Admin>,
    Path(name): Path<String>,
    query: Result<Query<MismatchQuery>, QueryRejection>,
) -> Answer {
    known(&admin, &name)?;
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(20).clamp(0, super::mismatches::KEPT);
    let report = admin.control.mismatch_report(&name, limit).await?;
    Ok(Json(report).into_response())
}

/// The body of `POST /carveouts/{name}/fence`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FenceRequest {
    /// How long to hold writes at most (ms, 1 to 30,000); lifted earlier with `DELETE`.
    pub hold_ms: u64,
}

async fn fence(
    State(admin): State<Admin>,
    Path(name): Path<String>,
    body: Result<Json<FenceRequest>, JsonRejection>,
) -> Answer<Json<serde_json::Value>> {
    let Json(request) = body?;
    if !(1..=30_000).contains(&request.hold_ms) {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
            "hold_ms must be between 1 and 30000",
        ));
    }
    let until = admin
        .control
        .fence(&name, std::time::Duration::from_millis(request.hold_ms))
        .await?
        .ok_or_else(|| no_carveout(&name))?;
    Ok(Json(serde_json::json!({
        "carveout": name,
        "fenced_until_ms": until,
        "applies_within_ms": u64::try_from(admin.control.applies_within().as_millis()).unwrap_or(u64::MAX),
        "epoch": admin.control.store().epoch().await.ok(),
    })))
}

async fn unfence(State(admin): State<Admin>, Path(name): Path<String>) -> Answer<StatusCode> {
    if admin.control.unfence(&name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_carveout(&name))
    }
}

async fn captures(State(admin): State<Admin>, Path(name): Path<String>) -> Answer {
    known(&admin, &name)?;
    Ok(Json(admin.control.proxy().captures().list(&name)).into_response())
}

/// The body of `POST /carveouts/{name}/verifications`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerificationReport {
    /// The provider that was verified.
    pub provider: String,
    /// How many interactions were verified.
    pub interactions: i64,
    /// How many failed (pending ones not counted).
    pub failures: i64,
    /// Who reports it: with a token, its operator's name (or left out).
    pub actor: Option<String>,
}

async fn report_verification(
    State(admin): State<Admin>,
    Extension(operator): Extension<Operator>,
    Path(name): Path<String>,
    body: Result<Json<VerificationReport>, JsonRejection>,
) -> Answer<(StatusCode, Json<Verification>)> {
    known(&admin, &name)?;
    let Json(report) = body?;
    let invalid = |detail: &'static str| {
        Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
            detail,
        ))
    };
    if report.interactions < 0 || report.failures < 0 || report.failures > report.interactions {
        return invalid("interactions and failures must be counts, with failures <= interactions");
    }
    if report.provider.is_empty() || report.provider.len() > 500 {
        return invalid("provider must be 1 to 500 characters");
    }
    let actor = operator.actor(report.actor)?;
    let recorded = admin
        .control
        .store()
        .record_verification(
            &name,
            &report.provider,
            &actor,
            report.interactions,
            report.failures,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(recorded)))
}

async fn verifications(
    State(admin): State<Admin>,
    Path(name): Path<String>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Answer<Json<Vec<Verification>>> {
    known(&admin, &name)?;
    let limit = query.ok().and_then(|Query(q)| q.limit).unwrap_or(20);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-query",
            "limit must be between 1 and 1000",
        ));
    }
    Ok(Json(
        admin.control.store().verifications(&name, limit).await?,
    ))
}

/// A replica as the admin API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReplicaView {
    /// The registered replica.
    #[serde(flatten)]
    pub replica: super::store::Replica,
    /// Whether its heartbeat is within its lease.
    pub live: bool,
}

async fn replicas(State(admin): State<Admin>) -> Answer<Json<Vec<ReplicaView>>> {
    let replicas = admin.control.store().replicas().await?;
    let now = sqlkit::now_ms();
    Ok(Json(
        replicas
            .into_iter()
            .map(|replica| ReplicaView {
                live: replica.live(now),
                replica,
            })
            .collect(),
    ))
}

async fn epoch(State(admin): State<Admin>) -> Answer<Json<serde_json::Value>> {
    let epoch = admin.control.epoch().await?;
    Ok(Json(serde_json::json!({ "epoch": epoch })))
}

/// The body of `POST /control/await`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwaitRequest {
    /// The epoch every live replica must have applied.
    pub epoch: i64,
    /// How long to wait at most (ms, 1 to 60,000).
    pub timeout_ms: u64,
}

async fn await_applied(
    State(admin): State<Admin>,
    body: Result<Json<AwaitRequest>, JsonRejection>,
) -> Answer<Json<serde_json::Value>> {
    let Json(request) = body?;
    if !(1..=60_000).contains(&request.timeout_ms) {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
            "timeout_ms must be between 1 and 60000",
        ));
    }
    let within = std::time::Duration::from_millis(request.timeout_ms);
    match admin.control.await_applied(request.epoch, within).await {
        Ok(live) => Ok(Json(serde_json::json!({
            "epoch": request.epoch,
            "replicas": live.len(),
        }))),
        Err(super::AwaitError::NotApplied(not)) => {
            Err(
                Problem::new(StatusCode::CONFLICT, "not-applied", not.to_string())
                    .with_members(serde_json::json!({ "laggards": not.laggards })),
            )
        }
        Err(super::AwaitError::Store(err)) => Err(err.into()),
    }
}

async fn metrics(State(admin): State<Admin>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        admin.control.proxy().metrics().render(),
    )
        .into_response()
}

async fn dashboard_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        super::dashboard::PAGE,
    )
        .into_response()
}

async fn dashboard_script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        super::dashboard::SCRIPT,
    )
        .into_response()
}

async fn dashboard_data(State(admin): State<Admin>) -> Answer<Json<super::dashboard::Overview>> {
    Ok(Json(admin.control.overview().await?))
}

/// The body of `POST /dashboard/session`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    token: String,
}

/// Signs the dashboard in: a valid token becomes an HttpOnly, SameSite=Strict cookie (the page's
/// script never holds it after this request).
async fn sign_in(State(admin): State<Admin>, body: Result<Json<SignIn>, JsonRejection>) -> Answer {
    use base64::Engine as _;
    let Json(body) = body?;
    if admin.tokens.is_empty() {
        // An open admin API needs no sign-in.
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let name = operator_of(&admin, &body.token).ok_or_else(|| {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this is not a valid admin token",
        )
    })?;
    let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(body.token.as_bytes());
    let cookie = format!("{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/");
    let mut response = Json(serde_json::json!({ "operator": &*name })).into_response();
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

async fn sign_out() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("strangler_admin=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    response
}
