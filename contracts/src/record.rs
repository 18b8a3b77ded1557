//! Recording contracts from a provider (the monolith) and learning their noise.
//!
//! A script lists the requests. Each is sent to the provider, then the whole script is replayed
//! (on the same instance, and on a second instance when one is given, or after a time step).
//! Fields that differ between identical requests (ids, timestamps, generated values) become
//! matching rules (integer, timestamp, regex, type); everything else stays an exact value. So a
//! contract is strict where behaviour is fixed and lenient only where it is provably noisy.
//! Where each rule came from is written in the interaction's V4 `comments`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::compare::Observed;
use crate::pact::{Body, Headers, HttpRequest, HttpResponse, Interaction, Pact, ProviderState};
use crate::rules::{Combine, Location, Matcher, MatchingRules, Pattern, RuleList, Step};
use crate::verify::{client, send, set_states, VerifyOptions};

/// A scripted recording session (TOML).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    /// The consumer's name.
    pub consumer: String,
    /// The provider's name.
    pub provider: String,
    /// Response headers to put in the contracts besides `Content-Type`.
    #[serde(default)]
    pub record_headers: Vec<String>,
    /// The requests, in order.
    pub interactions: Vec<ScriptedRequest>,
}

/// One scripted request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedRequest {
    /// What it shows; unique in the script.
    pub description: String,
    /// The method.
    #[serde(default = "get")]
    pub method: String,
    /// The path.
    pub path: String,
    /// Query parameters.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A JSON body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// A JSON body as JSON text (for bodies TOML cannot hold, such as ones with nulls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_json: Option<String>,
    /// Provider states to set up first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub states: Vec<ScriptedState>,
}

/// A provider state in a script.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedState {
    /// Its name.
    pub name: String,
    /// Its parameters.
    #[serde(default)]
    pub params: Map<String, Value>,
}

fn get() -> String {
    "GET".to_owned()
}

impl Script {
    /// Reads and checks a script file.
    pub fn load(path: &Path) -> anyhow::Result<Script> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let script: Script = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid script", path.display()))?;
        script.check()?;
        Ok(script)
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.interactions.is_empty() {
            bail!("the script has no interactions");
        }
        let mut seen = std::collections::BTreeSet::new();
        for r in &self.interactions {
            if !seen.insert(&r.description) {
                bail!("two interactions are described as {:?}", r.description);
            }
            if !r.path.starts_with('/') {
                bail!(
                    "{:?}: the path {:?} must start with /",
                    r.description,
                    r.path
                );
            }
            reqwest::Method::from_bytes(r.method.to_ascii_uppercase().as_bytes()).map_err(
                |_| anyhow::anyhow!("{:?}: {:?} is not a method", r.description, r.method),
            )?;
            if r.body.is_some() && r.body_json.is_some() {
                bail!("{:?}: give body or body_json, not both", r.description);
            }
            if let Some(text) = &r.body_json {
                serde_json::from_str::<Value>(text)
                    .with_context(|| format!("{:?}: body_json is not JSON", r.description))?;
            }
        }
        Ok(())
    }

    fn requests(&self) -> Vec<(ScriptedRequest, HttpRequest)> {
        self.interactions
            .iter()
            .map(|r| {
                let mut headers: Headers = r
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), vec![v.clone()]))
                    .collect();
                let body = r.body.clone().or_else(|| {
                    r.body_json
                        .as_deref()
                        .and_then(|t| serde_json::from_str(t).ok())
                });
                if body.is_some() && crate::pact::header(&headers, "content-type").is_none() {
                    headers.insert("Content-Type".into(), vec!["application/json".into()]);
                }
                let request = HttpRequest {
                    method: r.method.to_ascii_uppercase(),
                    path: r.path.clone(),
                    query: r
                        .query
                        .iter()
                        .map(|(k, v)| (k.clone(), vec![v.clone()]))
                        .collect(),
                    headers,
                    body: body.map(Body::Json),
                    ..HttpRequest::default()
                };
                (r.clone(), request)
            })
            .collect()
    }
}

/// Where to record from.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    /// The provider (the monolith).
    pub provider: String,
    /// A second, independent instance of the provider to replay against once.
    pub second: Option<String>,
    /// The provider-state hook.
    pub state_url: Option<String>,
    /// The state hook of the second instance (defaults to `state_url` with the second
    /// instance's origin).
    pub second_state_url: Option<String>,
    /// How long to wait before the replay (so second-resolution timestamps move).
    pub time_step: Option<Duration>,
    /// Request timeout.
    pub timeout: Duration,
}

