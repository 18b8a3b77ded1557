//! Pact matching rules: matchers, the JSON path expressions that place them, and the choice of
//! the most specific rule for a location.
//!
//! Rules are read from the V2 (flat, `$.body.x`), V3 and V4 (by category) layouts and written in
//! the V4 layout. A rule placed on a node also applies to everything under it unless a more
//! specific rule says otherwise (Pact's cascading), and the most specific path wins: an exact
//! key or index weighs more than a `*`.

use std::collections::BTreeMap;
use std::fmt;

use regex::Regex;
use serde_json::{json, Map, Value};

/// A matching-rule document could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RuleError(pub String);

/// One step of a path expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// `$`.
    Root,
    /// `.name` or `['name']`.
    Field(String),
    /// `[3]`.
    Index(usize),
    /// `.*` or `[*]`: any key or index.
    Star,
}

/// A location in a body: the steps from the root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location(pub Vec<Step>);

/// One step into a JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// An object's key.
    Key(String),
    /// An array's index.
    Index(usize),
}

impl Location {
    /// The JSON pointer of this location (`/items/0/name`; `/` for the root).
    pub fn pointer(&self) -> String {
        if self.0.is_empty() {
            return "/".to_owned();
        }
        let mut out = String::new();
        for step in &self.0 {
            out.push('/');
            match step {
                Step::Key(k) => out.push_str(&k.replace('~', "~0").replace('/', "~1")),
                Step::Index(i) => out.push_str(&i.to_string()),
            }
        }
        out
    }

    /// The Pact path expression of this location (`$.items[0].name`).
    pub fn expression(&self) -> String {
        let mut out = "$".to_owned();
        for step in &self.0 {
            match step {
                Step::Key(k) if is_identifier(k) => {
                    out.push('.');
                    out.push_str(k);
                }
                Step::Key(k) => {
                    out.push_str("['");
                    out.push_str(&k.replace('\'', "\\'"));
                    out.push_str("']");
                }
                Step::Index(i) => {
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
            }
        }
        out
    }
}

fn is_identifier(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Parses a Pact path expression (`$.a.b[0]['c d'][*].*`).
pub fn parse_path(expression: &str) -> Result<Vec<Token>, RuleError> {
    let bad = |why: &str| RuleError(format!("path expression {expression:?}: {why}"));
    let chars: Vec<char> = expression.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    if chars.first() != Some(&'$') {
        return Err(bad("must start with $"));
    }
    tokens.push(Token::Root);
    i += 1;
    while i < chars.len() {
        match chars[i] {
            '.' => {
                i += 1;
                let start = i;
                while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                    i += 1;
                }
                let name: String = chars[start..i].iter().collect();
                match name.as_str() {
                    "" => return Err(bad("empty field name")),
                    "*" => tokens.push(Token::Star),
                    _ => tokens.push(Token::Field(name)),
                }
            }
            '[' => {
                i += 1;
                if chars.get(i) == Some(&'\'') || chars.get(i) == Some(&'"') {
                    let quote = chars[i];
                    i += 1;
                    let mut name = String::new();
                    while i < chars.len() && chars[i] != quote {
                        if chars[i] == '\\' && i + 1 < chars.len() {
                            i += 1;
                        }
                        name.push(chars[i]);
                        i += 1;
                    }
                    if chars.get(i + 1) != Some(&']') {
                        return Err(bad("unterminated ['...']"));
                    }
                    i += 2;
                    tokens.push(Token::Field(name));
                } else {
                    let start = i;
                    while i < chars.len() && chars[i] != ']' {
                        i += 1;
                    }
                    if i >= chars.len() {
                        return Err(bad("unterminated [...]"));
                    }
                    let inner: String = chars[start..i].iter().collect();
                    i += 1;
                    if inner == "*" {
                        tokens.push(Token::Star);
                    } else {
                        let index = inner
                            .parse()
                            .map_err(|_| bad(&format!("{inner:?} is not an index")))?;
                        tokens.push(Token::Index(index));
                    }
                }
            }
            c => return Err(bad(&format!("unexpected {c:?}"))),
        }
    }
    Ok(tokens)
}

/// How well a rule's path matches a location: 0 when it does not apply, more when it is more
/// specific (an exact step doubles the weight, a `*` keeps it).
fn weight(tokens: &[Token], location: &Location) -> u64 {
    if tokens.len() > location.0.len() + 1 || tokens.first() != Some(&Token::Root) {
        return 0;
    }
    let mut weight = 2u64;
    for (token, step) in tokens[1..].iter().zip(&location.0) {
        weight = weight.saturating_mul(match (token, step) {
            (Token::Field(name), Step::Key(key)) if name == key => 2,
            (Token::Index(i), Step::Index(j)) if i == j => 2,
            (Token::Star, _) => 1,
            _ => return 0,
        });
    }
    weight
}

/// How the matchers of one rule combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Combine {
    /// Every matcher must match.
    #[default]
    And,
    /// One matcher must match.
    Or,
}

