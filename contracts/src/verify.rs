//! Verifying a provider against contracts: each interaction's provider states are set up
//! through the provider's state hook, its request is replayed, and the response is matched with
//! Pact semantics. The report prints readable diffs and writes JUnit XML.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use quick_junit::{NonSuccessKind, Report as JunitReport, TestCase, TestCaseStatus, TestSuite};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::compare::{match_response, Difference, Observed};
use crate::pact::{Interaction, Pact, ProviderState};

/// How to reach the provider.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The provider's base URL (`http://127.0.0.1:8080`).
    pub provider: String,
    /// The provider-state hook: a URL the verifier POSTs `{state, params, action}` to before
    /// (and, with `teardown`, after) each interaction that names states.
    pub state_url: Option<String>,
    /// Whether to call the hook with `action: "teardown"` after each interaction.
    pub teardown: bool,
    /// Timeout of each request.
    pub timeout: Duration,
}

impl VerifyOptions {
    /// Options for `provider` with no state hook and a 10 s timeout.
    pub fn new(provider: impl Into<String>) -> Self {
        VerifyOptions {
            provider: provider.into(),
            state_url: None,
            teardown: false,
            timeout: Duration::from_secs(10),
        }
    }
}

/// The outcome of one interaction.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The pact file.
    pub file: PathBuf,
    /// The consumer.
    pub consumer: String,
    /// The interaction's description.
    pub description: String,
    /// `METHOD /path?query`.
    pub request: String,
    /// Whether a failure is only reported (pending interactions).
    pub pending: bool,
    /// The differences found.
    pub differences: Vec<Difference>,
    /// Why it could not be verified at all (provider down, state hook failed).
    pub error: Option<String>,
    /// How long it took.
    pub millis: u64,
}

impl Outcome {
    /// Whether it passed.
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.differences.is_empty()
    }
}

/// The outcome of a verification.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The provider's URL.
    pub provider: String,
    /// One outcome per interaction.
    pub outcomes: Vec<Outcome>,
}

impl Report {
    /// Whether it is green: at least one interaction was verified and every non-pending one
    /// passed. A verification of nothing is not a pass.
    pub fn passed(&self) -> bool {
        !self.outcomes.is_empty() && self.outcomes.iter().all(|o| o.passed() || o.pending)
    }

    /// How many interactions failed (pending ones not counted).
    pub fn failures(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| !o.passed() && !o.pending)
            .count()
    }

    /// A readable summary with every difference.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for o in &self.outcomes {
            let verdict = match (o.passed(), o.pending) {
                (true, _) => "ok",
                (false, true) => "FAILED (pending)",
                (false, false) => "FAILED",
            };
            let _ = writeln!(out, "{verdict:>6}  {} ({})", o.description, o.request);
            if let Some(error) = &o.error {
                let _ = writeln!(out, "        error: {error}");
            }
            for d in &o.differences {
                let _ = writeln!(out, "        {}", d.path);
                let _ = writeln!(out, "          expected: {}", d.expected);
                let _ = writeln!(out, "          actual:   {}", d.actual);
                if let Some(rule) = &d.rule {
                    let _ = writeln!(out, "          rule:     {rule}");
                }
                if !d.message.is_empty() {
                    let _ = writeln!(out, "          why:      {}", d.message);
                }
            }
        }
        let _ = writeln!(
            out,
            "{} interaction(s) verified against {}: {} passed, {} failed",
            self.outcomes.len(),
            self.provider,
            self.outcomes.iter().filter(|o| o.passed()).count(),
            self.failures()
        );
        if self.outcomes.is_empty() {
            let _ = writeln!(
                out,
                "no interactions were verified: that is a failure, not a pass"
            );
        }
        out
    }

    /// The JUnit XML of this report: one test suite per pact file, one test case per interaction.
    pub fn junit(&self) -> String {
        let mut report = JunitReport::new("contract verification");
        let mut files: Vec<&Path> = self.outcomes.iter().map(|o| o.file.as_path()).collect();
        files.dedup();
        for file in files {
            let mut suite = TestSuite::new(file.display().to_string());
            for o in self.outcomes.iter().filter(|o| o.file == file) {
                let status = if o.passed() {
                    TestCaseStatus::success()
                } else {
                    let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    let message = match &o.error {
                        Some(error) => error.clone(),
                        None => format!("{} difference(s)", o.differences.len()),
                    };
                    status.set_message(message);
                    status.set_description(
                        o.differences
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("\n"),
                    );
                    status
                };
                let mut case = TestCase::new(o.description.clone(), status);
                case.set_classname(format!("{}.{}", o.consumer, o.request));
                case.set_time(Duration::from_millis(o.millis));
                suite.add_test_case(case);
            }
            report.add_test_suite(suite);
        }
        report
            .to_string()
            .unwrap_or_else(|e| format!("<!-- the JUnit report could not be written: {e} -->"))
    }
}