/// A field the replays showed to be noise, and the rule it got.
#[derive(Debug, Clone, PartialEq)]
pub struct Noise {
    /// `body $.id`, `header Location`.
    pub location: String,
    /// The rule written for it.
    pub rule: String,
    /// The values seen.
    pub samples: Vec<Value>,
}

/// Records the script against the provider and returns the contract with learned noise.
pub async fn record(
    script: &Script,
    options: &RecordOptions,
) -> anyhow::Result<(Pact, Vec<Noise>)> {
    let requests = script.requests();
    let primary = VerifyOptions {
        provider: options.provider.clone(),
        state_url: options.state_url.clone(),
        teardown: false,
        timeout: options.timeout,
    };
    let mut passes = vec![run_pass(&requests, &primary).await?];
    if let Some(step) = options.time_step {
        tokio::time::sleep(step).await;
    }
    passes.push(run_pass(&requests, &primary).await?);
    if let Some(second) = &options.second {
        let state_url = options.second_state_url.clone().or_else(|| {
            options.state_url.as_ref().map(|u| {
                u.replacen(
                    options.provider.trim_end_matches('/'),
                    second.trim_end_matches('/'),
                    1,
                )
            })
        });
        let secondary = VerifyOptions {
            provider: second.clone(),
            state_url,
            teardown: false,
            timeout: options.timeout,
        };
        passes.push(run_pass(&requests, &secondary).await?);
    }

    let mut record_headers = vec!["content-type".to_owned()];
    record_headers.extend(script.record_headers.iter().map(|h| h.to_ascii_lowercase()));
    let mut interactions = Vec::new();
    let mut all_noise = Vec::new();
    for (i, (scripted, request)) in requests.into_iter().enumerate() {
        let samples: Vec<&Observed> = passes.iter().map(|p| &p[i]).collect();
        let (response, noise) = learn(&samples, &record_headers).with_context(|| {
            format!(
                "{:?} ({} {})",
                scripted.description,
                request.method,
                request.path_and_query()
            )
        })?;
        let mut comments = Map::new();
        if !noise.is_empty() {
            comments.insert(
                "text".into(),
                json!([format!(
                    "recorded by strangler contract record; {} noisy field(s) learned from {} replays",
                    noise.len(),
                    samples.len()
                )]),
            );
            comments.insert(
                "strangler.noise".into(),
                Value::Array(
                    noise
                        .iter()
                        .map(|n| json!({"location": n.location, "rule": n.rule, "samples": n.samples}))
                        .collect(),
                ),
            );
        }
        interactions.push(Interaction {
            description: scripted.description.clone(),
            provider_states: scripted
                .states
                .iter()
                .map(|s| ProviderState {
                    name: s.name.clone(),
                    params: s.params.clone(),
                })
                .collect(),
            request,
            response,
            pending: false,
            comments,
        });
        all_noise.extend(noise.into_iter().map(|mut n| {
            n.location = format!("{}: {}", scripted.description, n.location);
            n
        }));
    }
    let mut metadata = Map::new();
    metadata.insert(
        "strangler".into(),
        json!({"recordedFrom": options.provider, "replays": passes.len()}),
    );
    Ok((
        Pact {
            consumer: script.consumer.clone(),
            provider: script.provider.clone(),
            interactions,
            specification: "4.0".into(),
            metadata,
        },
        all_noise,
    ))
}

async fn run_pass(
    requests: &[(ScriptedRequest, HttpRequest)],
    options: &VerifyOptions,
) -> anyhow::Result<Vec<Observed>> {
    let client = client(options.timeout);
    let mut out = Vec::with_capacity(requests.len());
    for (scripted, request) in requests {
        let states: Vec<ProviderState> = scripted
            .states
            .iter()
            .map(|s| ProviderState {
                name: s.name.clone(),
                params: s.params.clone(),
            })
            .collect();
        set_states(&client, options, &states, "setup")
            .await
            .map_err(|e| anyhow::anyhow!("{:?}: {e}", scripted.description))?;
        let observed = send(&client, &options.provider, request)
            .await
            .map_err(|e| anyhow::anyhow!("{:?}: {e}", scripted.description))?;
        out.push(observed);
    }
    Ok(out)
}