/// One matcher.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// Equal values (resets a cascading type rule).
    Equality,
    /// Same JSON type; for arrays, optionally a minimum and maximum length.
    Type {
        /// Minimum array length.
        min: Option<usize>,
        /// Maximum array length.
        max: Option<usize>,
    },
    /// The value (as a string) matches the regular expression.
    Regex(Pattern),
    /// An integer.
    Integer,
    /// A number with a fractional part.
    Decimal,
    /// Any number.
    Number,
    /// A boolean.
    Boolean,
    /// null.
    Null,
    /// A string containing the value.
    Include(String),
    /// A date-time in a Java `DateTimeFormatter` pattern.
    Timestamp(String),
    /// A date in a Java `DateTimeFormatter` pattern.
    Date(String),
    /// A time in a Java `DateTimeFormatter` pattern.
    Time(String),
    /// An object's values each match the expected values, whatever their keys.
    Values,
    /// Not empty: a non-empty string, array or object, or any other non-null value.
    NotEmpty,
    /// A semantic version.
    Semver,
    /// A status code in a class (`success`, `clientError`, ...) or a list.
    StatusCode(Value),
    /// A matcher this implementation does not evaluate (reported, never silently passed).
    Unsupported(String),
}

/// A compiled regular expression that remembers its source.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// The source.
    pub source: String,
    compiled: Regex,
}

impl Pattern {
    /// Compiles `source`.
    pub fn new(source: &str) -> Result<Self, RuleError> {
        Regex::new(&format!("^(?:{source})$"))
            .map(|compiled| Pattern {
                source: source.to_owned(),
                compiled,
            })
            .map_err(|e| RuleError(format!("regex {source:?}: {e}")))
    }

    /// Whether the whole of `text` matches.
    pub fn matches(&self, text: &str) -> bool {
        self.compiled.is_match(text)
    }
}

impl Matcher {
    /// Reads one matcher (`{"match": "regex", "regex": "..."}`; V2's `{"regex": "..."}` and
    /// `{"min": 1}` too).
    pub fn from_json(value: &Value) -> Result<Self, RuleError> {
        let object = value
            .as_object()
            .ok_or_else(|| RuleError(format!("a matcher must be an object, not {value}")))?;
        let text = |key: &str| object.get(key).and_then(Value::as_str);
        let size = |key: &str| {
            object
                .get(key)
                .and_then(Value::as_u64)
                .and_then(|n| usize::try_from(n).ok())
        };
        let kind = match text("match") {
            Some(kind) => kind.to_owned(),
            None if object.contains_key("regex") => "regex".to_owned(),
            None if object.contains_key("min") || object.contains_key("max") => "type".to_owned(),
            None if object.contains_key("timestamp") => "timestamp".to_owned(),
            None if object.contains_key("date") => "date".to_owned(),
            None if object.contains_key("time") => "time".to_owned(),
            None => return Err(RuleError(format!("a matcher without \"match\": {value}"))),
        };
        let format = |key: &str| {
            text("format")
                .or_else(|| text(key))
                .unwrap_or(match key {
                    "date" => "yyyy-MM-dd",
                    "time" => "HH:mm:ss",
                    _ => "yyyy-MM-dd'T'HH:mm:ss",
                })
                .to_owned()
        };
        Ok(match kind.as_str() {
            "equality" => Matcher::Equality,
            "type" | "min" | "max" | "minType" | "maxType" => Matcher::Type {
                min: size("min"),
                max: size("max"),
            },
            "regex" => Matcher::Regex(Pattern::new(
                text("regex").ok_or_else(|| RuleError("a regex matcher needs \"regex\"".into()))?,
            )?),
            "integer" => Matcher::Integer,
            "decimal" => Matcher::Decimal,
            "number" => Matcher::Number,
            "boolean" => Matcher::Boolean,
            "null" => Matcher::Null,
            "include" => Matcher::Include(text("value").unwrap_or_default().to_owned()),
            "timestamp" | "datetime" => Matcher::Timestamp(format("timestamp")),
            "date" => Matcher::Date(format("date")),
            "time" => Matcher::Time(format("time")),
            "values" => Matcher::Values,
            "notEmpty" => Matcher::NotEmpty,
            "semver" => Matcher::Semver,
            "statusCode" => Matcher::StatusCode(object.get("status").cloned().unwrap_or_default()),
            other => Matcher::Unsupported(other.to_owned()),
        })
    }

