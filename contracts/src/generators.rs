//! Pact generators: values that replace a contract's examples when it is replayed. During
//! verification the request's generators run: `ProviderState` fills in values the state hook
//! returned (`/catalog/products/${id}`), the random ones make fresh values (ids, uuids, dates).
//! Response generators are kept (they serve mock servers) but do not affect matching.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::pact::HttpRequest;
use crate::rules::{parse_path, Token};

/// One generator.
#[derive(Debug, Clone, PartialEq)]
pub enum Generator {
    /// An integer in `min..=max`.
    RandomInt {
        /// Lowest value.
        min: i64,
        /// Highest value.
        max: i64,
    },
    /// A decimal number with this many digits.
    RandomDecimal {
        /// Digits.
        digits: usize,
    },
    /// A hexadecimal string with this many digits.
    RandomHexadecimal {
        /// Digits.
        digits: usize,
    },
    /// An alphanumeric string of this size.
    RandomString {
        /// Length.
        size: usize,
    },
    /// A random UUID.
    Uuid,
    /// `true` or `false`.
    RandomBoolean,
    /// The current date in a Java pattern.
    Date {
        /// The pattern.
        format: String,
    },
    /// The current time in a Java pattern.
    Time {
        /// The pattern.
        format: String,
    },
    /// The current date and time in a Java pattern.
    DateTime {
        /// The pattern.
        format: String,
    },
    /// A value from the provider state's hook response: `${name}` expressions.
    ProviderState {
        /// The expression.
        expression: String,
    },
    /// A generator this implementation keeps but does not run (`Regex`, `MockServerURL`, ...).
    Other(Value),
}

impl Generator {
    /// Reads one generator (`{"type": "RandomInt", "min": 1, "max": 9}`).
    pub fn from_json(value: &Value) -> Generator {
        let text = |k: &str| value.get(k).and_then(Value::as_str).map(str::to_owned);
        let int = |k: &str, default: i64| value.get(k).and_then(Value::as_i64).unwrap_or(default);
        let size = |k: &str, default: usize| {
            value
                .get(k)
                .and_then(Value::as_u64)
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(default)
        };
        match value
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
        {
            "RandomInt" => Generator::RandomInt {
                min: int("min", 0),
                max: int("max", i64::from(i32::MAX)),
            },
            "RandomDecimal" => Generator::RandomDecimal {
                digits: size("digits", 6),
            },
            "RandomHexadecimal" => Generator::RandomHexadecimal {
                digits: size("digits", 8),
            },
            "RandomString" => Generator::RandomString {
                size: size("size", 10),
            },
            "Uuid" => Generator::Uuid,
            "RandomBoolean" => Generator::RandomBoolean,
            "Date" => Generator::Date {
                format: text("format").unwrap_or_else(|| "yyyy-MM-dd".into()),
            },
            "Time" => Generator::Time {
                format: text("format").unwrap_or_else(|| "HH:mm:ss".into()),
            },
            "DateTime" => Generator::DateTime {
                format: text("format").unwrap_or_else(|| "yyyy-MM-dd'T'HH:mm:ss".into()),
            },
            "ProviderState" => match text("expression") {
                Some(expression) => Generator::ProviderState { expression },
                None => Generator::Other(value.clone()),
            },
            _ => Generator::Other(value.clone()),
        }
    }

    /// The V4 JSON form.
    pub fn to_json(&self) -> Value {
        match self {
            Generator::RandomInt { min, max } => {
                json!({"type": "RandomInt", "min": min, "max": max})
            }
            Generator::RandomDecimal { digits } => {
                json!({"type": "RandomDecimal", "digits": digits})
            }
            Generator::RandomHexadecimal { digits } => {
                json!({"type": "RandomHexadecimal", "digits": digits})
            }
            Generator::RandomString { size } => json!({"type": "RandomString", "size": size}),
            Generator::Uuid => json!({"type": "Uuid"}),
            Generator::RandomBoolean => json!({"type": "RandomBoolean"}),
            Generator::Date { format } => json!({"type": "Date", "format": format}),
            Generator::Time { format } => json!({"type": "Time", "format": format}),
            Generator::DateTime { format } => json!({"type": "DateTime", "format": format}),
            Generator::ProviderState { expression } => {
                json!({"type": "ProviderState", "expression": expression})
            }
            Generator::Other(raw) => raw.clone(),
        }
    }

