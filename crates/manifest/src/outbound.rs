//! `allowed_outbound_hosts`: which network destinations a component may reach,
//! in Spin's syntax.
//!
//! An entry is `<scheme>://<host>[:<port>]`:
//! - scheme: a name (`http`, `https`, `redis`, …) or `*`;
//! - host: a name, `*.domain` (any subdomain), `*`, an IP address or network
//!   (`10.0.0.0/8`), `self` (the app itself, also spelled `self.alt`), or
//!   `<component>.spin.internal` (a component of the app, reached in-process);
//! - port: a number, `*`, or a range `a..b` (end excluded, as in Spin); when
//!   omitted, the scheme's well-known port (there is none for `*`).
//!
//! Nothing is allowed unless an entry allows it.

use std::net::IpAddr;

use ipnet::IpNet;

/// The host name a component uses to reach its own app without a socket.
pub const SELF_HOST: &str = "self.alt";

/// The domain under which each component of the app answers in-process
/// (`http://<component>.spin.internal`).
pub const SERVICE_CHAINING_DOMAIN: &str = "spin.internal";

/// A component's parsed `allowed_outbound_hosts`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts {
    entries: Vec<AllowedHost>,
}

/// One entry of `allowed_outbound_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    /// `None` stands for `*`.
    scheme: Option<String>,
    host: HostPattern,
    port: PortPattern,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    /// `*.example.com`, kept as `.example.com`.
    Subdomain(String),
    Name(String),
    Network(IpNet),
    /// The app's own routes.
    App,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortPattern {
    Any,
    One(u16),
    /// Start included, end excluded.
    Range(u16, u16),
}

impl AllowedHosts {
    /// Parses every entry; the error names the first bad one.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<AllowedHosts, String> {
        let entries = entries.iter().map(|entry| AllowedHost::parse(entry.as_ref())).collect::<Result<_, _>>()?;
        Ok(AllowedHosts { entries })
    }

    /// Whether a request to `scheme://host:port` may go out. `port` is `None`
    /// when the URL gives none (the scheme's well-known port applies).
    pub fn allows(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        self.entries.iter().any(|entry| entry.allows(scheme, host, port))
    }

    /// Whether a request to the app itself (`http://self.alt/...`) is allowed:
    /// an entry with host `self` (or `*`) and a matching scheme.
    pub fn allows_app(&self, scheme: &str) -> bool {
        self.entries
            .iter()
            .any(|entry| matches!(entry.host, HostPattern::App | HostPattern::Any) && entry.allows_scheme(scheme))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl AllowedHost {
    pub fn parse(text: &str) -> Result<AllowedHost, String> {
        let entry = text.trim();
        if entry == "insecure:allow-all" {
            return Err("`insecure:allow-all` is Spin 1 syntax: write `*://*:*` to allow every destination".to_owned());
        }
        let Some((scheme, rest)) = entry.split_once("://") else {
            return Err(format!(
                "allowed host `{entry}` has no scheme: write `<scheme>://<host>[:<port>]`, e.g. `https://example.com`"
            ));
        };
        let scheme = match scheme {
            "*" => None,
            name if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) => {
                Some(name.to_ascii_lowercase())
            }
            _ => return Err(format!("allowed host `{entry}` has an invalid scheme `{scheme}`")),
        };
        // A trailing `/` is tolerated; a path is not.
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = split_host_port(rest);
        if host.contains('/') && host.parse::<IpNet>().is_err() {
            return Err(format!("allowed host `{entry}` has a path: only scheme, host and port are allowed"));
        }
        let host = parse_host(host).map_err(|why| format!("allowed host `{entry}`: {why}"))?;
        let port = match port {
            None => match scheme.as_deref().and_then(well_known_port) {
                Some(port) => PortPattern::One(port),
                None if matches!(host, HostPattern::App) => PortPattern::Any,
                None => {
                    return Err(format!(
                        "allowed host `{entry}` needs a port: its scheme has no well-known port (write e.g. `:8080` or `:*`)"
                    ));
                }
            },
            Some(port) => parse_port(port).map_err(|why| format!("allowed host `{entry}`: {why}"))?,
        };
        Ok(AllowedHost { scheme, host, port })
    }

    fn allows_scheme(&self, scheme: &str) -> bool {
        self.scheme.as_deref().is_none_or(|allowed| allowed.eq_ignore_ascii_case(scheme))
    }

    fn allows(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        if !self.allows_scheme(scheme) {
            return false;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host_allowed = match &self.host {
            HostPattern::Any => true,
            HostPattern::Subdomain(suffix) => {
                host.len() > suffix.len() && host.to_ascii_lowercase().ends_with(suffix.as_str())
            }
            HostPattern::Name(name) => match (name.parse::<IpAddr>(), host.parse::<IpAddr>()) {
                (Ok(allowed), Ok(requested)) => allowed == requested,
                _ => name.eq_ignore_ascii_case(host),
            },
            HostPattern::Network(network) => host.parse::<IpAddr>().is_ok_and(|ip| network.contains(&ip)),
            // The app is reached by its own host name, never by a network address.
            HostPattern::App => false,
        };
        if !host_allowed {
            return false;
        }
        let Some(port) = port.or_else(|| well_known_port(&scheme.to_ascii_lowercase())) else {
            return matches!(self.port, PortPattern::Any);
        };
        match self.port {
            PortPattern::Any => true,
            PortPattern::One(allowed) => allowed == port,
            PortPattern::Range(start, end) => (start..end).contains(&port),
        }
    }
}

/// Splits `host[:port]`, minding bracketed IPv6 addresses.
fn split_host_port(text: &str) -> (&str, Option<&str>) {
    if let Some(rest) = text.strip_prefix('[') {
        if let Some((address, after)) = rest.split_once(']') {
            return (address, after.strip_prefix(':'));
        }
        return (text, None);
    }
    // An unbracketed IPv6 address or network has several colons and no port.
    if text.matches(':').count() > 1 {
        return (text, None);
    }
    match text.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    }
}