/// The expected response learned from replays of one request: the first sample, with a
/// matching rule on every field the samples disagree on.
pub fn learn(
    samples: &[&Observed],
    record_headers: &[String],
) -> anyhow::Result<(HttpResponse, Vec<Noise>)> {
    let Some(first) = samples.first() else {
        bail!("nothing was recorded");
    };
    if let Some(other) = samples.iter().find(|s| s.status != first.status) {
        bail!(
            "not repeatable: the same request answered {} and then {}; give it a provider state \
             that makes it repeatable",
            first.status,
            other.status
        );
    }
    let mut rules = MatchingRules::default();
    let mut noise = Vec::new();
    let mut headers = Headers::new();
    for name in record_headers {
        let Some(value) = first.header(name) else {
            continue;
        };
        let values: Vec<Value> = samples
            .iter()
            .map(|s| s.header(name).map_or(Value::Null, Value::from))
            .collect();
        if values.iter().any(Value::is_null) {
            // Present only sometimes: not part of the contract.
            continue;
        }
        if values.iter().any(|v| v != &values[0]) {
            let rule = infer(&values);
            noise.push(Noise {
                location: format!("header {name}"),
                rule: rule.describe(),
                samples: values.clone(),
            });
            rules
                .insert("header", &canonical_header(name), rule)
                .map_err(|e| anyhow::anyhow!(e.0))?;
        }
        headers.insert(canonical_header(name), vec![value]);
    }
    let content_type = first.header("content-type");
    let body = match &first.body {
        None => None,
        Some(bytes) => Body::from_bytes(bytes, content_type.as_deref()),
    };
    let body = match body {
        Some(Body::Json(mut base)) => {
            let others: Vec<Value> = samples[1..]
                .iter()
                .map(|s| {
                    s.body
                        .as_deref()
                        .and_then(|b| serde_json::from_slice(b).ok())
                        .unwrap_or(Value::Null)
                })
                .collect();
            let mut noisy: BTreeMap<String, (Location, Vec<Value>)> = BTreeMap::new();
            let mut lists = BTreeMap::new();
            let mut dropped = Vec::new();
            for other in &others {
                diff(
                    &mut Location::default(),
                    &base,
                    other,
                    &mut noisy,
                    &mut lists,
                    &mut dropped,
                );
            }
            for location in &dropped {
                remove(&mut base, location);
                noise.push(Noise {
                    location: format!("body {}", location.expression()),
                    rule: "left out: present in only some replays".into(),
                    samples: Vec::new(),
                });
            }
            for (expression, lengths) in lists {
                let rule = RuleList::single(Matcher::Type {
                    min: None,
                    max: None,
                });
                noise.push(Noise {
                    location: format!("body {expression}"),
                    rule: format!("{} (lengths differ)", rule.describe()),
                    samples: lengths,
                });
                rules
                    .insert("body", &expression, rule)
                    .map_err(|e| anyhow::anyhow!(e.0))?;
            }
            for (expression, (location, mut values)) in noisy {
                if dropped.iter().any(|d| location.0.starts_with(&d.0)) {
                    continue;
                }
                values.insert(0, get_at(&base, &location).cloned().unwrap_or(Value::Null));
                let rule = infer(&values);
                noise.push(Noise {
                    location: format!("body {expression}"),
                    rule: rule.describe(),
                    samples: values,
                });
                rules
                    .insert("body", &expression, rule)
                    .map_err(|e| anyhow::anyhow!(e.0))?;
            }
            Some(Body::Json(base))
        }
        Some(other) => {
            let same = samples.iter().all(|s| s.body == first.body);
            if !same {
                let rule = RuleList::single(Matcher::Regex(
                    Pattern::new("(?s).*").map_err(|e| anyhow::anyhow!(e.0))?,
                ));
                noise.push(Noise {
                    location: "body".into(),
                    rule: rule.describe(),
                    samples: Vec::new(),
                });
                rules
                    .insert("body", "$", rule)
                    .map_err(|e| anyhow::anyhow!(e.0))?;
            }
            Some(other)
        }
        None => None,
    };
    Ok((
        HttpResponse {
            status: first.status,
            headers,
            body,
            matching_rules: rules,
            generators: crate::generators::Generators::default(),
        },
        noise,
    ))
}

