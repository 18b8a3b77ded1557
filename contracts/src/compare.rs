//! The comparison core shared by the proxy's shadow diffing and contract verification: one walk
//! over two JSON documents that reports every [`Difference`] with its location, the expected and
//! actual values, and the rule that judged it.
//!
//! Two policies drive the walk:
//! - [`Comparator`] (shadow traffic): everything must be equal except the ignored JSON pointers
//!   (`/updated_at`, `/items/*/updated_at`); unexpected keys are differences.
//! - [`match_response`] (contracts): Pact semantics. Matching rules judge the values they are
//!   placed on (and cascade to what lies under them), other values must be equal, and keys the
//!   contract does not mention are allowed.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::pact::{is_json_type, Body, HttpResponse};
use crate::rules::{Category, Combine, Location, Matcher, RuleList, Step};

/// The parts of a response that are compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Status code.
    pub status: u16,
    /// The headers as (lower-case name, value).
    pub headers: Vec<(String, String)>,
    /// The body, when it was captured.
    pub body: Option<Vec<u8>>,
}

impl Observed {
    /// The value of header `name` (case-insensitive), repeated headers joined with `, `.
    pub fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    }
}

/// One difference between the expected and the actual response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    /// Where: `status`, `header:<name>`, `body`, or a JSON pointer into the body (`/items/0/name`).
    pub path: String,
    /// The expected value (JSON), or null when absent.
    pub expected: Value,
    /// The actual value (JSON), or null when absent.
    pub actual: Value,
    /// The rule that judged it (`equality`, `integer`, `type`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// What is wrong, in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: expected {}, actual {}",
            self.path, self.expected, self.actual
        )?;
        if let Some(rule) = &self.rule {
            write!(f, " (rule: {rule})")?;
        }
        if !self.message.is_empty() {
            write!(f, " ({})", self.message)?;
        }
        Ok(())
    }
}

fn difference(
    path: String,
    expected: Value,
    actual: Value,
    rule: &str,
    message: String,
) -> Difference {
    Difference {
        path,
        expected,
        actual,
        rule: Some(rule.to_owned()),
        message,
    }
}

/// What decides each location of a walk.
trait Policy {
    /// The rule that applies at `at`, and whether it was placed exactly there.
    fn rule(&self, at: &Location) -> Option<(&RuleList, bool)>;
    /// Whether the children of the array at `at` have a rule of their own (`$.items[*]`).
    fn child_rule(&self, at: &Location) -> bool;
    /// Whether `at` and everything under it is left out.
    fn ignored(&self, at: &Location) -> bool;
    /// Whether keys the expected side lacks are allowed.
    fn extra_keys_allowed(&self) -> bool;
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn numbers_equal(e: &Value, a: &Value) -> bool {
    match (e, a) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || matches!((x.as_f64(), y.as_f64()), (Some(p), Some(q)) if p == q)
        }
        _ => e == a,
    }
}