fn parse_host(host: &str) -> Result<HostPattern, String> {
    match host {
        "" => Err("the host is empty".to_owned()),
        "*" => Ok(HostPattern::Any),
        "self" | SELF_HOST => Ok(HostPattern::App),
        _ => {
            if let Ok(network) = host.parse::<IpNet>() {
                return Ok(HostPattern::Network(network.trunc()));
            }
            if host.parse::<IpAddr>().is_ok() {
                return Ok(HostPattern::Name(host.to_owned()));
            }
            if let Some(domain) = host.strip_prefix("*.") {
                if domain.is_empty() || domain.contains('*') {
                    return Err(format!(
                        "`{host}`: a wildcard may only stand for the leftmost labels (`*.example.com`)"
                    ));
                }
                return Ok(HostPattern::Subdomain(format!(".{}", domain.to_ascii_lowercase())));
            }
            if host.contains('*') {
                return Err(format!("`{host}`: a wildcard may only stand for the leftmost labels (`*.example.com`)"));
            }
            if !host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_') {
                return Err(format!("`{host}` is not a host name"));
            }
            Ok(HostPattern::Name(host.to_ascii_lowercase()))
        }
    }
}

fn parse_port(port: &str) -> Result<PortPattern, String> {
    if port == "*" {
        return Ok(PortPattern::Any);
    }
    let number = |text: &str| text.parse::<u16>().map_err(|_| format!("port `{text}` is not a number from 0 to 65535"));
    match port.split_once("..") {
        Some((start, end)) => {
            let (start, end) = (number(start)?, number(end)?);
            if start >= end {
                return Err(format!(
                    "port range `{port}` is empty: the end is excluded, so it must be above the start"
                ));
            }
            Ok(PortPattern::Range(start, end))
        }
        None => Ok(PortPattern::One(number(port)?)),
    }
}

/// Ports Spin assumes when an entry or a URL names none.
fn well_known_port(scheme: &str) -> Option<u16> {
    Some(match scheme {
        "http" => 80,
        "https" => 443,
        "redis" => 6379,
        "postgres" => 5432,
        "mysql" => 3306,
        "mqtt" => 1883,
        _ => return None,
    })
}