    /// The V4 JSON form.
    pub fn to_json(&self) -> Value {
        match self {
            Matcher::Equality => json!({"match": "equality"}),
            Matcher::Type { min, max } => {
                let mut m = Map::new();
                m.insert("match".into(), "type".into());
                if let Some(min) = min {
                    m.insert("min".into(), (*min).into());
                }
                if let Some(max) = max {
                    m.insert("max".into(), (*max).into());
                }
                Value::Object(m)
            }
            Matcher::Regex(p) => json!({"match": "regex", "regex": p.source}),
            Matcher::Integer => json!({"match": "integer"}),
            Matcher::Decimal => json!({"match": "decimal"}),
            Matcher::Number => json!({"match": "number"}),
            Matcher::Boolean => json!({"match": "boolean"}),
            Matcher::Null => json!({"match": "null"}),
            Matcher::Include(v) => json!({"match": "include", "value": v}),
            Matcher::Timestamp(f) => json!({"match": "timestamp", "format": f}),
            Matcher::Date(f) => json!({"match": "date", "format": f}),
            Matcher::Time(f) => json!({"match": "time", "format": f}),
            Matcher::Values => json!({"match": "values"}),
            Matcher::NotEmpty => json!({"match": "notEmpty"}),
            Matcher::Semver => json!({"match": "semver"}),
            Matcher::StatusCode(s) => json!({"match": "statusCode", "status": s}),
            Matcher::Unsupported(kind) => json!({"match": kind}),
        }
    }

    /// Whether this matcher makes arrays compare element by element against a template.
    pub fn is_type_like(&self) -> bool {
        matches!(self, Matcher::Type { .. } | Matcher::Values)
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Matcher::Equality => f.write_str("equality"),
            Matcher::Type { min, max } => {
                f.write_str("type")?;
                if let Some(min) = min {
                    write!(f, " min={min}")?;
                }
                if let Some(max) = max {
                    write!(f, " max={max}")?;
                }
                Ok(())
            }
            Matcher::Regex(p) => write!(f, "regex {}", p.source),
            Matcher::Integer => f.write_str("integer"),
            Matcher::Decimal => f.write_str("decimal"),
            Matcher::Number => f.write_str("number"),
            Matcher::Boolean => f.write_str("boolean"),
            Matcher::Null => f.write_str("null"),
            Matcher::Include(v) => write!(f, "include {v:?}"),
            Matcher::Timestamp(p) => write!(f, "timestamp {p}"),
            Matcher::Date(p) => write!(f, "date {p}"),
            Matcher::Time(p) => write!(f, "time {p}"),
            Matcher::Values => f.write_str("values"),
            Matcher::NotEmpty => f.write_str("notEmpty"),
            Matcher::Semver => f.write_str("semver"),
            Matcher::StatusCode(s) => write!(f, "statusCode {s}"),
            Matcher::Unsupported(kind) => write!(f, "{kind} (unsupported)"),
        }
    }
}

/// The matchers placed at one path.
#[derive(Debug, Clone, Default)]
pub struct RuleList {
    /// The matchers.
    pub matchers: Vec<Matcher>,
    /// How they combine.
    pub combine: Combine,
}

impl RuleList {
    /// One matcher.
    pub fn single(matcher: Matcher) -> Self {
        RuleList {
            matchers: vec![matcher],
            combine: Combine::And,
        }
    }

    fn from_json(value: &Value) -> Result<Self, RuleError> {
        match value.get("matchers") {
            Some(Value::Array(list)) => Ok(RuleList {
                matchers: list
                    .iter()
                    .map(Matcher::from_json)
                    .collect::<Result<_, _>>()?,
                combine: match value.get("combine").and_then(Value::as_str) {
                    Some("OR") => Combine::Or,
                    _ => Combine::And,
                },
            }),
            Some(other) => Err(RuleError(format!(
                "\"matchers\" must be a list, not {other}"
            ))),
            // V2: the matcher itself.
            None => Ok(RuleList::single(Matcher::from_json(value)?)),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "combine": if self.combine == Combine::Or { "OR" } else { "AND" },
            "matchers": self.matchers.iter().map(Matcher::to_json).collect::<Vec<_>>(),
        })
    }

    /// A short description (`integer`, `regex ^\d+$ OR null`).
    pub fn describe(&self) -> String {
        let join = if self.combine == Combine::Or {
            " OR "
        } else {
            " AND "
        };
        self.matchers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(join)
    }
}

