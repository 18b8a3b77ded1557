//! The Pact file format: our own types for HTTP interactions, read from V2, V3 and V4 files and
//! written as V4 (`metadata.pactSpecification.version = "4.0"`). Unknown attributes are ignored
//! on reading, as the specification asks.

use std::collections::BTreeMap;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::generators::Generators;
use crate::rules::{MatchingRules, RuleError};

/// A Pact file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PactError {
    /// The file could not be opened or is not JSON.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The JSON does not describe a pact.
    #[error("{0}")]
    Format(String),
}

impl From<RuleError> for PactError {
    fn from(e: RuleError) -> Self {
        PactError::Format(e.0)
    }
}

/// A contract between a consumer and a provider.
#[derive(Debug, Clone)]
pub struct Pact {
    /// The consumer's name.
    pub consumer: String,
    /// The provider's name.
    pub provider: String,
    /// The HTTP interactions.
    pub interactions: Vec<Interaction>,
    /// The specification version the file was written in (`2.0.0`, `3.0.0`, `4.0`).
    pub specification: String,
    /// Metadata other than the specification version, kept as read.
    pub metadata: Map<String, Value>,
}

/// A provider state with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderState {
    /// The state's name.
    pub name: String,
    /// Its parameters.
    pub params: Map<String, Value>,
}

/// One request/response pair.
#[derive(Debug, Clone)]
pub struct Interaction {
    /// What it shows (unique in a pact).
    pub description: String,
    /// The provider states it needs.
    pub provider_states: Vec<ProviderState>,
    /// The request.
    pub request: HttpRequest,
    /// The expected response.
    pub response: HttpResponse,
    /// Whether a failure is reported without failing the verification.
    pub pending: bool,
    /// Free-form comments (V4), kept as read.
    pub comments: Map<String, Value>,
}

/// A body and its content type.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// JSON.
    Json(Value),
    /// Text.
    Text(String),
    /// Anything else.
    Bytes(Vec<u8>),
}

impl Body {
    /// Reads `bytes` as JSON when the content type says so (or when it parses and no type is
    /// given), as text when it is UTF-8, else as bytes.
    pub fn from_bytes(bytes: &[u8], content_type: Option<&str>) -> Option<Body> {
        if bytes.is_empty() {
            return None;
        }
        let json_type = content_type.is_none_or(is_json_type);
        if json_type {
            if let Ok(value) = serde_json::from_slice(bytes) {
                return Some(Body::Json(value));
            }
        }
        Some(match std::str::from_utf8(bytes) {
            Ok(text) => Body::Text(text.to_owned()),
            Err(_) => Body::Bytes(bytes.to_vec()),
        })
    }

    /// The bytes to send.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Body::Json(v) => v.to_string().into_bytes(),
            Body::Text(t) => t.clone().into_bytes(),
            Body::Bytes(b) => b.clone(),
        }
    }
}

/// Whether a content type is JSON (`application/json`, `application/problem+json`, ...).
pub fn is_json_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

/// Headers by name (as written), each with its values.
pub type Headers = BTreeMap<String, Vec<String>>;

/// The value of header `name` (case-insensitive), values joined with `, `.
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a [String]> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

/// A request.
#[derive(Debug, Clone, Default)]
pub struct HttpRequest {
    /// The method (upper case).
    pub method: String,
    /// The path.
    pub path: String,
    /// The query parameters, each with its values.
    pub query: BTreeMap<String, Vec<String>>,
    /// The headers.
    pub headers: Headers,
    /// The body.
    pub body: Option<Body>,
    /// Matching rules.
    pub matching_rules: MatchingRules,
    /// Generators.
    pub generators: Generators,
}

/// A response.
#[derive(Debug, Clone, Default)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: Headers,
    /// The body.
    pub body: Option<Body>,
    /// Matching rules.
    pub matching_rules: MatchingRules,
    /// Generators.
    pub generators: Generators,
}

impl HttpResponse {
    /// The declared content type.
    pub fn content_type(&self) -> Option<&str> {
        header(&self.headers, "content-type")
            .and_then(<[String]>::first)
            .map(String::as_str)
    }
}

impl HttpRequest {
    /// The path with its query string, percent-encoded.
    pub fn path_and_query(&self) -> String {
        let mut out = self.path.clone();
        let mut first = true;
        for (name, values) in &self.query {
            for value in values {
                out.push(if first { '?' } else { '&' });
                first = false;
                out.push_str(&encode_component(name));
                out.push('=');
                out.push_str(&encode_component(value));
            }
        }
        out
    }

    /// The declared content type.
    pub fn content_type(&self) -> Option<&str> {
        header(&self.headers, "content-type")
            .and_then(<[String]>::first)
            .map(String::as_str)
    }
}

fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl Pact {
    /// Reads a pact file.
    pub fn load(path: &Path) -> Result<Pact, PactError> {
        let io = |reason: String| PactError::Io {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| io(e.to_string()))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| io(e.to_string()))?;
        Pact::from_json(&value).map_err(|e| io(e.to_string()))
    }

    /// Every pact file (`*.json`) in `dir`, sorted by file name.
    pub fn load_dir(dir: &Path) -> Result<Vec<(std::path::PathBuf, Pact)>, PactError> {
        let entries = std::fs::read_dir(dir).map_err(|e| PactError::Io {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut paths: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        paths
            .into_iter()
            .map(|p| Pact::load(&p).map(|pact| (p, pact)))
            .collect()
    }

    /// Reads a pact from its JSON (V2, V3 or V4).
    pub fn from_json(value: &Value) -> Result<Pact, PactError> {
        let bad = |why: String| PactError::Format(why);
        let name = |key: &str| {
            value
                .get(key)
                .and_then(|p| p.get("name"))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| bad(format!("the pact has no {key}.name")))
        };
        let mut metadata = value
            .get("metadata")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let specification = ["pactSpecification", "pact-specification"]
            .iter()
            .find_map(|k| metadata.remove(*k))
            .and_then(|s| s.get("version").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| "2.0.0".to_owned());
        let v4 = specification.starts_with('4');
        let interactions = value
            .get("interactions")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("the pact has no \"interactions\" list".to_owned()))?;
        let mut out = Vec::with_capacity(interactions.len());
        for (i, raw) in interactions.iter().enumerate() {
            let kind = raw
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("Synchronous/HTTP");
            if kind != "Synchronous/HTTP" {
                return Err(bad(format!(
                    "interaction {i}: {kind} interactions are not supported (HTTP only)"
                )));
            }
            out.push(read_interaction(raw, v4).map_err(|e| bad(format!("interaction {i}: {e}")))?);
        }
        Ok(Pact {
            consumer: name("consumer")?,
            provider: name("provider")?,
            interactions: out,
            specification,
            metadata,
        })
    }

    /// The V4 JSON of this pact.
    pub fn to_v4_json(&self) -> Value {
        let mut metadata = self.metadata.clone();
        metadata.insert("pactSpecification".into(), json!({"version": "4.0"}));
        json!({
            "consumer": {"name": self.consumer},
            "provider": {"name": self.provider},
            "interactions": self.interactions.iter().map(write_interaction).collect::<Vec<_>>(),
            "metadata": metadata,
        })
    }

    /// Writes this pact as V4 JSON to `path`, through a temporary file so a reader never sees a
    /// half-written contract.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let text =
            serde_json::to_string_pretty(&self.to_v4_json()).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text + "\n")?;
        std::fs::rename(&tmp, path)
    }
}

fn read_interaction(raw: &Value, v4: bool) -> Result<Interaction, PactError> {
    let description = raw
        .get("description")
        .and_then(Value::as_str)
        .ok_or_else(|| PactError::Format("no description".into()))?
        .to_owned();
    let mut provider_states = Vec::new();
    if let Some(states) = raw.get("providerStates").and_then(Value::as_array) {
        for state in states {
            provider_states.push(ProviderState {
                name: state
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                params: state
                    .get("params")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default(),
            });
        }
    } else if let Some(state) = raw.get("providerState").and_then(Value::as_str) {
        provider_states.push(ProviderState {
            name: state.to_owned(),
            params: Map::new(),
        });
    }
    let request = raw
        .get("request")
        .ok_or_else(|| PactError::Format(format!("{description:?} has no request")))?;
    let response = raw
        .get("response")
        .ok_or_else(|| PactError::Format(format!("{description:?} has no response")))?;
    let headers = read_headers(request.get("headers"));
    let content_type = header(&headers, "content-type")
        .and_then(<[String]>::first)
        .cloned();
    let request = HttpRequest {
        method: request
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or("GET")
            .to_ascii_uppercase(),
        path: request
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or("/")
            .to_owned(),
        query: read_query(request.get("query")),
        body: read_body(request.get("body"), content_type.as_deref(), v4)?,
        headers,
        matching_rules: MatchingRules::from_json(
            request.get("matchingRules").unwrap_or(&Value::Null),
        )?,
        generators: Generators::from_json(request.get("generators").unwrap_or(&Value::Null)),
    };
    let headers = read_headers(response.get("headers"));
    let content_type = header(&headers, "content-type")
        .and_then(<[String]>::first)
        .cloned();
    let response = HttpResponse {
        status: response
            .get("status")
            .and_then(Value::as_u64)
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or(200),
        body: read_body(response.get("body"), content_type.as_deref(), v4)?,
        headers,
        matching_rules: MatchingRules::from_json(
            response.get("matchingRules").unwrap_or(&Value::Null),
        )?,
        generators: Generators::from_json(response.get("generators").unwrap_or(&Value::Null)),
    };
    Ok(Interaction {
        description,
        provider_states,
        request,
        response,
        pending: raw.get("pending").and_then(Value::as_bool).unwrap_or(false),
        comments: read_object(raw.get("comments")),
    })
}

