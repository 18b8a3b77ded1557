//! The Pact specification's own response test cases (vendored under `tests/spec-testcases`),
//! run through our matcher: every verdict must agree.

use std::path::{Path, PathBuf};

use contracts::compare::{match_response, Observed};
use contracts::pact::{Body, HttpResponse};
use contracts::rules::MatchingRules;
use serde_json::Value;

fn cases(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            cases(&path, out);
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
}

fn headers(value: &Value) -> Vec<(String, String)> {
    value
        .get("headers")
        .and_then(Value::as_object)
        .map(|h| {
            h.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn content_type(headers: &[(String, String)]) -> Option<&str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.as_str())
}

fn expected(value: &Value) -> HttpResponse {
    let headers = headers(value);
    let body = value.get("body").map(|b| match b {
        Value::String(s) if !content_type(&headers).is_some_and(|c| c.contains("json")) => {
            Body::Text(s.clone())
        }
        other => Body::Json(other.clone()),
    });
    let rules = value
        .get("matchingRules")
        .or_else(|| value.get("responseMatchingRules"))
        .unwrap_or(&Value::Null);
    HttpResponse {
        status: value.get("status").and_then(Value::as_u64).unwrap_or(200) as u16,
        headers: headers.into_iter().map(|(k, v)| (k, vec![v])).collect(),
        body,
        matching_rules: MatchingRules::from_json(rules).unwrap(),
        generators: contracts::generators::Generators::default(),
    }
}

fn actual(value: &Value) -> Observed {
    let headers = headers(value);
    let body = value.get("body").map(|b| match b {
        Value::String(s) if !content_type(&headers).is_some_and(|c| c.contains("json")) => {
            s.clone().into_bytes()
        }
        other => other.to_string().into_bytes(),
    });
    Observed {
        status: value.get("status").and_then(Value::as_u64).unwrap_or(200) as u16,
        headers,
        body,
    }
}

#[test]
fn the_specification_test_cases_agree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/spec-testcases");
    let mut files = Vec::new();
    cases(&root, &mut files);
    files.sort();
    assert!(
        files.len() >= 25,
        "the vendored cases are missing: {}",
        files.len()
    );
    let mut wrong = Vec::new();
    for file in &files {
        let case: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        let want = case["match"].as_bool().unwrap();
        let diffs = match_response(&expected(&case["expected"]), &actual(&case["actual"]));
        if diffs.is_empty() != want {
            wrong.push(format!(
                "{}: expected match={want}, got {diffs:?}",
                file.strip_prefix(&root).unwrap().display()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