/// The rules of one category (`body`, `header`, `query`, `path`, `status`), by path.
#[derive(Debug, Clone, Default)]
pub struct Category {
    rules: Vec<(String, Vec<Token>, RuleList)>,
}

impl Category {
    /// Adds (or replaces) the rule at `expression`.
    pub fn insert(&mut self, expression: &str, rule: RuleList) -> Result<(), RuleError> {
        let tokens = parse_path(expression)?;
        self.rules.retain(|(e, _, _)| e != expression);
        self.rules.push((expression.to_owned(), tokens, rule));
        Ok(())
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The most specific rule that applies at `location` (placed there or on an ancestor),
    /// with whether it was placed exactly there.
    pub fn best(&self, location: &Location) -> Option<(&RuleList, bool)> {
        self.rules
            .iter()
            .filter_map(|(_, tokens, rule)| {
                let w = weight(tokens, location);
                (w > 0).then_some((w, tokens.len(), rule, tokens.len() == location.0.len() + 1))
            })
            .max_by_key(|(w, len, _, _)| (*w, *len))
            .map(|(_, _, rule, exact)| (rule, exact))
    }

    /// Whether a rule is placed on every child of `location` (`$.items[*]`), which makes an
    /// array compare against a template instead of element by element.
    pub fn has_child_rule(&self, location: &Location) -> bool {
        self.rules.iter().any(|(_, tokens, _)| {
            tokens.len() == location.0.len() + 2
                && matches!(tokens.last(), Some(Token::Star))
                && weight(&tokens[..tokens.len() - 1], location) > 0
        })
    }

    /// The rule whose path is exactly the single name `name` (header and query rules).
    pub fn named(&self, name: &str) -> Option<&RuleList> {
        self.rules.iter().find_map(|(e, _, rule)| {
            (e.eq_ignore_ascii_case(name)
                || e.strip_prefix("$.")
                    .is_some_and(|n| n.eq_ignore_ascii_case(name)))
            .then_some(rule)
        })
    }

    /// The rule with no path (`path` and `status` categories).
    pub fn whole(&self) -> Option<&RuleList> {
        self.rules
            .iter()
            .find_map(|(e, _, rule)| (e == "$").then_some(rule))
    }

    /// Every rule, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &RuleList)> {
        self.rules.iter().map(|(e, _, r)| (e.as_str(), r))
    }
}

/// Every matching rule of a request or response, by category.
#[derive(Debug, Clone, Default)]
pub struct MatchingRules {
    /// The categories (`body`, `header`, `query`, `path`, `status`).
    pub categories: BTreeMap<String, Category>,
}

impl MatchingRules {
    /// The rules of `category` (empty when there are none).
    pub fn category(&self, category: &str) -> Option<&Category> {
        self.categories.get(category)
    }

    /// The rules of `category`, created when absent.
    pub fn category_mut(&mut self, category: &str) -> &mut Category {
        self.categories.entry(category.to_owned()).or_default()
    }

    /// Whether there are no rules at all.
    pub fn is_empty(&self) -> bool {
        self.categories.values().all(Category::is_empty)
    }

    /// Reads the V3/V4 layout (`{"body": {"$.x": {...}}}`) or the V2 one (`{"$.body.x": {...}}`).
    pub fn from_json(value: &Value) -> Result<Self, RuleError> {
        let mut rules = MatchingRules::default();
        let Some(object) = value.as_object() else {
            return if value.is_null() {
                Ok(rules)
            } else {
                Err(RuleError(format!(
                    "matchingRules must be an object, not {value}"
                )))
            };
        };
        for (key, entry) in object {
            if let Some(rest) = key.strip_prefix("$.") {
                // V2: `$.body.a.b`, `$.headers.Name`, `$.query.name`, `$.path`, `$.status`.
                let (category, path) = match rest.split_once(['.', '[']) {
                    Some((category, _)) => {
                        let tail = &rest[category.len()..];
                        (category, format!("${tail}"))
                    }
                    None => (rest, "$".to_owned()),
                };
                let category = match category {
                    "headers" => "header",
                    other => other,
                };
                let path = match category {
                    "header" | "query" => path.trim_start_matches("$.").to_owned(),
                    _ => path,
                };
                rules.insert(category, &path, RuleList::from_json(entry)?)?;
                continue;
            }
            let category = key.as_str();
            match (category, entry) {
                ("path" | "status" | "method", _) if entry.get("matchers").is_some() => {
                    rules.insert(category, "$", RuleList::from_json(entry)?)?;
                }
                (_, Value::Object(paths)) => {
                    for (path, list) in paths {
                        rules.insert(category, path, RuleList::from_json(list)?)?;
                    }
                }
                _ => {
                    return Err(RuleError(format!(
                        "matchingRules.{category} must be an object"
                    )))
                }
            }
        }
        Ok(rules)
    }