fn leaf_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Judges `actual` (against `expected`) with one matcher; for containers only the container
/// itself (type, length), never its children.
fn check(matcher: &Matcher, expected: &Value, actual: &Value) -> Result<(), String> {
    let fail = |why: String| Err(why);
    match matcher {
        Matcher::Equality => {
            if numbers_equal(expected, actual) {
                Ok(())
            } else {
                fail("not equal".into())
            }
        }
        Matcher::Type { min, max } => {
            if kind(expected) != kind(actual) {
                return fail(format!(
                    "expected a {}, got a {}",
                    kind(expected),
                    kind(actual)
                ));
            }
            if let Value::Array(items) = actual {
                if min.is_some_and(|m| items.len() < m) {
                    return fail(format!(
                        "expected at least {} elements, got {}",
                        min.unwrap_or_default(),
                        items.len()
                    ));
                }
                if max.is_some_and(|m| items.len() > m) {
                    return fail(format!(
                        "expected at most {} elements, got {}",
                        max.unwrap_or_default(),
                        items.len()
                    ));
                }
            }
            Ok(())
        }
        Matcher::Regex(pattern) => match leaf_text(actual) {
            Some(text) if pattern.matches(&text) => Ok(()),
            Some(_) => fail(format!("does not match /{}/", pattern.source)),
            None => fail(format!("a {} cannot match a regex", kind(actual))),
        },
        Matcher::Integer => match actual {
            Value::Number(n) if n.is_i64() || n.is_u64() => Ok(()),
            _ => fail("expected an integer".into()),
        },
        Matcher::Decimal => match actual {
            Value::Number(n) if n.is_f64() => Ok(()),
            _ => fail("expected a decimal number".into()),
        },
        Matcher::Number => match actual {
            Value::Number(_) => Ok(()),
            _ => fail("expected a number".into()),
        },
        Matcher::Boolean => match actual {
            Value::Bool(_) => Ok(()),
            _ => fail("expected a boolean".into()),
        },
        Matcher::Null => match actual {
            Value::Null => Ok(()),
            _ => fail("expected null".into()),
        },
        Matcher::Include(part) => match leaf_text(actual) {
            Some(text) if text.contains(part.as_str()) => Ok(()),
            _ => fail(format!("does not include {part:?}")),
        },
        Matcher::Timestamp(format) | Matcher::Date(format) | Matcher::Time(format) => {
            match actual.as_str() {
                Some(text) if crate::time::matches(format, text) => Ok(()),
                Some(_) => fail(format!("not a date/time in the format {format}")),
                None => fail(format!("expected a string, got a {}", kind(actual))),
            }
        }
        Matcher::Values => match (expected, actual) {
            (Value::Object(_), Value::Object(_)) => Ok(()),
            _ => fail(format!("expected an object, got a {}", kind(actual))),
        },
        Matcher::NotEmpty => {
            let empty = match actual {
                Value::Null => true,
                Value::String(s) => s.is_empty(),
                Value::Array(a) => a.is_empty(),
                Value::Object(o) => o.is_empty(),
                _ => false,
            };
            if empty {
                fail("expected a non-empty value".into())
            } else {
                Ok(())
            }
        }
        Matcher::Semver => match actual.as_str() {
            Some(text) if is_semver(text) => Ok(()),
            _ => fail("expected a semantic version".into()),
        },
        Matcher::StatusCode(_) => fail("statusCode only applies to the status".into()),
        Matcher::Unsupported(kind) => fail(format!("the {kind} matcher is not supported")),
    }
}