fn canonical_header(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(c) => c.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

fn diff(
    at: &mut Location,
    base: &Value,
    other: &Value,
    noisy: &mut BTreeMap<String, (Location, Vec<Value>)>,
    lists: &mut BTreeMap<String, Vec<Value>>,
    dropped: &mut Vec<Location>,
) {
    match (base, other) {
        (Value::Object(b), Value::Object(o)) => {
            for (key, bv) in b {
                at.0.push(Step::Key(key.clone()));
                match o.get(key) {
                    Some(ov) => diff(at, bv, ov, noisy, lists, dropped),
                    None => {
                        if !dropped.contains(at) {
                            dropped.push(at.clone());
                        }
                    }
                }
                at.0.pop();
            }
        }
        (Value::Array(b), Value::Array(o)) if b.len() != o.len() => {
            let entry = lists
                .entry(at.expression())
                .or_insert_with(|| vec![Value::from(b.len())]);
            entry.push(Value::from(o.len()));
        }
        (Value::Array(b), Value::Array(o)) => {
            for (i, (bv, ov)) in b.iter().zip(o).enumerate() {
                at.0.push(Step::Index(i));
                diff(at, bv, ov, noisy, lists, dropped);
                at.0.pop();
            }
        }
        _ if base == other => {}
        _ => {
            noisy
                .entry(at.expression())
                .or_insert_with(|| (at.clone(), Vec::new()))
                .1
                .push(other.clone());
        }
    }
}

fn get_at<'a>(value: &'a Value, at: &Location) -> Option<&'a Value> {
    at.0.iter().try_fold(value, |v, step| match step {
        Step::Key(k) => v.get(k),
        Step::Index(i) => v.get(i),
    })
}

fn remove(value: &mut Value, at: &Location) {
    let Some((last, parent)) = at.0.split_last() else {
        return;
    };
    let mut v = value;
    for step in parent {
        let next = match step {
            Step::Key(k) => v.get_mut(k),
            Step::Index(i) => v.get_mut(*i),
        };
        match next {
            Some(n) => v = n,
            None => return,
        }
    }
    if let (Step::Key(k), Value::Object(o)) = (last, v) {
        o.remove(k);
    }
}

/// Java patterns tried, in order, for values that look like dates and times.
/// A date/time matcher for a Java pattern.
type TimeMatcher = fn(String) -> Matcher;

const TIME_PATTERNS: &[(&str, TimeMatcher)] = &[
    ("yyyy-MM-dd'T'HH:mm:ss.SSSXXX", Matcher::Timestamp),
    ("yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX", Matcher::Timestamp),
    ("yyyy-MM-dd'T'HH:mm:ssXXX", Matcher::Timestamp),
    ("yyyy-MM-dd'T'HH:mm:ss.SSS", Matcher::Timestamp),
    ("yyyy-MM-dd'T'HH:mm:ss", Matcher::Timestamp),
    ("yyyy-MM-dd HH:mm:ss", Matcher::Timestamp),
    ("EEE, dd MMM yyyy HH:mm:ss 'GMT'", Matcher::Timestamp),
    ("yyyy-MM-dd", Matcher::Date),
    ("HH:mm:ss", Matcher::Time),
];

const UUID: &str = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}";

/// The narrowest rule every sample satisfies.
pub fn infer(values: &[Value]) -> RuleList {
    let all = |f: fn(&Value) -> bool| values.iter().all(f);
    if all(|v| v.is_i64() || v.is_u64()) {
        return RuleList::single(Matcher::Integer);
    }
    if all(Value::is_number) {
        return RuleList::single(Matcher::Number);
    }
    if all(Value::is_boolean) {
        return RuleList::single(Matcher::Boolean);
    }
    if all(Value::is_string) {
        let texts: Vec<&str> = values.iter().filter_map(Value::as_str).collect();
        for (pattern, make) in TIME_PATTERNS {
            if texts.iter().all(|t| crate::time::matches(pattern, t)) {
                return RuleList::single(make((*pattern).to_owned()));
            }
        }
        if let Ok(uuid) = Pattern::new(UUID) {
            if texts.iter().all(|t| uuid.matches(t)) {
                return RuleList::single(Matcher::Regex(uuid));
            }
        }
        let shapes: Vec<String> = texts.iter().map(|t| shape(t)).collect();
        if shapes.iter().all(|s| s == &shapes[0]) && shapes[0] != regex::escape(texts[0]) {
            if let Ok(pattern) = Pattern::new(&shapes[0]) {
                return RuleList::single(Matcher::Regex(pattern));
            }
        }
        return RuleList::single(Matcher::Type {
            min: None,
            max: None,
        });
    }
    // Mixed kinds: one matcher per kind seen, any of them.
    let mut matchers = Vec::new();
    let mut push = |m: Matcher| {
        if !matchers
            .iter()
            .any(|x: &Matcher| x.to_string() == m.to_string())
        {
            matchers.push(m);
        }
    };
    for v in values {
        push(match v {
            Value::Null => Matcher::Null,
            Value::Bool(_) => Matcher::Boolean,
            Value::Number(_) => Matcher::Number,
            _ => Matcher::Type {
                min: None,
                max: None,
            },
        });
    }
    RuleList {
        matchers,
        combine: Combine::Or,
    }
}

