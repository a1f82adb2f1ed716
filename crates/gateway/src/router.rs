//! Picks the component for a request path, with Spin's precedence: an exact
//! route beats a wildcard, otherwise the most specific (longest) prefix wins.

use std::borrow::Cow;

use dormouse_manifest::model::{App, Route, Target};
use dormouse_manifest::{RouteMatch, RoutePattern};

/// One public route and the values the Spin request headers need.
#[derive(Debug)]
pub struct RouteEntry {
    pub pattern: RoutePattern,
    /// Where requests go: a slot in the gateway's component or service table.
    pub target: Slot,
    /// The component or service id.
    pub target_id: String,
    /// `spin-matched-route`: the normalised route.
    pub matched_route: String,
    /// `spin-component-route`: the route as written, without a trailing `/...`.
    pub component_route: String,
}

/// The path with its dot segments resolved (RFC 3986 §5.2.4), `%2e` counted
/// as `.`, as the router and the app must both see it; `None` when it has
/// none (the common case, which costs one scan). A `..` above the root stays
/// at the root. Slashes are kept as they are: `//` is a distinct path.
pub fn normalize_path(path: &str) -> Option<Cow<'_, str>> {
    let is_dot = |segment: &str| segment == "." || segment.eq_ignore_ascii_case("%2e");
    let is_dot_dot =
        |segment: &str| matches!(segment.len(), 2 | 4 | 6) && segment.to_ascii_lowercase().replace("%2e", ".") == "..";
    if !path.split('/').any(|segment| is_dot(segment) || is_dot_dot(segment)) {
        return None;
    }
    let mut output: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let last = segments.len() - 1;
    for (index, segment) in segments.into_iter().enumerate() {
        if is_dot(segment) {
            // `/a/.` is the directory `/a/`.
            if index == last {
                output.push("");
            }
        } else if is_dot_dot(segment) {
            output.pop();
            if index == last {
                output.push("");
            }
        } else {
            output.push(segment);
        }
    }
    Some(Cow::Owned(format!("/{}", output.join("/"))))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Component(usize),
    Service(usize),
}

#[derive(Debug, Default)]
pub struct Router {
    /// Most specific first: the first entry that matches a path is its route.
    entries: Vec<RouteEntry>,
}

impl Router {
    /// Builds the router for `app`'s public routes; `slot_of` maps a
    /// trigger's target to its slot in the gateway's tables.
    pub fn new(app: &App, slot_of: impl Fn(&Target) -> Slot) -> Router {
        let mut entries: Vec<RouteEntry> = app
            .http_triggers
            .iter()
            .filter_map(|trigger| match &trigger.route {
                Route::Public(pattern) => Some(RouteEntry {
                    target: slot_of(&trigger.target),
                    target_id: trigger.target.id().to_owned(),
                    matched_route: pattern.normalized(),
                    component_route: pattern.raw().strip_suffix("/...").unwrap_or(pattern.raw()).to_owned(),
                    pattern: pattern.clone(),
                }),
                Route::Private => None,
            })
            .collect();
        // Stable: equally specific routes cannot both match one path (the
        // manifest rejects duplicates), so order among them does not matter.
        entries.sort_by_key(|entry| std::cmp::Reverse(entry.pattern.specificity()));
        Router { entries }
    }