fn is_semver(text: &str) -> bool {
    let core = text.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

fn judge(rule: &RuleList, expected: &Value, actual: &Value) -> Result<(), String> {
    let mut errors = Vec::new();
    for matcher in &rule.matchers {
        match check(matcher, expected, actual) {
            Ok(()) if rule.combine == Combine::Or => return Ok(()),
            Ok(()) => {}
            Err(e) => errors.push(e),
        }
    }
    match rule.combine {
        Combine::And if errors.is_empty() => Ok(()),
        _ if rule.matchers.is_empty() => Ok(()),
        _ => Err(errors.join("; ")),
    }
}

fn walk(policy: &dyn Policy, at: &mut Location, e: &Value, a: &Value, out: &mut Vec<Difference>) {
    if policy.ignored(at) {
        return;
    }
    let rule = policy.rule(at);
    let mut templated = policy.child_rule(at);
    if let Some((rule, _)) = rule {
        if let Err(message) = judge(rule, e, a) {
            out.push(difference(
                at.pointer(),
                e.clone(),
                a.clone(),
                &rule.describe(),
                message,
            ));
            return;
        }
        let type_like = rule.matchers.iter().any(Matcher::is_type_like);
        let containers = matches!(
            (e, a),
            (Value::Object(_), Value::Object(_)) | (Value::Array(_), Value::Array(_))
        );
        if !(type_like && containers) {
            // A leaf judged by its rule (type, regex, integer, equality ...) is done.
            if !containers || !rule.matchers.iter().any(|m| matches!(m, Matcher::Equality)) {
                return;
            }
        }
        templated |= type_like;
    }
    match (e, a) {
        (Value::Object(eo), Value::Object(ao)) => {
            let values =
                rule.is_some_and(|(r, _)| r.matchers.iter().any(|m| matches!(m, Matcher::Values)));
            if values {
                // Keys are free; every actual value matches the first expected one.
                if let Some(template) = eo.values().next() {
                    for (key, av) in ao {
                        at.0.push(Step::Key(key.clone()));
                        walk(policy, at, template, av, out);
                        at.0.pop();
                    }
                }
                return;
            }
            for (key, ev) in eo {
                at.0.push(Step::Key(key.clone()));
                match ao.get(key) {
                    Some(av) => walk(policy, at, ev, av, out),
                    None if !policy.ignored(at) => out.push(difference(
                        at.pointer(),
                        ev.clone(),
                        Value::Null,
                        "equality",
                        format!("missing key {key:?}"),
                    )),
                    None => {}
                }
                at.0.pop();
            }
            if !policy.extra_keys_allowed() {
                for (key, av) in ao {
                    if !eo.contains_key(key) {
                        at.0.push(Step::Key(key.clone()));
                        if !policy.ignored(at) {
                            out.push(difference(
                                at.pointer(),
                                Value::Null,
                                av.clone(),
                                "equality",
                                format!("unexpected key {key:?}"),
                            ));
                        }
                        at.0.pop();
                    }
                }
            }
        }
        (Value::Array(ea), Value::Array(aa)) if templated => {
            for (i, av) in aa.iter().enumerate() {
                let Some(template) = ea.get(i).or_else(|| ea.first()) else {
                    break;
                };
                at.0.push(Step::Index(i));
                walk(policy, at, template, av, out);
                at.0.pop();
            }
        }
        (Value::Array(ea), Value::Array(aa)) => {
            if ea.len() != aa.len() && !policy.ignored(at) {
                out.push(difference(
                    at.pointer(),
                    Value::from(ea.len()),
                    Value::from(aa.len()),
                    "equality",
                    format!("expected {} elements, got {}", ea.len(), aa.len()),
                ));
            }
            for i in 0..ea.len().max(aa.len()) {
                at.0.push(Step::Index(i));
                match (ea.get(i), aa.get(i)) {
                    (Some(ev), Some(av)) => walk(policy, at, ev, av, out),
                    (ev, av) if !policy.ignored(at) && !policy.extra_keys_allowed() => {
                        out.push(difference(
                            at.pointer(),
                            ev.cloned().unwrap_or(Value::Null),
                            av.cloned().unwrap_or(Value::Null),
                            "equality",
                            if ev.is_some() {
                                "missing element".to_owned()
                            } else {
                                "unexpected element".to_owned()
                            },
                        ))
                    }
                    _ => {}
                }
                at.0.pop();
            }
        }
        _ if numbers_equal(e, a) => {}
        _ => {
            let message = if kind(e) == kind(a) {
                String::new()
            } else {
                format!("expected a {}, got a {}", kind(e), kind(a))
            };
            out.push(difference(
                at.pointer(),
                e.clone(),
                a.clone(),
                "equality",
                message,
            ));
        }
    }
}

/// Compares responses under a set of ignore rules (the proxy's shadow comparison).
#[derive(Debug, Clone, Default)]
pub struct Comparator {
    ignore: Vec<Vec<String>>,
    headers: Vec<String>,
}

struct IgnorePolicy<'a>(&'a Comparator);

impl Policy for IgnorePolicy<'_> {
    fn rule(&self, _: &Location) -> Option<(&RuleList, bool)> {
        None
    }
    fn child_rule(&self, _: &Location) -> bool {
        false
    }
    fn ignored(&self, at: &Location) -> bool {
        self.0.ignore.iter().any(|rule| {
            rule.len() <= at.0.len()
                && rule.iter().zip(&at.0).all(|(r, step)| {
                    r == "*"
                        || match step {
                            Step::Key(k) => r == k,
                            Step::Index(i) => *r == i.to_string(),
                        }
                })
        })
    }
    fn extra_keys_allowed(&self) -> bool {
        false
    }
}

impl Comparator {
    /// A comparator that ignores the `ignore` JSON pointers and compares the `headers`.
    pub fn new(ignore: &[String], headers: &[String]) -> Self {
        Comparator {
            ignore: ignore.iter().map(|p| pointer_segments(p)).collect(),
            headers: headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
        }
    }