    /// Adds (or replaces) a rule: `path` is a path expression (`$.items[0].id`) for bodies and
    /// a name for headers and query parameters.
    pub fn insert(&mut self, category: &str, path: &str, list: RuleList) -> Result<(), RuleError> {
        let category_rules = self.category_mut(category);
        match category {
            // Header and query rules are keyed by name; keep them as `$.name` internally so
            // the path machinery stays uniform.
            "header" | "query" => {
                let name = path.strip_prefix("$.").unwrap_or(path);
                let expression = format!("$['{}']", name.replace('\'', "\\'"));
                let tokens = parse_path(&expression)?;
                category_rules.rules.retain(|(e, _, _)| e != name);
                category_rules.rules.push((name.to_owned(), tokens, list));
                Ok(())
            }
            _ => category_rules.insert(path, list),
        }
    }

    /// The V4 layout.
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        for (name, category) in &self.categories {
            if category.is_empty() {
                continue;
            }
            if matches!(name.as_str(), "path" | "status") {
                if let Some(rule) = category.whole() {
                    out.insert(name.clone(), rule.to_json());
                }
                continue;
            }
            let mut paths = Map::new();
            for (expression, rule) in category.iter() {
                paths.insert(expression.to_owned(), rule.to_json());
            }
            out.insert(name.clone(), Value::Object(paths));
        }
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(steps: &[&str]) -> Location {
        Location(
            steps
                .iter()
                .map(|s| match s.parse() {
                    Ok(i) => Step::Index(i),
                    Err(_) => Step::Key((*s).to_owned()),
                })
                .collect(),
        )
    }

    #[test]
    fn path_expressions_parse() {
        assert_eq!(
            parse_path("$.a['b c'][2][*].*").unwrap(),
            vec![
                Token::Root,
                Token::Field("a".into()),
                Token::Field("b c".into()),
                Token::Index(2),
                Token::Star,
                Token::Star
            ]
        );
        assert!(parse_path("a.b").is_err());
        assert!(parse_path("$.a[x]").is_err());
        assert!(parse_path("$.a[1").is_err());
    }

    #[test]
    fn the_most_specific_rule_wins_and_rules_cascade() {
        let mut category = Category::default();
        category
            .insert(
                "$.items",
                RuleList::single(Matcher::Type {
                    min: Some(1),
                    max: None,
                }),
            )
            .unwrap();
        category
            .insert("$.items[*].id", RuleList::single(Matcher::Integer))
            .unwrap();
        category
            .insert("$.items[0].id", RuleList::single(Matcher::Equality))
            .unwrap();
        let (rule, exact) = category.best(&location(&["items", "3", "id"])).unwrap();
        assert!(matches!(rule.matchers[0], Matcher::Integer));
        assert!(exact);
        let (rule, _) = category.best(&location(&["items", "0", "id"])).unwrap();
        assert!(matches!(rule.matchers[0], Matcher::Equality));
        let (rule, exact) = category.best(&location(&["items", "1", "name"])).unwrap();
        assert!(matches!(rule.matchers[0], Matcher::Type { .. }));
        assert!(!exact, "cascaded from $.items");
        assert!(category.best(&location(&["next"])).is_none());
    }

    #[test]
    fn v2_and_v4_layouts_read_alike() {
        let v2 = serde_json::json!({
            "$.body.id": {"match": "integer"},
            "$.headers.Date": {"regex": ".+"},
            "$.body.items": {"min": 1}
        });
        let v4 = serde_json::json!({
            "body": {"$.id": {"matchers": [{"match": "integer"}]},
                     "$.items": {"matchers": [{"match": "type", "min": 1}]}},
            "header": {"Date": {"matchers": [{"match": "regex", "regex": ".+"}], "combine": "AND"}}
        });
        for value in [v2, v4] {
            let rules = MatchingRules::from_json(&value).unwrap();
            let body = rules.category("body").unwrap();
            assert!(body.best(&location(&["id"])).is_some());
            assert!(rules.category("header").unwrap().named("date").is_some());
            let round = MatchingRules::from_json(&rules.to_json()).unwrap();
            assert!(round
                .category("body")
                .unwrap()
                .best(&location(&["id"]))
                .is_some());
        }
    }

    #[test]
    fn regexes_match_whole_values() {
        let p = Pattern::new("\\d+").unwrap();
        assert!(p.matches("123"));
        assert!(!p.matches("a123"));
        assert!(Pattern::new("(").is_err());
    }
}
