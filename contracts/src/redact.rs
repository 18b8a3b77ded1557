//! Redaction of captured traffic before it is kept anywhere: header values and JSON fields that
//! carry secrets or personal data (tokens, emails, card data) are replaced with `[redacted]`.

use serde_json::Value;

/// What replaces a redacted value.
pub const REDACTED: &str = "[redacted]";

/// Headers redacted whatever the configuration says.
pub const DEFAULT_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-auth-token",
];

/// JSON keys redacted at any depth whatever the configuration says.
pub const DEFAULT_FIELDS: &[&str] = &[
    "password",
    "token",
    "access_token",
    "refresh_token",
    "secret",
    "email",
    "card_number",
    "cvv",
    "cvc",
];

/// Which header values and JSON fields to redact.
#[derive(Debug, Clone)]
pub struct Redactor {
    headers: Vec<String>,
    keys: Vec<String>,
    pointers: Vec<Vec<String>>,
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor::new(&[], &[])
    }
}

impl Redactor {
    /// The defaults plus `headers` (names) and `fields`: a JSON pointer (`/card/number`, with
    /// `*` for any key or index) or a bare key name redacted at any depth (`iban`).
    pub fn new(headers: &[String], fields: &[String]) -> Self {
        let mut keys: Vec<String> = DEFAULT_FIELDS.iter().map(|k| (*k).to_owned()).collect();
        let mut pointers = Vec::new();
        for field in fields {
            match field.strip_prefix('/') {
                Some(pointer) => pointers.push(
                    pointer
                        .split('/')
                        .map(|s| s.replace("~1", "/").replace("~0", "~"))
                        .collect(),
                ),
                None => keys.push(field.to_ascii_lowercase()),
            }
        }
        Redactor {
            headers: DEFAULT_HEADERS
                .iter()
                .map(|h| (*h).to_owned())
                .chain(headers.iter().map(|h| h.to_ascii_lowercase()))
                .collect(),
            keys,
            pointers,
        }
    }

    /// Whether header `name`'s value is redacted.
    pub fn redacts_header(&self, name: &str) -> bool {
        self.headers.iter().any(|h| h.eq_ignore_ascii_case(name))
    }

    /// Redacts the values of the redacted headers.
    pub fn headers(&self, headers: &mut [(String, String)]) {
        for (name, value) in headers {
            if self.redacts_header(name) {
                *value = REDACTED.to_owned();
            }
        }
    }

    /// Redacts the redacted fields of a JSON document in place.
    pub fn json(&self, value: &mut Value) {
        self.walk(&mut Vec::new(), value);
    }

    fn walk(&self, path: &mut Vec<String>, value: &mut Value) {
        if self.pointed(path) {
            *value = Value::from(REDACTED);
            return;
        }
        match value {
            Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    path.push(key.clone());
                    if self.keys.iter().any(|k| k.eq_ignore_ascii_case(key)) {
                        *child = Value::from(REDACTED);
                    } else {
                        self.walk(path, child);
                    }
                    path.pop();
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter_mut().enumerate() {
                    path.push(i.to_string());
                    self.walk(path, child);
                    path.pop();
                }
            }
            _ => {}
        }
    }

    fn pointed(&self, path: &[String]) -> bool {
        self.pointers
            .iter()
            .any(|p| p.len() == path.len() && p.iter().zip(path).all(|(r, s)| r == "*" || r == s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_and_configured_fields_are_redacted() {
        let redactor = Redactor::new(
            &["X-Session".to_owned()],
            &[
                "/card/number".to_owned(),
                "iban".to_owned(),
                "/items/*/note".to_owned(),
            ],
        );
        let mut body = json!({
            "email": "ana@example.com",
            "name": "Ana",
            "card": {"number": "4111111111111111", "brand": "visa"},
            "payout": {"IBAN": "DE89370400440532013000"},
            "items": [{"note": "ring twice", "sku": "A"}],
            "auth": {"access_token": "abc"}
        });
        redactor.json(&mut body);
        assert_eq!(
            body,
            json!({
                "email": REDACTED,
                "name": "Ana",
                "card": {"number": REDACTED, "brand": "visa"},
                "payout": {"IBAN": REDACTED},
                "items": [{"note": REDACTED, "sku": "A"}],
                "auth": {"access_token": REDACTED}
            })
        );
        let mut headers = vec![
            ("authorization".to_owned(), "Bearer x".to_owned()),
            ("x-session".to_owned(), "s".to_owned()),
            ("accept".to_owned(), "application/json".to_owned()),
        ];
        redactor.headers(&mut headers);
        assert_eq!(headers[0].1, REDACTED);
        assert_eq!(headers[1].1, REDACTED);
        assert_eq!(headers[2].1, "application/json");
    }
}