    /// The headers this comparator looks at.
    pub fn headers(&self) -> &[String] {
        &self.headers
    }

    /// Every difference between `expected` and `actual` that no rule ignores.
    pub fn compare(&self, expected: &Observed, actual: &Observed) -> Vec<Difference> {
        let mut differences = Vec::new();
        if expected.status != actual.status {
            differences.push(difference(
                "status".to_owned(),
                Value::from(expected.status),
                Value::from(actual.status),
                "equality",
                String::new(),
            ));
        }
        for name in &self.headers {
            let (e, a) = (expected.header(name), actual.header(name));
            if e != a {
                differences.push(difference(
                    format!("header:{name}"),
                    e.map_or(Value::Null, Value::from),
                    a.map_or(Value::Null, Value::from),
                    "equality",
                    String::new(),
                ));
            }
        }
        match (&expected.body, &actual.body) {
            (Some(e), Some(a)) => match (
                serde_json::from_slice::<Value>(e),
                serde_json::from_slice::<Value>(a),
            ) {
                (Ok(e), Ok(a)) => walk(
                    &IgnorePolicy(self),
                    &mut Location::default(),
                    &e,
                    &a,
                    &mut differences,
                ),
                _ if e != a => differences.push(difference(
                    "body".to_owned(),
                    Value::from(String::from_utf8_lossy(e).into_owned()),
                    Value::from(String::from_utf8_lossy(a).into_owned()),
                    "equality",
                    String::new(),
                )),
                _ => {}
            },
            (None, None) => {}
            (e, a) => differences.push(difference(
                "body".to_owned(),
                Value::from(e.is_some()),
                Value::from(a.is_some()),
                "equality",
                "one side has no body".to_owned(),
            )),
        }
        differences
    }
}

fn pointer_segments(pointer: &str) -> Vec<String> {
    pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect()
}

struct PactPolicy<'a>(Option<&'a Category>);

impl Policy for PactPolicy<'_> {
    fn rule(&self, at: &Location) -> Option<(&RuleList, bool)> {
        self.0.and_then(|c| c.best(at))
    }
    fn child_rule(&self, at: &Location) -> bool {
        self.0.is_some_and(|c| c.has_child_rule(at))
    }
    fn ignored(&self, _: &Location) -> bool {
        false
    }
    fn extra_keys_allowed(&self) -> bool {
        true
    }
}

