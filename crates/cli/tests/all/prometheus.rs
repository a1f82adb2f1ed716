//! Debian's Prometheus server scrapes a dormouse on loopback with the scrape
//! config the README gives, and evaluates the query of the README's KEDA
//! `ScaledObject` through its HTTP API: what an operator's autoscaler sees.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::StatusCode;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::support::{App, get, guest};

/// A Prometheus server, killed when dropped.
struct Prometheus {
    child: Child,
    url: String,
    _data: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(config: &str) -> Prometheus {
        let data = tempfile::tempdir().unwrap();
        let config_file = data.path().join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let port = dormouse_testkit::free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", data.path().join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus (Debian's `prometheus` package; scripts/test.sh installs it)");
        Prometheus { child, url: format!("http://127.0.0.1:{port}"), _data: data }
    }

    /// The instant vector `query` evaluates to, as (labels, value) pairs;
    /// `None` while the server is not up yet.
    async fn query(&self, query: &str) -> Option<Vec<(Value, f64)>> {
        let encoded: String = form_urlencoded::byte_serialize(query.as_bytes()).collect();
        let uri: hyper::Uri = format!("{}/api/v1/query?query={encoded}", self.url).parse().unwrap();
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let asked = async {
            let response = client.get(uri).await.ok()?;
            if response.status() != StatusCode::OK {
                return None;
            }
            response.into_body().collect().await.ok().map(|body| body.to_bytes())
        };
        let body = tokio::time::timeout(Duration::from_secs(5), asked).await.ok()??;
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["status"], "success", "{body:#}");
        let results = body["data"]["result"].as_array().unwrap();
        Some(
            results
                .iter()
                .map(|result| (result["metric"].clone(), result["value"][1].as_str().unwrap().parse().unwrap()))
                .collect(),
        )
    }
}

/// The README's fenced `yaml` block that contains `marker`.
fn readme_yaml(marker: &str) -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
    readme
        .split("```yaml\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .find(|block| block.contains(marker))
        .unwrap_or_else(|| panic!("the README has no yaml block with `{marker}`"))
        .to_owned()
}

#[tokio::test]
async fn prometheus_scrapes_dormouse_and_evaluates_the_keda_query() {
    let app = App::from_manifest(&format!(
        "spin_manifest_version = 2\n[application]\nname = \"webhook-handler\"\n\
         [[trigger.http]]\nroute = \"/hello\"\ncomponent = \"hello\"\n\
         [component.hello]\nsource = \"{}\"\n",
        guest("hello").display()
    ));
    let server = app.start(&["--admin-listen", "127.0.0.1:0"]);
    let admin = server.admin.unwrap();

    // The README's scrape config and ScaledObject, as written; only the
    // scrape target is this test's admin listener.
    let scrape_config = readme_yaml("scrape_configs:");
    assert!(scrape_config.contains("127.0.0.1:9464"), "{scrape_config}");
    let prometheus = Prometheus::start(&scrape_config.replace("127.0.0.1:9464", &admin.to_string()));
    let scaled_object = readme_yaml("kind: ScaledObject");
    let query = scaled_object
        .lines()
        .find_map(|line| line.trim().strip_prefix("query:"))
        .expect("the ScaledObject has a query")
        .trim()
        .to_owned();
    assert!(query.contains("http_requests_total{app=\"webhook-handler\"}"), "{query}");

    // Steady traffic (20 requests a second) until Prometheus has two
    // scrapes of it and the rate is above zero; a minute at most.
    let url = server.url("/hello");
    let traffic = tokio::spawn(async move {
        for _ in 0..1200 {
            assert_eq!(get(&url).await.status, StatusCode::OK);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let started = Instant::now();
    let rate = loop {
        if let Some(result) = prometheus.query(&query).await
            && let Some((_, rate)) = result.first()
            && *rate > 0.0
        {
            break *rate;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the KEDA query never rose above 0");
        assert!(!traffic.is_finished(), "the traffic ended early");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    traffic.abort();
    // 20 requests a second at most, from one client that also waits for
    // each answer.
    assert!(rate > 0.0 && rate <= 25.0, "rate {rate}");
    let up = prometheus.query("up{job=\"dormouse\"}").await.unwrap();
    assert_eq!(up.first().map(|(_, value)| *value), Some(1.0), "{up:?}");
    let by_status =
        prometheus.query("sum by (target, status) (http_requests_total{app=\"webhook-handler\"})").await.unwrap();
    assert_eq!(by_status.len(), 1, "{by_status:?}");
    assert_eq!(by_status[0].0["target"], "hello");
    assert_eq!(by_status[0].0["status"], "200");
}