fn read_object(value: Option<&Value>) -> Map<String, Value> {
    value
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

fn read_headers(value: Option<&Value>) -> Headers {
    let mut out = Headers::new();
    if let Some(object) = value.and_then(Value::as_object) {
        for (name, values) in object {
            let values = match values {
                // V2/V3: one string, values separated by commas.
                Value::String(s) => vec![s.clone()],
                Value::Array(list) => list
                    .iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                    .collect(),
                other => vec![other.to_string()],
            };
            out.insert(name.clone(), values);
        }
    }
    out
}

/// Parses a query string (`a=1&b=x%20y`) into its parameters.
pub fn parse_query(query: &str) -> BTreeMap<String, Vec<String>> {
    read_query(Some(&Value::from(query)))
}

fn read_query(value: Option<&Value>) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    match value {
        Some(Value::Object(object)) => {
            for (name, values) in object {
                let values = match values {
                    Value::Array(list) => list
                        .iter()
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                        .collect(),
                    Value::String(s) => vec![s.clone()],
                    other => vec![other.to_string()],
                };
                out.insert(name.clone(), values);
            }
        }
        // V2: a query string.
        Some(Value::String(query)) => {
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                out.entry(decode_component(name))
                    .or_insert_with(Vec::new)
                    .push(decode_component(value));
            }
        }
        _ => {}
    }
    out
}