    /// A fresh value; `example` is the contract's value (its type is kept where it matters),
    /// `context` what the provider-state hooks returned.
    pub fn generate(&self, example: &Value, context: &Map<String, Value>) -> Result<Value, String> {
        use rand::Rng as _;
        let mut rng = rand::thread_rng();
        let now = chrono::Utc::now();
        Ok(match self {
            Generator::RandomInt { min, max } if min <= max => {
                Value::from(rng.gen_range(*min..=*max))
            }
            Generator::RandomInt { min, max } => {
                return Err(format!("RandomInt: min {min} is above max {max}"))
            }
            Generator::RandomDecimal { digits } => {
                let digits = (*digits).clamp(2, 15);
                let whole: u64 =
                    rng.gen_range(1..10u64.pow(u32::try_from(digits - 1).unwrap_or(1)));
                Value::from(whole as f64 / 10.0)
            }
            Generator::RandomHexadecimal { digits } => Value::from(
                (0..*digits)
                    .map(|_| char::from_digit(rng.gen_range(0..16), 16).unwrap_or('0'))
                    .collect::<String>(),
            ),
            Generator::RandomString { size } => Value::from(
                (0..*size)
                    .map(|_| char::from(rng.sample(rand::distributions::Alphanumeric)))
                    .collect::<String>(),
            ),
            Generator::Uuid => Value::from(uuid::Uuid::new_v4().to_string()),
            Generator::RandomBoolean => Value::from(rng.gen::<bool>()),
            Generator::Date { format }
            | Generator::Time { format }
            | Generator::DateTime { format } => {
                Value::from(now.format(&crate::time::chrono_format(format)).to_string())
            }
            Generator::ProviderState { expression } => substitute(expression, example, context)?,
            Generator::Other(raw) => {
                return Err(format!(
                    "the generator {raw} is not supported; the example value would be sent instead"
                ))
            }
        })
    }
}