/// A regex of a value's shape: the text escaped, each run of digits generalised.
fn shape(text: &str) -> String {
    let mut out = String::new();
    let mut digits = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !digits {
                out.push_str("\\d+");
            }
            digits = true;
        } else {
            digits = false;
            out.push_str(&regex::escape(&c.to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(status: u16, body: &Value, location: &str) -> Observed {
        Observed {
            status,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("location".into(), location.into()),
                ("date".into(), "Thu, 26 Nov 2026 08:00:00 GMT".into()),
            ],
            body: Some(body.to_string().into_bytes()),
        }
    }

    #[test]
    fn noise_becomes_rules_and_the_rest_stays_exact() {
        let a = observed(
            201,
            &json!({"id": 1, "sku": "A-1", "created_at": "2026-11-26T07:46:58.123Z",
                   "token": "3f2b8c1e-4d5a-4b6c-8d7e-9f0a1b2c3d4e", "price": 100, "tags": ["x"], "gone": 1}),
            "/catalog/products/1",
        );
        let b = observed(
            201,
            &json!({"id": 2, "sku": "A-1", "created_at": "2026-11-26T07:46:59.001Z",
                   "token": "00000000-4d5a-4b6c-8d7e-9f0a1b2c3d4e", "price": 100, "tags": ["x", "y"]}),
            "/catalog/products/2",
        );
        let (response, noise) =
            learn(&[&a, &b], &["content-type".into(), "location".into()]).unwrap();
        let rules = response.matching_rules.to_json();
        assert_eq!(rules["body"]["$.id"]["matchers"][0]["match"], "integer");
        assert_eq!(
            rules["body"]["$.created_at"]["matchers"][0]["match"],
            "timestamp"
        );
        assert_eq!(rules["body"]["$.token"]["matchers"][0]["match"], "regex");
        assert_eq!(rules["body"]["$.tags"]["matchers"][0]["match"], "type");
        assert!(
            rules["body"].get("$.sku").is_none(),
            "a stable field stays exact"
        );
        assert!(rules["body"].get("$.price").is_none());
        assert_eq!(
            rules["header"]["Location"]["matchers"][0]["regex"],
            "/catalog/products/\\d+"
        );
        let Some(Body::Json(body)) = &response.body else {
            panic!("a JSON body")
        };
        assert!(
            body.get("gone").is_none(),
            "a key only some replays have is left out"
        );
        assert!(
            !response.headers.contains_key("Date"),
            "only chosen headers are recorded"
        );
        assert_eq!(noise.len(), 6, "{noise:#?}");
        // The learned contract accepts both samples and a third noisy one, and nothing else.
        for sample in [&a, &b] {
            assert_eq!(crate::compare::match_response(&response, sample), vec![]);
        }
        let c = observed(
            201,
            &json!({"id": 3, "sku": "A-2", "created_at": "2026-11-26T07:47:00.000Z",
                   "token": "10000000-4d5a-4b6c-8d7e-9f0a1b2c3d4e", "price": 100, "tags": []}),
            "/catalog/products/3",
        );
        let diffs = crate::compare::match_response(&response, &c);
        assert_eq!(diffs.len(), 1, "{diffs:#?}");
        assert_eq!(diffs[0].path, "/sku");
    }

    #[test]
    fn a_request_that_is_not_repeatable_is_refused() {
        let a = observed(201, &json!({}), "/x");
        let b = observed(409, &json!({}), "/x");
        let err = learn(&[&a, &b], &[]).unwrap_err().to_string();
        assert!(err.contains("not repeatable"), "{err}");
    }

    #[test]
    fn mixed_kinds_combine_with_or() {
        let rule = infer(&[Value::Null, json!("a")]);
        assert_eq!(rule.combine, Combine::Or);
        assert_eq!(rule.describe(), "null OR type");
        assert_eq!(infer(&[json!(1.5), json!(2)]).describe(), "number");
        assert_eq!(
            infer(&[json!("SKU-001"), json!("SKU-002")]).describe(),
            "regex SKU\\-\\d+"
        );
        assert_eq!(infer(&[json!("red"), json!("blue")]).describe(), "type");
    }
}

/// A request captured from real traffic (already redacted).
#[derive(Debug, Clone)]
pub struct CapturedRequest {
    /// The method.
    pub method: String,
    /// The path.
    pub path: String,
    /// The raw query string.
    pub query: Option<String>,
    /// The request headers.
    pub headers: Vec<(String, String)>,
    /// The JSON (or text) body.
    pub body: Option<Value>,
}

/// A recording script from captured requests: one interaction per distinct request (method,
/// path, query, body), in the order first seen, with the request headers worth replaying.
/// Recording it (`record`) learns the noise as for a hand-written script.
pub fn script_from_captures(
    consumer: &str,
    provider: &str,
    captures: &[CapturedRequest],
) -> Script {
    let mut interactions: Vec<ScriptedRequest> = Vec::new();
    for CapturedRequest {
        method,
        path,
        query,
        headers,
        body,
    } in captures
    {
        let query: BTreeMap<String, String> = query
            .as_deref()
            .map(crate::pact::parse_query)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(k, v)| v.into_iter().next().map(|v| (k, v)))
            .collect();
        let body_json = body.as_ref().map(Value::to_string);
        let duplicate = interactions.iter().any(|r| {
            r.method == *method && r.path == *path && r.query == query && r.body_json == body_json
        });
        if duplicate {
            continue;
        }
        let headers = headers
            .iter()
            .filter(|(n, _)| {
                matches!(n.to_ascii_lowercase().as_str(), "accept" | "content-type")
                    || n.to_ascii_lowercase().starts_with("x-")
            })
            .filter(|(_, v)| v != crate::redact::REDACTED)
            .cloned()
            .collect();
        let mut description = format!("{method} {path}");
        if !query.is_empty() {
            let q: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            description.push('?');
            description.push_str(&q.join("&"));
        }
        let n = interactions
            .iter()
            .filter(|r| {
                r.description == description
                    || r.description.starts_with(&format!("{description} #"))
            })
            .count();
        if n > 0 {
            description = format!("{description} #{}", n + 1);
        }
        interactions.push(ScriptedRequest {
            description,
            method: method.clone(),
            path: path.clone(),
            query,
            headers,
            body: None,
            body_json,
            states: Vec::new(),
        });
    }
    Script {
        consumer: consumer.to_owned(),
        provider: provider.to_owned(),
        record_headers: Vec::new(),
        interactions,
    }
}

