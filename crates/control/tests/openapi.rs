//! `openapi.json` against the server: every documented operation is one the
//! server routes, and answers with a status the document lists for it; every
//! wire type has exactly the properties its schema names.

use std::collections::BTreeSet;
use std::sync::Arc;

use dormouse_control::Platform;
use dormouse_control::api::{
    AppInfo, DeployReply, ErrorBody, InstanceInfo, PolicyInfo, QuotaInfo, QuotaUsage, RouteInfo, ScaleInfo, ScaleInit,
};
use dormouse_control::client::{Client, Endpoint};
use dormouse_control::server::{self, ControlConfig, ControlListener, ROUTES};
use dormouse_gateway::{AppTable, Gateway, GatewayConfig};
use dormouse_supervisor::Processes;
use dormouse_wasm_host::{Host, HostConfig};
use serde_json::Value;

fn document() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json")).unwrap();
    serde_json::from_str(&text).expect("openapi.json is JSON")
}

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

fn documented_operations(document: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in METHODS {
            if item.get(method).is_some() {
                operations.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    operations
}

#[test]
fn the_document_lists_exactly_the_routes_the_server_has() {
    let routed: BTreeSet<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(documented_operations(&document()), routed);
}

/// The property names of schema `name`, and its required ones.
fn schema_keys(document: &Value, name: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let schema = &document["components"]["schemas"][name];
    let properties =
        schema["properties"].as_object().unwrap_or_else(|| panic!("schema {name}")).keys().cloned().collect();
    let required =
        schema["required"].as_array().into_iter().flatten().map(|v| v.as_str().unwrap().to_owned()).collect();
    (properties, required)
}

fn keys_of(value: &impl serde::Serialize) -> BTreeSet<String> {
    serde_json::to_value(value).unwrap().as_object().unwrap().keys().cloned().collect()
}

#[test]
fn every_wire_type_has_the_properties_its_schema_names() {
    let document = document();
    let route = RouteInfo { route: "/...".into(), target: "t".into(), kind: "component".into() };
    let app = AppInfo {
        name: "a".into(),
        id: "i".into(),
        version: 1,
        state: "standby".into(),
        url: "http://a.localhost:3000".into(),
        routes: vec![route.clone()],
        scale_to_zero: true,
        bundle: "b".into(),
        deployed_at: 0,
        in_flight: 0,
    };
    let instance = InstanceInfo {
        name: "web-1".into(),
        app: "a".into(),
        kind: "service".into(),
        state: "running".into(),
        boot_time_ms: Some(1.0),
        memory_bytes: Some(1),
        requests: 1,
        in_flight: 0,
        uptime_ms: Some(1.0),
        stop_reason: None,
        pid: Some(1),
        port: Some(1),
    };
    let reply = DeployReply { app: app.clone(), load_ms: 1.0, boot_ms: None, memory_bytes: 1 };
    let error = ErrorBody { message: "m".into() };
    let policy = PolicyInfo { name: "p".into(), metric: "cpu".into(), adjustment: "change".into(), steps: vec![] };
    let scale = ScaleInfo { min_size: 0, max_size: 1, warmup_ms: 0, cooldown_ms: 1000, policies: vec![policy.clone()] };
    let init = ScaleInit::default();
    let usage = QuotaUsage { used: 1, limit: None };
    let quotas = QuotaInfo {
        active_instances: usage,
        total_instances: usage,
        active_memory_bytes: usage,
        apps: usage,
        max_instances_per_service: 1000,
        scale_to_zero: true,
    };
    let cases: [(&str, BTreeSet<String>); 10] = [
        ("QuotaUsage", keys_of(&usage)),
        ("QuotaInfo", keys_of(&quotas)),
        ("PolicyInfo", keys_of(&policy)),
        ("ScaleInfo", keys_of(&scale)),
        ("ScaleInit", keys_of(&init)),
        ("RouteInfo", keys_of(&route)),
        ("AppInfo", keys_of(&app)),
        ("InstanceInfo", keys_of(&instance)),
        ("DeployReply", keys_of(&reply)),
        ("ErrorBody", keys_of(&error)),
    ];
    for (name, keys) in cases {
        let (properties, required) = schema_keys(&document, name);
        assert_eq!(keys, properties, "{name}: the wire type and the schema differ");
        assert!(required.is_subset(&keys), "{name}: requires {required:?}");
    }
}

/// Every documented operation, sent to a live server (the read-only platform
/// of `dormouse up`, with no app), answers with a status the document lists
/// for it, and every error body is an `ErrorBody`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_answers_as_documented() {
    let document = document();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let host = Host::new(HostConfig { max_instances: 4, ..HostConfig::default() }).unwrap();
    let gateway = Gateway::new(host, GatewayConfig::default(), AppTable::default());
    let processes = Processes::new(None, false, None);
    let platform = Platform::single(gateway, processes, "127.0.0.1:3000".parse().unwrap());
    let listener = ControlListener::unix(&socket).unwrap();
    let mode = std::fs::metadata(&socket).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions())).unwrap();
    assert_eq!(mode & 0o777, 0o600, "only the owner may use the control socket");
    tokio::spawn(server::serve(Arc::clone(&platform), listener, ControlConfig::default(), std::future::pending()));

    let client = Client::new(Endpoint::Unix(socket));
    for (method, template) in documented_operations(&document) {
        let path = template
            .replace("{name}", "nope")
            .replace("{service}", "web")
            .replace("{policy}", "p")
            .replace("{store}", "default")
            .replace("{key}", "k");
        let operation = &document["paths"][&template][method.to_lowercase()];
        let listed: BTreeSet<String> = operation["responses"].as_object().unwrap().keys().cloned().collect();
        let response = client.raw(method.parse().unwrap(), &path, None).await.unwrap();
        let status = response.0.as_u16().to_string();
        assert!(listed.contains(&status), "{method} {path} answered {status}, the document lists {listed:?}");
        if response.0.as_u16() >= 400 {
            let body: ErrorBody = serde_json::from_slice(&response.1)
                .unwrap_or_else(|_| panic!("{method} {path}: not an ErrorBody: {:?}", response.1));
            assert!(!body.message.is_empty());
        }
    }
    // Off the documented paths: a JSON 404, and a JSON 405 for a wrong method.
    let (status, body) = client.raw(http::Method::GET, "/v1/nothing", None).await.unwrap();
    assert_eq!(status, 404);
    serde_json::from_slice::<ErrorBody>(&body).unwrap();
    let (status, body) = client.raw(http::Method::PATCH, "/v1/apps", None).await.unwrap();
    assert_eq!(status, 405);
    serde_json::from_slice::<ErrorBody>(&body).unwrap();
}
