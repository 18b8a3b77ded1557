//! Route patterns and the route table: which carve-out owns a request.
//!
//! A pattern is a path of literal segments and `{param}` segments, optionally ending in `*`
//! (zero or more further segments): `/catalog/products`, `/catalog/products/{id}`,
//! `/catalog/*`. A route pairs a pattern with a method set (empty: every method).
//!
//! When several routes match a request, the most specific wins: comparing segment by segment from
//! the left, a literal beats a `{param}`, which beats `*`. Two routes are ambiguous when their
//! patterns are the same up to parameter names and their method sets overlap; the table refuses
//! them at load time, so the winner of a request never depends on declaration order.

use std::cmp::Ordering;
use std::fmt;

use http::Method;

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
}

/// A parsed path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    segments: Vec<Segment>,
    wildcard: bool,
}

/// Why a pattern or a table was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The pattern is malformed.
    #[error("invalid route pattern {pattern:?}: {reason}")]
    InvalidPattern {
        /// The pattern as written.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two routes would match the same requests with the same specificity.
    #[error("ambiguous routes: {first} and {second} match the same requests")]
    Ambiguous {
        /// The first route, as `METHODS pattern (carve-out)`.
        first: String,
        /// The second route.
        second: String,
    },
}

impl Pattern {
    /// Parses `/a/{b}/c` or `/a/*`.
    pub fn parse(text: &str) -> Result<Pattern, RouteError> {
        let invalid = |reason: &str| RouteError::InvalidPattern {
            pattern: text.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = text
            .strip_prefix('/')
            .ok_or_else(|| invalid("it must start with /"))?;
        let mut segments = Vec::new();
        let mut wildcard = false;
        if !rest.is_empty() {
            let parts: Vec<&str> = rest.split('/').collect();
            for (i, part) in parts.iter().enumerate() {
                if *part == "*" {
                    if i + 1 != parts.len() {
                        return Err(invalid("* may only end a pattern"));
                    }
                    wildcard = true;
                } else if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}'))
                {
                    if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                        return Err(invalid("a parameter is {name} with letters, digits or _"));
                    }
                    segments.push(Segment::Param);
                } else if part.contains(['{', '}', '*']) {
                    return Err(invalid("{, } and * are only allowed as whole segments"));
                } else if part.is_empty() && i + 1 != parts.len() {
                    return Err(invalid("empty segment (//)"));
                } else if *part == "." || *part == ".." {
                    return Err(invalid("dot segments are not allowed"));
                } else {
                    segments.push(Segment::Literal((*part).to_owned()));
                }
            }
        }
        Ok(Pattern {
            text: text.to_owned(),
            segments,
            wildcard,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn matches(&self, path: &[&str]) -> bool {
        if path.len() < self.segments.len() || (!self.wildcard && path.len() != self.segments.len())
        {
            return false;
        }
        self.segments
            .iter()
            .zip(path)
            .all(|(segment, part)| match segment {
                Segment::Literal(literal) => literal == part,
                Segment::Param => !part.is_empty(),
            })
    }

    /// Specificity order: less is more specific. Literal < param < wildcard, left to right.
    fn specificity(&self, other: &Pattern) -> Ordering {
        fn rank(p: &Pattern, i: usize) -> u8 {
            match p.segments.get(i) {
                Some(Segment::Literal(_)) => 0,
                Some(Segment::Param) => 1,
                None if p.wildcard => 2,
                None => 3,
            }
        }
        let len = self.segments.len().max(other.segments.len()) + 1;
        (0..len)
            .map(|i| rank(self, i).cmp(&rank(other, i)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }

    /// Whether both patterns are the same up to parameter names.
    fn same_shape(&self, other: &Pattern) -> bool {
        self.segments == other.segments && self.wildcard == other.wildcard
    }
}

/// A route: the methods and pattern one carve-out owns.
#[derive(Debug, Clone)]
pub struct Route {
    /// Methods this route applies to; empty means every method.
    pub methods: Vec<Method>,
    /// The path pattern.
    pub pattern: Pattern,
    /// Index of the owning carve-out in the configuration.
    pub carveout: usize,
    /// Name of the owning carve-out (for messages).
    pub carveout_name: String,
}

impl Route {
    fn allows(&self, method: &Method) -> bool {
        self.methods.is_empty() || self.methods.contains(method)
    }

    fn overlaps(&self, other: &Route) -> bool {
        self.methods.is_empty()
            || other.methods.is_empty()
            || self.methods.iter().any(|m| other.methods.contains(m))
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let methods = if self.methods.is_empty() {
            "*".to_owned()
        } else {
            self.methods
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(",")
        };
        write!(
            f,
            "{methods} {} ({})",
            self.pattern.as_str(),
            self.carveout_name
        )
    }
}

/// Every route of every carve-out, ordered most specific first.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// Builds the table, refusing ambiguous routes.
    pub fn new(mut routes: Vec<Route>) -> Result<RouteTable, RouteError> {
        for (i, a) in routes.iter().enumerate() {
            for b in &routes[i + 1..] {
                if a.pattern.same_shape(&b.pattern) && a.overlaps(b) {
                    return Err(RouteError::Ambiguous {
                        first: a.to_string(),
                        second: b.to_string(),
                    });
                }
            }
        }
        routes.sort_by(|a, b| a.pattern.specificity(&b.pattern));
        Ok(RouteTable { routes })
    }

    /// The most specific route for a request, if any.
    pub fn find(&self, method: &Method, path: &str) -> Option<&Route> {
        if self.routes.is_empty() {
            return None;
        }
        let path = path.strip_prefix('/').unwrap_or(path);
        let mut parts = [""; 32];
        let mut len = 0;
        let mut truncated = false;
        if !path.is_empty() {
            for part in path.split('/') {
                if len == parts.len() {
                    truncated = true;
                    break;
                }
                parts[len] = part;
                len += 1;
            }
        }
        // A trailing slash is an empty last segment: `/a/` is not `/a`, except to a wildcard.
        // A path deeper than 32 segments can only match a wildcard route.
        let parts = &parts[..len];
        self.routes.iter().find(|r| {
            r.allows(method) && (!truncated || r.pattern.wildcard) && r.pattern.matches(parts)
        })
    }

    /// Every route, most specific first.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(methods: &[&str], pattern: &str, carveout: usize) -> Route {
        Route {
            methods: methods.iter().map(|m| m.parse().unwrap()).collect(),
            pattern: Pattern::parse(pattern).unwrap(),
            carveout,
            carveout_name: format!("c{carveout}"),
        }
    }

    fn owner(table: &RouteTable, method: &str, path: &str) -> Option<String> {
        table
            .find(&method.parse().unwrap(), path)
            .map(|r| r.pattern.as_str().to_owned())
    }

    #[test]
    fn the_most_specific_route_wins() {
        let table = RouteTable::new(vec![
            route(&[], "/catalog/*", 0),
            route(&["GET"], "/catalog/products/{id}", 1),
            route(&["GET"], "/catalog/products/featured", 2),
            route(&["GET"], "/catalog/{kind}/special", 3),
        ])
        .unwrap();
        assert_eq!(
            owner(&table, "GET", "/catalog/products/7").as_deref(),
            Some("/catalog/products/{id}")
        );
        assert_eq!(
            owner(&table, "GET", "/catalog/products/featured").as_deref(),
            Some("/catalog/products/featured")
        );
        // Left to right: the literal `products` beats `{kind}`.
        assert_eq!(
            owner(&table, "GET", "/catalog/products/special").as_deref(),
            Some("/catalog/products/{id}")
        );
        assert_eq!(
            owner(&table, "GET", "/catalog/shoes/special").as_deref(),
            Some("/catalog/{kind}/special")
        );
        assert_eq!(
            owner(&table, "PUT", "/catalog/products/7").as_deref(),
            Some("/catalog/*")
        );
        assert_eq!(
            owner(&table, "GET", "/catalog").as_deref(),
            Some("/catalog/*")
        );
        assert_eq!(
            owner(&table, "GET", "/catalog/a/b/c/d").as_deref(),
            Some("/catalog/*")
        );
        assert_eq!(owner(&table, "GET", "/catalogue"), None);
        assert_eq!(owner(&table, "GET", "/orders/1"), None);
    }

    #[test]
    fn params_need_a_non_empty_segment_and_trailing_slashes_count() {
        let table = RouteTable::new(vec![
            route(&["GET"], "/items/{id}", 0),
            route(&["GET"], "/items", 1),
        ])
        .unwrap();
        assert_eq!(owner(&table, "GET", "/items/"), None);
        assert_eq!(owner(&table, "GET", "/items").as_deref(), Some("/items"));
        assert_eq!(owner(&table, "GET", "/items/1/").as_deref(), None);
    }

    #[test]
    fn ambiguous_routes_are_refused() {
        let err = RouteTable::new(vec![
            route(&["GET", "PUT"], "/p/{id}", 0),
            route(&["PUT"], "/p/{other}", 1),
        ])
        .unwrap_err();
        assert!(matches!(err, RouteError::Ambiguous { .. }), "{err}");
        assert!(err.to_string().contains("/p/{id}"), "{err}");
        assert!(RouteTable::new(vec![route(&[], "/p/*", 0), route(&["GET"], "/p/*", 1)]).is_err());
        // Different methods, or different shapes, are not ambiguous.
        assert!(RouteTable::new(vec![
            route(&["GET"], "/p/{id}", 0),
            route(&["PUT"], "/p/{id}", 1)
        ])
        .is_ok());
        assert!(RouteTable::new(vec![
            route(&["GET"], "/p/{id}", 0),
            route(&["GET"], "/p/x", 1)
        ])
        .is_ok());
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in [
            "catalog", "/a/*/b", "/a/{}", "/a/{b", "/a//b", "/a/x*", "/a/../b", "/a/{b-c}",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
        for good in ["/", "/*", "/a/", "/a/{b}/c", "/a/{b_1}/*"] {
            assert!(Pattern::parse(good).is_ok(), "{good}");
        }
    }
}
