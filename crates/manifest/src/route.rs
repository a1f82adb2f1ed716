//! HTTP route patterns as Spin writes them: `/exact`, `/users/:id`, `/static/...`.
//!
//! A pattern is a list of segments, each a literal or a `:name` capture, and an
//! optional trailing wildcard `/...` that matches any rest of the path (including
//! none). Precedence between patterns is decided by [`Specificity`].

use std::fmt;

/// One parsed route, normalised: leading `/` added, one trailing `/` dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    /// The route as the manifest wrote it (`spin-raw-component-route`).
    raw: String,
    segments: Vec<Segment>,
    trailing_wildcard: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Capture(String),
}

/// Why a route string is not a valid pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("a wildcard `...` must be the last segment")]
    WildcardNotLast,
    #[error("`*` is not a route wildcard: end the route with `/...`")]
    Star,
    #[error("a `:name` segment needs a name")]
    EmptyCapture,
    #[error("capture `:{0}` appears twice")]
    DuplicateCapture(String),
    #[error("capture `:{0}` must use only letters, digits, `-` and `_`")]
    InvalidCapture(String),
    #[error("empty segment `//`")]
    EmptySegment,
    #[error("routes under `/.well-known/spin/` are reserved")]
    Reserved,
}

/// What a path matched, borrowed from the pattern and the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch<'p> {
    /// `:name` captures in the order the pattern lists them.
    pub captures: Vec<(&'p str, &'p str)>,
    /// The part of the path matched by a trailing wildcard (`spin-path-info`):
    /// empty for exact routes, `/rest` or `/` for wildcard routes.
    pub path_info: &'p str,
}

/// Orders matching patterns: the larger wins.
///
/// Segment by segment, a literal beats a capture, a capture beats the end of an
/// exact route, and the end of an exact route beats a trailing wildcard. So
/// `/a` beats `/a/...`, `/a/b/...` beats `/a/...`, and `/a/b` beats `/a/:x`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Specificity(Vec<u8>);

impl RoutePattern {
    pub fn parse(route: &str) -> Result<Self, RouteError> {
        let absolute = if route.starts_with('/') { route.to_owned() } else { format!("/{route}") };
        let mut body = absolute.strip_suffix('/').unwrap_or(&absolute);
        let trailing_wildcard = match body.strip_suffix("/...") {
            Some(rest) => {
                body = rest;
                true
            }
            None if body == "..." => {
                body = "";
                true
            }
            None => false,
        };
        let mut segments: Vec<Segment> = Vec::new();
        if !body.is_empty() {
            for part in body[1..].split('/') {
                let segment = match part {
                    "" => return Err(RouteError::EmptySegment),
                    "..." => return Err(RouteError::WildcardNotLast),
                    _ if part.contains('*') => return Err(RouteError::Star),
                    _ => match part.strip_prefix(':') {
                        Some("") => return Err(RouteError::EmptyCapture),
                        Some(name) if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') => {
                            return Err(RouteError::InvalidCapture(name.to_owned()));
                        }
                        Some(name) => {
                            if segments.contains(&Segment::Capture(name.to_owned())) {
                                return Err(RouteError::DuplicateCapture(name.to_owned()));
                            }
                            Segment::Capture(name.to_owned())
                        }
                        None => Segment::Literal(part.to_owned()),
                    },
                };
                segments.push(segment);
            }
        }
        let pattern = RoutePattern { raw: route.to_owned(), segments, trailing_wildcard };
        if pattern.prefix().starts_with("/.well-known/spin/") || pattern.prefix() == "/.well-known/spin" {
            return Err(RouteError::Reserved);
        }
        Ok(pattern)
    }

    /// The route as written in the manifest.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    pub fn is_wildcard(&self) -> bool {
        self.trailing_wildcard
    }

    /// The normalised route without its trailing wildcard, `""` for the root
    /// wildcard (`spin-component-route`).
    pub fn prefix(&self) -> String {
        let mut out = String::new();
        for segment in &self.segments {
            out.push('/');
            match segment {
                Segment::Literal(text) => out.push_str(text),
                Segment::Capture(name) => {
                    out.push(':');
                    out.push_str(name);
                }
            }
        }
        out
    }

    /// The normalised route (`spin-matched-route`): `/a/:b/...`.
    pub fn normalized(&self) -> String {
        let prefix = self.prefix();
        match (self.trailing_wildcard, prefix.is_empty()) {
            (true, _) => format!("{prefix}/..."),
            (false, true) => "/".to_owned(),
            (false, false) => prefix,
        }
    }

    /// Two patterns are the same route when they match the same paths with the
    /// same precedence, whatever their captures are called.
    pub fn same_route_as(&self, other: &RoutePattern) -> bool {
        self.trailing_wildcard == other.trailing_wildcard
            && self.segments.len() == other.segments.len()
            && self.segments.iter().zip(&other.segments).all(|pair| match pair {
                (Segment::Literal(a), Segment::Literal(b)) => a == b,
                (Segment::Capture(_), Segment::Capture(_)) => true,
                _ => false,
            })
    }

    pub fn specificity(&self) -> Specificity {
        let mut rank: Vec<u8> = self
            .segments
            .iter()
            .map(|segment| match segment {
                Segment::Literal(_) => 3,
                Segment::Capture(_) => 2,
            })
            .collect();
        rank.push(if self.trailing_wildcard { 0 } else { 1 });
        Specificity(rank)
    }

    /// Matches a request path (no query). An exact route also matches the path
    /// with one trailing `/`.
    pub fn matches<'p>(&'p self, path: &'p str) -> Option<RouteMatch<'p>> {
        let mut rest = path;
        let mut captures = Vec::new();
        for segment in &self.segments {
            let after_slash = rest.strip_prefix('/')?;
            let end = after_slash.find('/').unwrap_or(after_slash.len());
            let (part, tail) = after_slash.split_at(end);
            match segment {
                Segment::Literal(text) if text == part => {}
                Segment::Literal(_) => return None,
                Segment::Capture(_) if part.is_empty() => return None,
                Segment::Capture(name) => captures.push((name.as_str(), part)),
            }
            rest = tail;
        }
        if self.trailing_wildcard {
            return Some(RouteMatch { captures, path_info: rest });
        }
        match rest {
            "" | "/" => Some(RouteMatch { captures, path_info: "" }),
            _ => None,
        }
    }
}

