//! Picks the component for a request path, with Spin's precedence: an exact
//! route beats a wildcard, otherwise the most specific (longest) prefix wins.

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
}