fn decode_component(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_body(
    value: Option<&Value>,
    content_type: Option<&str>,
    v4: bool,
) -> Result<Option<Body>, PactError> {
    let Some(value) = value else {
        return Ok(None);
    };
    if v4 {
        if value.is_null() {
            return Ok(None);
        }
        let content_type = value
            .get("contentType")
            .and_then(Value::as_str)
            .or(content_type);
        let content = value.get("content").unwrap_or(&Value::Null);
        let encoded = value.get("encoded").unwrap_or(&Value::Bool(false));
        return Ok(match (encoded, content) {
            (Value::String(e), Value::String(text)) if e.eq_ignore_ascii_case("base64") => {
                let bytes = BASE64
                    .decode(text)
                    .map_err(|err| PactError::Format(format!("a base64 body: {err}")))?;
                Body::from_bytes(&bytes, content_type)
            }
            (Value::String(e), Value::String(text)) if e.eq_ignore_ascii_case("json") => {
                Some(Body::Json(serde_json::from_str(text).map_err(|err| {
                    PactError::Format(format!("a JSON-encoded body: {err}"))
                })?))
            }
            (_, Value::String(text)) if !content_type.is_some_and(is_json_type) => {
                Some(Body::Text(text.clone()))
            }
            (_, content) => Some(Body::Json(content.clone())),
        });
    }
    // V2/V3: the body itself; a string is text unless the content type is JSON.
    Ok(match value {
        Value::String(text) if !content_type.is_some_and(is_json_type) => {
            Some(Body::Text(text.clone()))
        }
        other => Some(Body::Json(other.clone())),
    })
}

fn write_body(body: Option<&Body>, content_type: Option<&str>) -> Option<Value> {
    let body = body?;
    Some(match body {
        Body::Json(content) => json!({
            "contentType": content_type.unwrap_or("application/json"),
            "encoded": false,
            "content": content,
        }),
        Body::Text(text) => json!({
            "contentType": content_type.unwrap_or("text/plain"),
            "encoded": false,
            "content": text,
        }),
        Body::Bytes(bytes) => json!({
            "contentType": content_type.unwrap_or("application/octet-stream"),
            "encoded": "base64",
            "content": BASE64.encode(bytes),
        }),
    })
}

fn write_interaction(interaction: &Interaction) -> Value {
    let request = &interaction.request;
    let response = &interaction.response;
    let mut req = Map::new();
    req.insert("method".into(), request.method.clone().into());
    req.insert("path".into(), request.path.clone().into());
    if !request.query.is_empty() {
        req.insert("query".into(), json!(request.query));
    }
    if !request.headers.is_empty() {
        req.insert("headers".into(), json!(request.headers));
    }
    if let Some(body) = write_body(request.body.as_ref(), request.content_type()) {
        req.insert("body".into(), body);
    }
    if !request.matching_rules.is_empty() {
        req.insert("matchingRules".into(), request.matching_rules.to_json());
    }
    if !request.generators.is_empty() {
        req.insert("generators".into(), request.generators.to_json());
    }
    let mut res = Map::new();
    res.insert("status".into(), response.status.into());
    if !response.headers.is_empty() {
        res.insert("headers".into(), json!(response.headers));
    }
    if let Some(body) = write_body(response.body.as_ref(), response.content_type()) {
        res.insert("body".into(), body);
    }
    if !response.matching_rules.is_empty() {
        res.insert("matchingRules".into(), response.matching_rules.to_json());
    }
    if !response.generators.is_empty() {
        res.insert("generators".into(), response.generators.to_json());
    }
    let mut out = Map::new();
    out.insert("type".into(), "Synchronous/HTTP".into());
    out.insert("description".into(), interaction.description.clone().into());
    if !interaction.provider_states.is_empty() {
        out.insert(
            "providerStates".into(),
            interaction
                .provider_states
                .iter()
                .map(|s| {
                    if s.params.is_empty() {
                        json!({"name": s.name})
                    } else {
                        json!({"name": s.name, "params": s.params})
                    }
                })
                .collect(),
        );
    }
    out.insert("request".into(), Value::Object(req));
    out.insert("response".into(), Value::Object(res));
    out.insert("pending".into(), interaction.pending.into());
    if !interaction.comments.is_empty() {
        out.insert(
            "comments".into(),
            Value::Object(interaction.comments.clone()),
        );
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v3_pact_reads_and_writes_back_as_v4() {
        let v3 = json!({
            "consumer": {"name": "web"},
            "provider": {"name": "catalog"},
            "interactions": [{
                "description": "a product",
                "providerStates": [{"name": "product 1 exists", "params": {"id": 1}}],
                "request": {"method": "get", "path": "/catalog/products/1",
                            "query": {"x": ["a b"]}, "headers": {"Accept": "application/json"}},
                "response": {"status": 200, "headers": {"Content-Type": "application/json"},
                             "body": {"id": 1, "name": "Lamp"},
                             "matchingRules": {"body": {"$.id": {"matchers": [{"match": "integer"}]}}}}
            }],
            "metadata": {"pactSpecification": {"version": "3.0.0"}}
        });
        let pact = Pact::from_json(&v3).unwrap();
        assert_eq!(pact.specification, "3.0.0");
        let i = &pact.interactions[0];
        assert_eq!(i.request.method, "GET");
        assert_eq!(i.request.path_and_query(), "/catalog/products/1?x=a%20b");
        assert_eq!(
            i.response.body,
            Some(Body::Json(json!({"id": 1, "name": "Lamp"})))
        );
        let v4 = pact.to_v4_json();
        assert_eq!(v4["metadata"]["pactSpecification"]["version"], "4.0");
        assert_eq!(v4["interactions"][0]["type"], "Synchronous/HTTP");
        assert_eq!(
            v4["interactions"][0]["response"]["body"]["content"]["name"],
            "Lamp"
        );
        assert_eq!(
            v4["interactions"][0]["request"]["headers"]["Accept"],
            json!(["application/json"])
        );
        let again = Pact::from_json(&v4).unwrap();
        assert_eq!(again.interactions[0].response.body, i.response.body);
        assert!(again.interactions[0]
            .response
            .matching_rules
            .category("body")
            .is_some());
    }

    #[test]
    fn v2_query_strings_and_message_pacts() {
        assert_eq!(
            read_query(Some(&json!("a=1&b=x%20y&a=2")))["a"],
            vec!["1".to_owned(), "2".to_owned()]
        );
        assert_eq!(
            read_query(Some(&json!("b=x%20y+z")))["b"],
            vec!["x y z".to_owned()]
        );
        let messages = json!({"consumer": {"name": "a"}, "provider": {"name": "b"},
            "interactions": [{"type": "Asynchronous/Messages", "description": "m"}],
            "metadata": {"pactSpecification": {"version": "4.0"}}});
        let err = Pact::from_json(&messages).unwrap_err().to_string();
        assert!(err.contains("not supported"), "{err}");
        assert!(Pact::from_json(&json!({"consumer": {"name": "a"}})).is_err());
    }

    #[test]
    fn binary_bodies_round_trip_as_base64() {
        let body = Body::from_bytes(&[0xff, 0x00, 0x10], Some("application/octet-stream"));
        let written = write_body(body.as_ref(), Some("application/octet-stream")).unwrap();
        assert_eq!(written["encoded"], "base64");
        let read = read_body(Some(&written), None, true).unwrap();
        assert_eq!(read, body);
    }
}