    pub fn route<'r>(&'r self, path: &'r str) -> Option<(&'r RouteEntry, RouteMatch<'r>)> {
        self.entries.iter().find_map(|entry| entry.pattern.matches(path).map(|matched| (entry, matched)))
    }

    pub fn entries(&self) -> &[RouteEntry] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn router(routes: &[(&str, &str)]) -> Router {
        let mut text = String::from("spin_manifest_version = 2\n[application]\nname = \"t\"\n");
        for (route, component) in routes {
            text.push_str(&format!("[[trigger.http]]\nroute = \"{route}\"\ncomponent = \"{component}\"\n"));
        }
        let mut ids: Vec<&str> = routes.iter().map(|(_, c)| *c).collect();
        ids.dedup();
        for id in &ids {
            text.push_str(&format!("[component.{id}]\nsource = \"{id}.wasm\"\n"));
        }
        let app = dormouse_manifest::parse(&text, Path::new("spin.toml"), Path::new("/")).unwrap();
        Router::new(&app, |_| Slot::Component(0))
    }

    fn target<'a>(router: &'a Router, path: &'a str) -> Option<&'a str> {
        router.route(path).map(|(entry, _)| entry.target_id.as_str())
    }

    #[test]
    fn exact_beats_wildcard_and_longest_prefix_wins_in_any_order() {
        for order in [[0, 1, 2, 3], [3, 2, 1, 0]] {
            let all = [("/...", "root"), ("/one", "one-exact"), ("/one/...", "one-wild"), ("/one/two/...", "two-wild")];
            let routes: Vec<_> = order.iter().map(|&i| all[i]).collect();
            let router = router(&routes);
            assert_eq!(target(&router, "/one"), Some("one-exact"));
            assert_eq!(target(&router, "/one/x"), Some("one-wild"));
            assert_eq!(target(&router, "/one/two"), Some("two-wild"));
            assert_eq!(target(&router, "/one/two/three"), Some("two-wild"));
            assert_eq!(target(&router, "/other"), Some("root"));
            assert_eq!(target(&router, "/"), Some("root"));
        }
    }

    #[test]
    fn literal_segments_beat_captures() {
        let router = router(&[("/users/:id", "by-id"), ("/users/me", "me"), ("/users/...", "users")]);
        assert_eq!(target(&router, "/users/me"), Some("me"));
        assert_eq!(target(&router, "/users/42"), Some("by-id"));
        assert_eq!(target(&router, "/users/42/x"), Some("users"));
    }

    #[test]
    fn no_route_is_none() {
        let router = router(&[("/a", "a")]);
        assert_eq!(target(&router, "/b"), None);
        assert_eq!(target(&router, "/a/b"), None);
    }

    #[test]
    fn header_values_follow_spin() {
        let router = router(&[("/foo/:userid/...", "c")]);
        let (entry, matched) = router.route("/foo/42/bar").unwrap();
        assert_eq!(entry.matched_route, "/foo/:userid/...");
        assert_eq!(entry.component_route, "/foo/:userid");
        assert_eq!(matched.path_info, "/bar");
        assert_eq!(matched.captures, vec![("userid", "42")]);
    }

    #[test]
    fn dot_segments_are_resolved_before_routing() {
        let cases = [
            ("/a/b", None),
            ("/a/../b", Some("/b")),
            ("/a/./b", Some("/a/b")),
            ("/a/%2e%2E/admin", Some("/admin")),
            ("/a/.%2e/admin", Some("/admin")),
            ("/../../etc/passwd", Some("/etc/passwd")),
            ("/a/b/..", Some("/a/")),
            ("/a/.", Some("/a/")),
            ("/a/..b/c", None),
            ("//a/../b", Some("//b")),
        ];
        for (path, expected) in cases {
            assert_eq!(normalize_path(path).as_deref(), expected, "{path}");
        }
        let router = router(&[("/public/...", "public"), ("/admin/...", "admin")]);
        let normalized = normalize_path("/public/../admin/x").unwrap();
        assert_eq!(target(&router, &normalized), Some("admin"), "routed as the app will see it");
    }

    mod properties {
        use super::super::normalize_path;
        use proptest::prelude::*;

        fn segment() -> impl Strategy<Value = String> {
            prop_oneof![
                Just(".".to_owned()),
                Just("..".to_owned()),
                Just("%2e".to_owned()),
                Just("%2E%2e".to_owned()),
                Just(String::new()),
                "[a-z0-9%.]{1,6}",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            #[test]
            fn a_normalized_path_has_no_dot_segments_and_stays_rooted(segments in prop::collection::vec(segment(), 0..12)) {
                let path = format!("/{}", segments.join("/"));
                let normalized = normalize_path(&path).map_or(path.clone(), |p| p.into_owned());
                prop_assert!(normalized.starts_with('/'));
                // Normalising twice changes nothing more.
                prop_assert_eq!(normalize_path(&normalized), None);
                for segment in normalized.split('/') {
                    let lower = segment.to_ascii_lowercase().replace("%2e", ".");
                    prop_assert!(lower != "." && lower != "..", "{} left in {}", segment, normalized);
                }
            }
        }
    }
}