impl fmt::Display for RoutePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.normalized())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(route: &str) -> RoutePattern {
        RoutePattern::parse(route).unwrap()
    }

    #[test]
    fn exact_routes_match_with_or_without_one_trailing_slash() {
        let route = pattern("/hello");
        assert!(route.matches("/hello").is_some());
        assert!(route.matches("/hello/").is_some());
        assert!(route.matches("/hello/x").is_none());
        assert!(route.matches("/hellox").is_none());
        assert!(pattern("/").matches("/").is_some());
        assert!(pattern("/").matches("/a").is_none());
    }

    #[test]
    fn wildcard_path_info_is_the_rest_of_the_path() {
        let route = pattern("/static/...");
        assert_eq!(route.matches("/static").unwrap().path_info, "");
        assert_eq!(route.matches("/static/").unwrap().path_info, "/");
        assert_eq!(route.matches("/static/a/b.css").unwrap().path_info, "/a/b.css");
        assert!(route.matches("/staticx").is_none());
        assert_eq!(pattern("/...").matches("/").unwrap().path_info, "/");
        assert_eq!(pattern("/...").matches("/x/y").unwrap().path_info, "/x/y");
    }

    #[test]
    fn captures_take_one_non_empty_segment() {
        let route = pattern("/users/:id/posts/:post/...");
        let matched = route.matches("/users/42/posts/7/comments").unwrap();
        assert_eq!(matched.captures, vec![("id", "42"), ("post", "7")]);
        assert_eq!(matched.path_info, "/comments");
        assert!(route.matches("/users//posts/7").is_none());
    }

    #[test]
    fn normalisation_and_headers_forms() {
        let route = pattern("api/:v/");
        assert_eq!(route.raw(), "api/:v/");
        assert_eq!(route.normalized(), "/api/:v");
        let wildcard = pattern("/api/...");
        assert_eq!(wildcard.prefix(), "/api");
        assert_eq!(wildcard.normalized(), "/api/...");
        assert_eq!(pattern("/...").prefix(), "");
        assert_eq!(pattern("/").normalized(), "/");
    }

    #[test]
    fn precedence_exact_then_longest_literal_prefix() {
        let exact = pattern("/a").specificity();
        let wildcard = pattern("/a/...").specificity();
        let root = pattern("/...").specificity();
        let deeper = pattern("/a/b/...").specificity();
        let capture = pattern("/a/:x").specificity();
        let literal = pattern("/a/b").specificity();
        assert!(exact > wildcard);
        assert!(wildcard > root);
        assert!(deeper > wildcard);
        assert!(literal > capture);
        assert!(capture > wildcard);
        assert!(pattern("/").specificity() > root);
    }

    #[test]
    fn invalid_routes_say_why() {
        assert_eq!(RoutePattern::parse("/a/.../b"), Err(RouteError::WildcardNotLast));
        assert_eq!(RoutePattern::parse("/a/*"), Err(RouteError::Star));
        assert_eq!(RoutePattern::parse("/a/:"), Err(RouteError::EmptyCapture));
        assert_eq!(RoutePattern::parse("/a/:x/:x"), Err(RouteError::DuplicateCapture("x".into())));
        assert_eq!(RoutePattern::parse("/a//b"), Err(RouteError::EmptySegment));
        assert_eq!(RoutePattern::parse("/.well-known/spin/x"), Err(RouteError::Reserved));
    }

    #[test]
    fn same_route_ignores_capture_names_and_trailing_slash() {
        assert!(pattern("/a/:x").same_route_as(&pattern("/a/:y/")));
        assert!(!pattern("/a/:x").same_route_as(&pattern("/a/x")));
        assert!(!pattern("/a").same_route_as(&pattern("/a/...")));
    }
}
