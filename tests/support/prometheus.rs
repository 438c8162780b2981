//! A private Prometheus server for tests: scrapes given targets every second, stores in a temp
//! dir, listens on a free loopback port, and is killed when dropped.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::try_http_get;

pub struct PrometheusProcess {
    child: Child,
    pub addr: SocketAddr,
    _dir: TempDir,
}

impl PrometheusProcess {
    /// Starts `prometheus` from PATH scraping `targets` (host:port) as job `job` every second.
    pub async fn start(job: &str, targets: &[SocketAddr]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  \
             - job_name: {job}\n    metrics_path: /metrics\n    static_configs:\n      \
             - targets: [{}]\n",
            targets.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let addr: SocketAddr = format!(
            "127.0.0.1:{}",
            timeline::testkit::ports::free_port().expect("free port")
        )
        .parse()
        .unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start prometheus (scripts/test.sh installs it): {e}")
            });
        let process = Self {
            child,
            addr,
            _dir: dir,
        };
        process.wait_ready().await;
        process
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if try_http_get(self.addr, "/-/ready")
                .await
                .is_ok_and(|(status, _)| status == 200)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Evaluates `expr` now (`/api/v1/query`); the `data` object of the answer, or the error.
    pub async fn query(&self, expr: &str) -> Result<serde_json::Value, String> {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let (_, response) = try_http_get(self.addr, &path)
            .await
            .map_err(|e| format!("prometheus unreachable: {e}"))?;
        let body = response.as_str();
        let start = body
            .find('{')
            .ok_or_else(|| format!("no JSON in {response:?}"))?;
        let json: serde_json::Value = serde_json::from_str(&body[start..])
            .map_err(|e| format!("bad JSON ({e}) in {response:?}"))?;
        if json["status"] != "success" {
            return Err(format!("{}: {}", json["errorType"], json["error"]));
        }
        Ok(json["data"].clone())
    }
}

impl Drop for PrometheusProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