/// Fills `${name}` expressions from `context`. A whole-value expression keeps the context
/// value's JSON type (a number stays a number).
fn substitute(
    expression: &str,
    example: &Value,
    context: &Map<String, Value>,
) -> Result<Value, String> {
    let lookup = |name: &str| {
        context
            .get(name)
            .ok_or_else(|| format!("the provider state gave no value for ${{{name}}}"))
    };
    if let Some(name) = expression
        .strip_prefix("${")
        .and_then(|rest| rest.strip_suffix('}'))
        .filter(|name| !name.contains("${"))
    {
        let value = lookup(name)?;
        return Ok(match (example, value) {
            (Value::String(_), Value::Number(n)) => Value::from(n.to_string()),
            _ => value.clone(),
        });
    }
    let mut out = String::new();
    let mut rest = expression;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated ${{ in {expression:?}"))?;
        match lookup(&after[..end])? {
            Value::String(s) => out.push_str(s),
            other => out.push_str(&other.to_string()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Value::from(out))
}

/// The generators of a request or response, by category.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Generators {
    /// `body`, `header`, `query`: by path or name; `path`, `method`, `status`: under `""`.
    pub categories: BTreeMap<String, BTreeMap<String, Generator>>,
}

impl Generators {
    /// Reads the V3/V4 layout (`{"body": {"$.id": {...}}, "path": {...}}`).
    pub fn from_json(value: &Value) -> Generators {
        let mut out = Generators::default();
        let Some(object) = value.as_object() else {
            return out;
        };
        for (category, entry) in object {
            let target = out.categories.entry(category.clone()).or_default();
            if entry.get("type").is_some() {
                target.insert(String::new(), Generator::from_json(entry));
            } else if let Some(paths) = entry.as_object() {
                for (path, generator) in paths {
                    target.insert(path.clone(), Generator::from_json(generator));
                }
            }
        }
        out
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.categories.values().all(BTreeMap::is_empty)
    }

    /// The V4 layout.
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        for (category, generators) in &self.categories {
            if let Some(whole) = generators.get("") {
                out.insert(category.clone(), whole.to_json());
            } else if !generators.is_empty() {
                out.insert(
                    category.clone(),
                    Value::Object(
                        generators
                            .iter()
                            .map(|(k, g)| (k.clone(), g.to_json()))
                            .collect(),
                    ),
                );
            }
        }
        Value::Object(out)
    }

    /// `request` with its generators run.
    pub fn apply(
        &self,
        request: &HttpRequest,
        context: &Map<String, Value>,
    ) -> Result<HttpRequest, String> {
        let mut out = request.clone();
        for (category, generators) in &self.categories {
            for (key, generator) in generators {
                match category.as_str() {
                    "path" => {
                        let value = generator.generate(&Value::from(out.path.clone()), context)?;
                        out.path = value
                            .as_str()
                            .map_or_else(|| value.to_string(), str::to_owned);
                    }
                    "query" | "header" => {
                        let map = if category == "query" {
                            &mut out.query
                        } else {
                            &mut out.headers
                        };
                        let name = key.strip_prefix("$.").unwrap_or(key);
                        let existing = map
                            .keys()
                            .find(|k| k.eq_ignore_ascii_case(name))
                            .cloned()
                            .unwrap_or_else(|| name.to_owned());
                        let example = map
                            .get(&existing)
                            .and_then(|v| v.first())
                            .map_or(Value::Null, |v| Value::from(v.clone()));
                        let value = generator.generate(&example, context)?;
                        let text = value
                            .as_str()
                            .map_or_else(|| value.to_string(), str::to_owned);
                        map.insert(existing, vec![text]);
                    }
                    "body" => {
                        if let Some(crate::pact::Body::Json(body)) = &mut out.body {
                            let tokens = parse_path(key).map_err(|e| e.0)?;
                            set_at(body, &tokens[1..], generator, context)?;
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(out)
    }
}

fn set_at(
    value: &mut Value,
    tokens: &[Token],
    generator: &Generator,
    context: &Map<String, Value>,
) -> Result<(), String> {
    let Some((first, rest)) = tokens.split_first() else {
        *value = generator.generate(value, context)?;
        return Ok(());
    };
    match (first, value) {
        (Token::Field(name), Value::Object(map)) => match map.get_mut(name) {
            Some(child) => set_at(child, rest, generator, context),
            None => Ok(()),
        },
        (Token::Index(i), Value::Array(items)) => match items.get_mut(*i) {
            Some(child) => set_at(child, rest, generator, context),
            None => Ok(()),
        },
        (Token::Star, Value::Array(items)) => items
            .iter_mut()
            .try_for_each(|c| set_at(c, rest, generator, context)),
        (Token::Star, Value::Object(map)) => map
            .values_mut()
            .try_for_each(|c| set_at(c, rest, generator, context)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pact::Body;

    #[test]
    fn provider_state_values_fill_the_request() {
        let generators = Generators::from_json(&json!({
            "path": {"type": "ProviderState", "expression": "/catalog/products/${id}"},
            "query": {"after": {"type": "ProviderState", "expression": "${cursor}"}},
            "body": {"$.product_id": {"type": "ProviderState", "expression": "${id}"},
                     "$.items[*].n": {"type": "RandomInt", "min": 5, "max": 5},
                     "$.ref": {"type": "Uuid"}}
        }));
        let request = HttpRequest {
            method: "POST".into(),
            path: "/catalog/products/1".into(),
            query: [("after".to_owned(), vec!["x".to_owned()])].into(),
            body: Some(Body::Json(
                json!({"product_id": 1, "items": [{"n": 1}, {"n": 2}], "ref": "r"}),
            )),
            ..HttpRequest::default()
        };
        let context = json!({"id": 42, "cursor": "aWQ6NDI"});
        let out = generators
            .apply(&request, context.as_object().unwrap())
            .unwrap();
        assert_eq!(out.path, "/catalog/products/42");
        assert_eq!(out.query["after"], vec!["aWQ6NDI".to_owned()]);
        let Some(Body::Json(body)) = out.body else {
            panic!()
        };
        assert_eq!(
            body["product_id"],
            json!(42),
            "a whole-value expression keeps the type"
        );
        assert_eq!(body["items"], json!([{"n": 5}, {"n": 5}]));
        assert_eq!(body["ref"].as_str().unwrap().len(), 36);
        let missing = generators.apply(&request, &Map::new()).unwrap_err();
        assert!(missing.contains("${id}"), "{missing}");
        // Round trip.
        assert_eq!(Generators::from_json(&generators.to_json()), generators);
    }

    #[test]
    fn dates_and_unsupported_generators() {
        let date = Generator::Date {
            format: "yyyy-MM-dd".into(),
        }
        .generate(&Value::Null, &Map::new())
        .unwrap();
        assert!(
            crate::time::matches("yyyy-MM-dd", date.as_str().unwrap()),
            "{date}"
        );
        let regex = Generator::from_json(&json!({"type": "Regex", "regex": "\\d+"}));
        assert!(regex.generate(&Value::Null, &Map::new()).is_err());
        assert_eq!(regex.to_json(), json!({"type": "Regex", "regex": "\\d+"}));
    }
}
