//! Property tests: whatever the input, the manifest parser, route patterns
//! and the allow-list parser never panic, and every manifest error says
//! where (file:line:column, inside the text). Bounded case counts keep the
//! test command quick.

use std::path::Path;

use dormouse_manifest::outbound::AllowedHost;
use dormouse_manifest::{AllowedHosts, ManifestError, RoutePattern};
use proptest::prelude::*;

const VALID: &str = r#"spin_manifest_version = 2
[application]
name = "shop"
[variables]
region = { default = "eu" }
[[trigger.http]]
route = "/api/:id/..."
component = "api"
[[trigger.http]]
route = "/legacy/..."
service = "legacy"
[component.api]
source = "api.wasm"
allowed_outbound_hosts = ["https://example.com", "http://{{ region }}.example.com:8080"]
key_value_stores = ["default"]
files = ["static/**", { source = "public", destination = "/www" }]
[component.api.variables]
where = "{{ region }}"
[service.legacy]
command = ["nginx", "-g", "daemon off;"]
scale_to_zero = { cooldown = "1s", standby = "pause" }
autoscale = { min = 0, max = 4, target_concurrency = 10 }
"#;

/// Checks that an error names the file and a line and column inside `text`.
fn assert_located(text: &str, result: Result<dormouse_manifest::App, ManifestError>) -> Result<(), TestCaseError> {
    match result {
        Ok(_) => Ok(()),
        Err(ManifestError::Invalid { path, line, column, message }) => {
            prop_assert_eq!(path, Path::new("spin.toml"));
            let lines = text.split('\n').count().max(1);
            prop_assert!((1..=lines).contains(&line), "line {} of {}: {}", line, lines, message);
            prop_assert!(column >= 1, "column {}: {}", column, message);
            prop_assert!(!message.is_empty());
            Ok(())
        }
        Err(other) => Err(TestCaseError::fail(format!("not a located error: {other}"))),
    }
}

fn parse(text: &str) -> Result<dormouse_manifest::App, ManifestError> {
    dormouse_manifest::parse(text, Path::new("spin.toml"), Path::new("/app"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn any_text_is_parsed_or_refused_with_its_place(text in "[\\[\\]=\"{}.,:/ a-z0-9_\\n-]{0,200}") {
        assert_located(&text, parse(&text))?;
    }

    #[test]
    fn a_damaged_manifest_is_refused_with_its_place(
        start in 0..VALID.len(),
        length in 0usize..40,
        junk in "[\\[\\]=\"{}.,:/ a-z0-9_\\n{}-]{0,20}",
    ) {
        let start = (0..=start).rev().find(|&i| VALID.is_char_boundary(i)).unwrap();
        let end = (start + length).min(VALID.len());
        let end = (end..=VALID.len()).find(|&i| VALID.is_char_boundary(i)).unwrap();
        let text = format!("{}{}{}", &VALID[..start], junk, &VALID[end..]);
        assert_located(&text, parse(&text))?;
    }

    #[test]
    fn route_patterns_never_panic_and_matches_are_suffixes(route in "[/a-z:.]{0,20}", path in "[/a-z.]{0,24}") {
        if let Ok(pattern) = RoutePattern::parse(&route)
            && let Some(matched) = pattern.matches(&path)
        {
            // `/` alone is what a wildcard route reports for its own prefix.
            prop_assert!(
                matched.path_info == "/" || path.ends_with(matched.path_info),
                "{} is not a suffix of {}", matched.path_info, path
            );
        }
    }

    #[test]
    fn allow_list_entries_never_panic(entry in "[a-z*:/.{}0-9\\[\\]-]{0,40}") {
        if let Ok(allowed) = AllowedHosts::parse(&[entry.as_str()]) {
            // Whatever was accepted can be asked about any destination.
            let _ = allowed.allows("https", "example.com", Some(443));
            let _ = allowed.allows("http", "localhost", None);
        }
    }

    #[test]
    fn well_formed_allow_list_entries_are_accepted_and_allow_what_they_say(
        scheme in prop_oneof![Just("http"), Just("https")],
        host in "[a-z]{1,10}(\\.[a-z]{1,10}){0,2}",
        port in 1u16..,
    ) {
        let entry = format!("{scheme}://{host}:{port}");
        let parsed = AllowedHost::parse(&entry);
        prop_assert!(parsed.is_ok(), "{} refused: {:?}", entry, parsed.err());
        let allowed = AllowedHosts::parse(&[entry.as_str()]).unwrap();
        prop_assert!(allowed.allows(scheme, &host, Some(port)));
        let other = format!("{}x", host);
        prop_assert!(!allowed.allows(scheme, &other, Some(port)));
    }
}

#[test]
fn the_valid_manifest_the_properties_start_from_is_valid() {
    parse(VALID).unwrap();
}