/// Every way `actual` fails the contract's expected response (Pact semantics: the status, the
/// headers the contract names, and the body under its matching rules).
pub fn match_response(expected: &HttpResponse, actual: &Observed) -> Vec<Difference> {
    let mut out = Vec::new();
    let rules = &expected.matching_rules;
    let status_rule = rules.category("status").and_then(Category::whole);
    let status_ok = match status_rule.and_then(|r| r.matchers.first()) {
        Some(Matcher::StatusCode(spec)) => status_in(spec, actual.status),
        _ => expected.status == actual.status,
    };
    if !status_ok {
        out.push(difference(
            "status".to_owned(),
            Value::from(expected.status),
            Value::from(actual.status),
            &status_rule.map_or_else(|| "equality".to_owned(), RuleList::describe),
            String::new(),
        ));
    }
    let header_rules = rules.category("header");
    for (name, values) in &expected.headers {
        let path = format!("header:{}", name.to_ascii_lowercase());
        let Some(got) = actual.header(name) else {
            out.push(difference(
                path,
                Value::from(values.join(", ")),
                Value::Null,
                "equality",
                format!("missing header {name}"),
            ));
            continue;
        };
        if let Some(rule) = header_rules.and_then(|c| c.named(name)) {
            if let Err(message) = judge(
                rule,
                &Value::from(values.join(", ")),
                &Value::from(got.clone()),
            ) {
                out.push(difference(
                    path,
                    Value::from(values.join(", ")),
                    Value::from(got),
                    &rule.describe(),
                    message,
                ));
            }
            continue;
        }
        let expected_value = values.join(", ");
        let equal = if name.eq_ignore_ascii_case("content-type") {
            // The same media type, with every parameter the contract names.
            let (e_type, e_params) = media_type(&expected_value);
            let (a_type, a_params) = media_type(&got);
            e_type == a_type && e_params.iter().all(|p| a_params.contains(p))
        } else {
            split_values(&expected_value) == split_values(&got)
        };
        if !equal {
            out.push(difference(
                path,
                Value::from(expected_value),
                Value::from(got),
                "equality",
                String::new(),
            ));
        }
    }
    match (&expected.body, &actual.body) {
        (None, _) => {}
        (Some(body), None) => out.push(difference(
            "body".to_owned(),
            body_value(body),
            Value::Null,
            "equality",
            "missing body".to_owned(),
        )),
        (Some(Body::Json(e)), Some(bytes)) => {
            let content_type = actual.header("content-type");
            match serde_json::from_slice::<Value>(bytes) {
                Ok(a) => walk(
                    &PactPolicy(rules.category("body")),
                    &mut Location::default(),
                    e,
                    &a,
                    &mut out,
                ),
                Err(err) => out.push(difference(
                    "body".to_owned(),
                    e.clone(),
                    Value::from(String::from_utf8_lossy(bytes).into_owned()),
                    "equality",
                    format!(
                        "the body is not JSON ({err}; content type {})",
                        content_type.as_deref().unwrap_or("none")
                    ),
                )),
            }
        }
        (Some(body), Some(bytes)) => {
            let expected_bytes = body.to_bytes();
            let rule = rules
                .category("body")
                .and_then(|c| c.best(&Location::default()));
            let actual_text = String::from_utf8_lossy(bytes).into_owned();
            let verdict = match rule {
                Some((rule, _)) => {
                    judge(rule, &body_value(body), &Value::from(actual_text.clone()))
                }
                None if expected_bytes == *bytes => Ok(()),
                None => Err(String::new()),
            };
            if let Err(message) = verdict {
                out.push(difference(
                    "body".to_owned(),
                    body_value(body),
                    Value::from(actual_text),
                    &rule.map_or_else(|| "equality".to_owned(), |(r, _)| r.describe()),
                    message,
                ));
            }
        }
    }
    out
}

fn body_value(body: &Body) -> Value {
    match body {
        Body::Json(v) => v.clone(),
        Body::Text(t) => Value::from(t.clone()),
        Body::Bytes(b) => Value::from(format!("{} bytes", b.len())),
    }
}

fn status_in(spec: &Value, status: u16) -> bool {
    match spec {
        Value::Array(codes) => codes.iter().any(|c| c.as_u64() == Some(u64::from(status))),
        Value::String(class) => match class.as_str() {
            "information" => (100..200).contains(&status),
            "success" => (200..300).contains(&status),
            "redirect" => (300..400).contains(&status),
            "clientError" => (400..500).contains(&status),
            "serverError" => (500..600).contains(&status),
            "nonError" => status < 400,
            "error" => status >= 400,
            _ => false,
        },
        _ => false,
    }
}

fn split_values(value: &str) -> Vec<String> {
    value.split(',').map(|v| v.trim().to_owned()).collect()
}

fn media_type(value: &str) -> (String, Vec<(String, String)>) {
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let mut params: Vec<(String, String)> = parts
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_ascii_lowercase(),
                v.trim().trim_matches('"').to_ascii_lowercase(),
            )
        })
        .collect();
    params.sort();
    (essence, params)
}

