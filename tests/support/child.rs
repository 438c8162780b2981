//! The real `timeline` binary as a child process on port 0 with a private data dir, for tests
//! that kill it (`kill -9`) or need it in a process of its own.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{Client, SECRET, client_with_header, now_s};

pub struct ChildServer {
    child: Child,
    pub url: String,
}

impl ChildServer {
    /// Starts `timeline serve` in `dir` with the test secret and `env` on top.
    pub fn start(dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_timeline"));
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.join("data"))
            .current_dir(dir)
            .env("TIMELINE_JWT_SECRET", SECRET)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // As for TestServer: the suites are scripts, which the default rate limits throttle.
        for key in [
            "USER_SENDS_PER_SEC",
            "USER_WRITES_PER_SEC",
            "USER_READS_PER_SEC",
            "SOURCE_AUTH_FAILURES_PER_SEC",
            "MAX_IN_FLIGHT",
        ] {
            command.env(format!("TIMELINE_PROTECT__{key}"), "0");
        }
        command.env("TIMELINE_LIMITS__HOT_CONVERSATION_SENDS_PER_SEC", "0");
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn timeline");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read address line");
        let url = line
            .trim()
            .strip_prefix("timeline listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Self { child, url }
    }

    pub async fn client(&self, user: &str, device: &str) -> Client {
        let token = ::timeline::api::Authenticator::new(SECRET)
            .mint(user, device, Duration::from_secs(600), now_s())
            .expect("token");
        client_with_header(&self.url, Some(format!("Bearer {token}"))).await
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