#[cfg(test)]
mod capture_tests {
    use super::*;

    #[test]
    fn captures_become_a_script_of_distinct_requests() {
        let get = |q: &str| CapturedRequest {
            method: "GET".into(),
            path: "/catalog/products".into(),
            query: Some(q.to_owned()),
            headers: vec![
                ("accept".into(), "application/json".into()),
                ("authorization".into(), crate::redact::REDACTED.into()),
                ("user-agent".into(), "curl".into()),
            ],
            body: None,
        };
        let post = CapturedRequest {
            method: "POST".into(),
            path: "/catalog/products".into(),
            query: None,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Some(json!({"sku": "A", "note": null})),
        };
        let script = script_from_captures(
            "web",
            "catalog",
            &[get("limit=2"), get("limit=2"), get("limit=3&q=a%20b"), post],
        );
        let descriptions: Vec<&str> = script
            .interactions
            .iter()
            .map(|r| r.description.as_str())
            .collect();
        assert_eq!(
            descriptions,
            vec![
                "GET /catalog/products?limit=2",
                "GET /catalog/products?limit=3&q=a b",
                "POST /catalog/products"
            ]
        );
        assert_eq!(
            script.interactions[0].headers.len(),
            1,
            "only replayable headers, never redacted ones"
        );
        // It survives TOML (a null in a body included) and loads as a script.
        let text = toml::to_string(&script).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, text).unwrap();
        let loaded = Script::load(&path).unwrap();
        let requests = loaded.requests();
        assert_eq!(
            requests[2].1.body,
            Some(Body::Json(json!({"sku": "A", "note": null})))
        );
        assert_eq!(requests[1].1.query["q"], vec!["a b".to_owned()]);
    }
}