/// Whether `body` (with its content type) is JSON that the walk can compare structurally.
pub fn is_json_body(content_type: Option<&str>) -> bool {
    content_type.is_none_or(is_json_type)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn observed(status: u16, body: &Value) -> Observed {
        Observed {
            status,
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: Some(body.to_string().into_bytes()),
        }
    }

    #[test]
    fn equal_responses_have_no_differences() {
        let c = Comparator::new(&[], &["content-type".to_owned()]);
        let body = json!({"id": 1, "tags": ["a", "b"], "price": {"amount": 100}});
        assert!(c
            .compare(&observed(200, &body), &observed(200, &body))
            .is_empty());
    }

    #[test]
    fn differences_name_their_path() {
        let c = Comparator::new(&[], &["content-type".to_owned()]);
        let e = observed(200, &json!({"id": 1, "name": "a", "tags": ["x"]}));
        let mut a = observed(
            404,
            &json!({"id": 1, "name": "b", "tags": ["x", "y"], "extra": true}),
        );
        a.headers[0].1 = "text/plain".to_owned();
        let paths: Vec<String> = c.compare(&e, &a).into_iter().map(|d| d.path).collect();
        assert_eq!(
            paths,
            vec![
                "status",
                "header:content-type",
                "/name",
                "/tags",
                "/tags/1",
                "/extra"
            ]
        );
    }

    #[test]
    fn ignore_rules_skip_fields_and_wildcards() {
        let c = Comparator::new(&["/updated_at".to_owned(), "/items/*/at".to_owned()], &[]);
        let e = observed(200, &json!({"updated_at": 1, "items": [{"at": 1, "n": 1}]}));
        let a = observed(200, &json!({"updated_at": 2, "items": [{"at": 2, "n": 1}]}));
        assert!(c.compare(&e, &a).is_empty());
        let a = observed(200, &json!({"updated_at": 2, "items": [{"at": 2, "n": 2}]}));
        let diffs = c.compare(&e, &a);
        assert_eq!(diffs.len(), 1);
        assert_eq!(diffs[0].path, "/items/0/n");
    }

    #[test]
    fn non_json_bodies_compare_bytes() {
        let c = Comparator::default();
        let mut e = observed(200, &json!(null));
        let mut a = e.clone();
        e.body = Some(b"<p>a</p>".to_vec());
        a.body = Some(b"<p>b</p>".to_vec());
        assert_eq!(c.compare(&e, &a)[0].path, "body");
    }

    fn response(body: Value, rules: &Value) -> HttpResponse {
        HttpResponse {
            status: 200,
            headers: [(
                "Content-Type".to_owned(),
                vec!["application/json".to_owned()],
            )]
            .into(),
            body: Some(Body::Json(body)),
            matching_rules: crate::rules::MatchingRules::from_json(rules).unwrap(),
            generators: crate::generators::Generators::default(),
        }
    }

    #[test]
    fn pact_rules_judge_values_and_extra_keys_pass() {
        let expected = response(
            json!({"id": 7, "at": "2026-01-01T00:00:00.000Z", "items": [{"n": 1}], "name": "x"}),
            &json!({"body": {
                "$.id": {"matchers": [{"match": "integer"}]},
                "$.at": {"matchers": [{"match": "timestamp", "format": "yyyy-MM-dd'T'HH:mm:ss.SSSX"}]},
                "$.items": {"matchers": [{"match": "type", "min": 1}]}
            }}),
        );
        let ok = observed(
            200,
            &json!({"id": 99, "at": "2030-05-06T07:08:09.123Z", "items": [{"n": 5}, {"n": 6}], "name": "x", "new": 1}),
        );
        assert_eq!(match_response(&expected, &ok), vec![]);
        let bad = observed(
            200,
            &json!({"id": "99", "at": "yesterday", "items": [], "name": "y"}),
        );
        let diffs = match_response(&expected, &bad);
        let paths: Vec<&str> = diffs.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, vec!["/at", "/id", "/items", "/name"], "{diffs:#?}");
        assert_eq!(diffs[1].rule.as_deref(), Some("integer"));
        assert!(diffs[2].message.contains("at least 1"), "{}", diffs[2]);
    }

    #[test]
    fn pact_headers_and_status() {
        let mut expected = response(json!({}), &json!({}));
        expected
            .headers
            .insert("X-Total".to_owned(), vec!["3".to_owned()]);
        let mut actual = observed(201, &json!({}));
        actual.headers[0].1 = "application/json; charset=utf-8".to_owned();
        let diffs = match_response(&expected, &actual);
        let paths: Vec<&str> = diffs.iter().map(|d| d.path.as_str()).collect();
        // A charset the contract does not name is fine; X-Total is missing.
        assert_eq!(paths, vec!["status", "header:x-total"]);
        actual.headers[0].1 = "text/plain".to_owned();
        let diffs = match_response(&expected, &actual);
        assert_eq!(diffs[1].path, "header:content-type");
    }
}