/// The component a service-chaining host (`<component>.spin.internal`) names.
pub fn chained_component(host: &str) -> Option<&str> {
    let (component, domain) = host.split_once('.')?;
    (domain.eq_ignore_ascii_case(SERVICE_CHAINING_DOMAIN) && !component.is_empty()).then_some(component)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(entries: &[&str]) -> AllowedHosts {
        AllowedHosts::parse(entries).unwrap()
    }

    #[test]
    fn nothing_is_allowed_by_default() {
        let none = hosts(&[]);
        assert!(!none.allows("http", "example.com", None));
        assert!(!none.allows_app("http"));
    }

    #[test]
    fn an_omitted_port_means_the_schemes_own() {
        let allowed = hosts(&["https://example.com"]);
        assert!(allowed.allows("https", "example.com", None));
        assert!(allowed.allows("https", "example.com", Some(443)));
        assert!(allowed.allows("https", "EXAMPLE.com", Some(443)), "host names are case-insensitive");
        assert!(!allowed.allows("https", "example.com", Some(8443)));
        assert!(!allowed.allows("http", "example.com", None), "the scheme must match");
        assert!(!allowed.allows("https", "api.example.com", None));
    }

    #[test]
    fn wildcards_for_scheme_host_subdomain_and_port() {
        let allowed = hosts(&["*://*.example.com:*"]);
        assert!(allowed.allows("http", "a.example.com", Some(1)));
        assert!(allowed.allows("https", "a.b.example.com", None));
        assert!(!allowed.allows("https", "example.com", None), "`*.` needs a subdomain");
        assert!(!allowed.allows("https", "badexample.com", None));

        let everything = hosts(&["*://*:*"]);
        assert!(everything.allows("http", "127.0.0.1", Some(9)));
        assert!(everything.allows_app("https"));
    }

    #[test]
    fn port_ranges_exclude_their_end() {
        let allowed = hosts(&["http://127.0.0.1:8000..8002"]);
        assert!(allowed.allows("http", "127.0.0.1", Some(8000)));
        assert!(allowed.allows("http", "127.0.0.1", Some(8001)));
        assert!(!allowed.allows("http", "127.0.0.1", Some(8002)));
        assert!(!allowed.allows("http", "127.0.0.1", None));
    }

    #[test]
    fn addresses_and_networks() {
        let allowed = hosts(&["http://10.0.0.0/8:80", "http://[::1]:8080"]);
        assert!(allowed.allows("http", "10.1.2.3", None));
        assert!(!allowed.allows("http", "11.0.0.1", None));
        assert!(!allowed.allows("http", "ten.example", None));
        assert!(allowed.allows("http", "[::1]", Some(8080)));
        assert!(allowed.allows("http", "0:0::1", Some(8080)), "addresses compare as addresses");
    }

    #[test]
    fn self_allows_only_the_app() {
        let allowed = hosts(&["http://self"]);
        assert!(allowed.allows_app("http"));
        assert!(!allowed.allows_app("https"));
        assert!(!allowed.allows("http", "self", None), "`self` is not a host name on the network");
        assert!(hosts(&["https://self.alt"]).allows_app("https"));
    }

    #[test]
    fn service_chaining_hosts_name_a_component() {
        assert_eq!(chained_component("backend.spin.internal"), Some("backend"));
        assert_eq!(chained_component("backend.example.com"), None);
        let allowed = hosts(&["http://backend.spin.internal"]);
        assert!(allowed.allows("http", "backend.spin.internal", None));
        assert!(!allowed.allows("http", "other.spin.internal", None));
        assert!(hosts(&["http://*.spin.internal"]).allows("http", "other.spin.internal", None));
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        let error = |entry: &str| AllowedHost::parse(entry).unwrap_err();
        assert!(error("example.com").contains("has no scheme"), "{}", error("example.com"));
        assert!(error("insecure:allow-all").contains("*://*:*"));
        assert!(error("*://example.com").contains("needs a port"));
        assert!(error("http://example.com/api").contains("has a path"));
        assert!(error("http://ex*ample.com").contains("wildcard"));
        assert!(error("http://example.com:99999").contains("not a number"));
        assert!(error("http://example.com:90..80").contains("is empty"));
        assert!(AllowedHost::parse("http://example.com/").is_ok());
    }
}
