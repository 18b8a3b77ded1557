//! Comparing two HTTP responses: status, chosen headers, and bodies (structurally when both are
//! JSON, byte for byte otherwise), with ignore rules for fields known to differ.
//!
//! Ignore rules are JSON pointers (`/updated_at`); a `*` segment matches any one key or index
//! (`/items/*/updated_at`), and a rule ignores the whole subtree under it. The proxy's shadow
//! diffing uses [`Comparator`]; it is shaped as a library type so contract verification can use
//! the same comparison.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The parts of a response that are compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Status code.
    pub status: u16,
    /// The compared headers as (lower-case name, value); absent headers are left out.
    pub headers: Vec<(String, String)>,
    /// The body, when it was captured.
    pub body: Option<Vec<u8>>,
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
}

/// Compares responses under a set of ignore rules.
#[derive(Debug, Clone, Default)]
pub struct Comparator {
    ignore: Vec<Vec<String>>,
    headers: Vec<String>,
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
            differences.push(Difference {
                path: "status".to_owned(),
                expected: Value::from(expected.status),
                actual: Value::from(actual.status),
            });
        }
        for name in &self.headers {
            let find = |o: &Observed| {
                o.headers
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
            };
            let (e, a) = (find(expected), find(actual));
            if e != a {
                differences.push(Difference {
                    path: format!("header:{name}"),
                    expected: e.map_or(Value::Null, Value::from),
                    actual: a.map_or(Value::Null, Value::from),
                });
            }
        }
        match (&expected.body, &actual.body) {
            (Some(e), Some(a)) => match (
                serde_json::from_slice::<Value>(e),
                serde_json::from_slice::<Value>(a),
            ) {
                (Ok(e), Ok(a)) => self.compare_json(&mut Vec::new(), &e, &a, &mut differences),
                _ if e != a => differences.push(Difference {
                    path: "body".to_owned(),
                    expected: Value::from(String::from_utf8_lossy(e).into_owned()),
                    actual: Value::from(String::from_utf8_lossy(a).into_owned()),
                }),
                _ => {}
            },
            (None, None) => {}
            (e, a) => differences.push(Difference {
                path: "body".to_owned(),
                expected: Value::from(e.is_some()),
                actual: Value::from(a.is_some()),
            }),
        }
        differences
    }

    fn ignored(&self, path: &[String]) -> bool {
        self.ignore.iter().any(|rule| {
            rule.len() <= path.len() && rule.iter().zip(path).all(|(r, p)| r == "*" || r == p)
        })
    }

    fn compare_json(
        &self,
        path: &mut Vec<String>,
        e: &Value,
        a: &Value,
        out: &mut Vec<Difference>,
    ) {
        if self.ignored(path) {
            return;
        }
        match (e, a) {
            (Value::Object(eo), Value::Object(ao)) => {
                for (key, ev) in eo {
                    path.push(key.clone());
                    match ao.get(key) {
                        Some(av) => self.compare_json(path, ev, av, out),
                        None if !self.ignored(path) => {
                            out.push(self.difference(path, ev, &Value::Null))
                        }
                        None => {}
                    }
                    path.pop();
                }
                for (key, av) in ao {
                    if !eo.contains_key(key) {
                        path.push(key.clone());
                        if !self.ignored(path) {
                            out.push(self.difference(path, &Value::Null, av));
                        }
                        path.pop();
                    }
                }
            }
            (Value::Array(ea), Value::Array(aa)) => {
                for i in 0..ea.len().max(aa.len()) {
                    path.push(i.to_string());
                    match (ea.get(i), aa.get(i)) {
                        (Some(ev), Some(av)) => self.compare_json(path, ev, av, out),
                        (ev, av) if !self.ignored(path) => out.push(self.difference(
                            path,
                            ev.unwrap_or(&Value::Null),
                            av.unwrap_or(&Value::Null),
                        )),
                        _ => {}
                    }
                    path.pop();
                }
            }
            _ if e != a => out.push(self.difference(path, e, a)),
            _ => {}
        }
    }

    fn difference(&self, path: &[String], e: &Value, a: &Value) -> Difference {
        let mut pointer = String::new();
        for segment in path {
            pointer.push('/');
            pointer.push_str(&segment.replace('~', "~0").replace('/', "~1"));
        }
        if pointer.is_empty() {
            pointer.push('/');
        }
        Difference {
            path: pointer,
            expected: e.clone(),
            actual: a.clone(),
        }
    }
}

fn pointer_segments(pointer: &str) -> Vec<String> {
    pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect()
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
        let a = observed(200, &json!({"id": 1, "tags": ["a", "b"]}));
        assert!(c.compare(&a, &a.clone()).is_empty());
        // Key order does not matter.
        let reordered = Observed {
            body: Some(br#"{"tags":["a","b"],"id":1}"#.to_vec()),
            ..a.clone()
        };
        assert!(c.compare(&a, &reordered).is_empty());
    }

    #[test]
    fn differences_are_named_by_pointer() {
        let c = Comparator::new(&[], &["content-type".to_owned()]);
        let e = observed(
            200,
            &json!({"id": 1, "name": "Mug", "items": [{"n": 1}, {"n": 2}]}),
        );
        let mut a = observed(
            201,
            &json!({"id": 1, "title": "Mug", "items": [{"n": 1}, {"n": "2"}, {"n": 3}]}),
        );
        a.headers[0].1 = "text/plain".to_owned();
        let paths: Vec<String> = c.compare(&e, &a).into_iter().map(|d| d.path).collect();
        assert_eq!(
            paths,
            [
                "status",
                "header:content-type",
                "/items/1/n",
                "/items/2",
                "/name",
                "/title"
            ]
        );
    }

    #[test]
    fn ignore_rules_cover_subtrees_and_wildcards() {
        let c = Comparator::new(
            &[
                "/updated_at".to_owned(),
                "/items/*/at".to_owned(),
                "/meta".to_owned(),
            ],
            &[],
        );
        let e = observed(
            200,
            &json!({"updated_at": "1", "items": [{"at": 1, "n": 1}], "meta": {"x": 1}}),
        );
        let a = observed(
            200,
            &json!({"updated_at": "2", "items": [{"at": 2, "n": 1}], "meta": {"y": 2}}),
        );
        assert!(c.compare(&e, &a).is_empty());
        let changed = observed(
            200,
            &json!({"updated_at": "2", "items": [{"at": 2, "n": 9}], "meta": {}}),
        );
        let paths: Vec<String> = c
            .compare(&e, &changed)
            .into_iter()
            .map(|d| d.path)
            .collect();
        assert_eq!(paths, ["/items/0/n"]);
    }

    #[test]
    fn non_json_bodies_compare_as_bytes() {
        let c = Comparator::new(&[], &[]);
        let text = |s: &str| Observed {
            status: 200,
            headers: vec![],
            body: Some(s.as_bytes().to_vec()),
        };
        assert!(c.compare(&text("hello"), &text("hello")).is_empty());
        assert_eq!(c.compare(&text("hello"), &text("world"))[0].path, "body");
    }
}