/// Verifies `options.provider` against every pact in `pacts`, in order.
pub async fn verify(pacts: &[(PathBuf, Pact)], options: &VerifyOptions) -> Report {
    let client = client(options.timeout);
    let mut outcomes = Vec::new();
    for (file, pact) in pacts {
        for interaction in &pact.interactions {
            let start = Instant::now();
            let (differences, error) = match verify_one(&client, interaction, options).await {
                Ok(differences) => (differences, None),
                Err(error) => (Vec::new(), Some(error)),
            };
            outcomes.push(Outcome {
                file: file.clone(),
                consumer: pact.consumer.clone(),
                description: interaction.description.clone(),
                request: format!(
                    "{} {}",
                    interaction.request.method,
                    interaction.request.path_and_query()
                ),
                pending: interaction.pending,
                differences,
                error,
                millis: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
            });
        }
    }
    Report {
        provider: options.provider.clone(),
        outcomes,
    }
}

/// Verifies against every pact file in `dir` (or the one file `dir` names).
pub async fn verify_path(path: &Path, options: &VerifyOptions) -> anyhow::Result<Report> {
    let pacts = if path.is_dir() {
        Pact::load_dir(path)?
    } else {
        vec![(path.to_path_buf(), Pact::load(path)?)]
    };
    if pacts.is_empty() {
        anyhow::bail!("no pact files (*.json) in {}", path.display());
    }
    Ok(verify(&pacts, options).await)
}

pub(crate) fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

async fn verify_one(
    client: &reqwest::Client,
    interaction: &Interaction,
    options: &VerifyOptions,
) -> Result<Vec<Difference>, String> {
    let context = set_states(client, options, &interaction.provider_states, "setup").await?;
    let request = interaction
        .request
        .generators
        .apply(&interaction.request, &context)?;
    let result = send(client, &options.provider, &request).await;
    if options.teardown {
        set_states(client, options, &interaction.provider_states, "teardown").await?;
    }
    let actual = result?;
    Ok(match_response(&interaction.response, &actual))
}

/// Calls the provider-state hook for each state; returns the values the hook answered with
/// (a JSON object), which `ProviderState` generators use.
pub(crate) async fn set_states(
    client: &reqwest::Client,
    options: &VerifyOptions,
    states: &[ProviderState],
    action: &str,
) -> Result<Map<String, Value>, String> {
    let mut context = Map::new();
    if states.is_empty() {
        return Ok(context);
    }
    let Some(url) = &options.state_url else {
        return Err(format!(
            "the interaction needs provider state {:?} but no state hook was given (--state-url)",
            states[0].name
        ));
    };
    for state in states {
        let body = json!({"state": state.name, "params": state.params, "action": action});
        let response = client.post(url).json(&body).send().await.map_err(|e| {
            format!(
                "provider state {:?}: the hook {url} failed: {e}",
                state.name
            )
        })?;
        if !response.status().is_success() {
            return Err(format!(
                "provider state {:?}: the hook {url} answered {}",
                state.name,
                response.status()
            ));
        }
        if let Ok(Value::Object(values)) = response.json::<Value>().await {
            context.extend(values);
        }
    }
    Ok(context)
}

/// Sends a contract's request to `base` and captures the response.
pub(crate) async fn send(
    client: &reqwest::Client,
    base: &str,
    request: &crate::pact::HttpRequest,
) -> Result<Observed, String> {
    let method = reqwest::Method::from_bytes(request.method.as_bytes())
        .map_err(|_| format!("{:?} is not an HTTP method", request.method))?;
    let url = format!("{}{}", base.trim_end_matches('/'), request.path_and_query());
    let mut builder = client.request(method, &url);
    for (name, values) in &request.headers {
        builder = builder.header(name, values.join(", "));
    }
    if let Some(body) = &request.body {
        builder = builder.body(body.to_bytes());
    }
    let response = builder
        .send()
        .await
        .map_err(|e| format!("{} {url}: {e}", request.method))?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("{} {url}: reading the body: {e}", request.method))?;
    Ok(Observed {
        status,
        headers,
        body: (!body.is_empty()).then(|| body.to_vec()),
    })
}
