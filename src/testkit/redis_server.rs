//! A private `redis-server` for tests and benchmarks: its own free loopback port, no
//! persistence, a temp dir; killed when dropped. Faults on demand: kill and restart on the same
//! port, FLUSHALL, pause (SIGSTOP) and resume.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a started server may take to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum RedisProcessError {
    #[error(
        "cannot run redis-server ({0}): install it (Debian: apt-get install redis-server; \
         scripts/test.sh does this)"
    )]
    Missing(std::io::Error),
    #[error("redis-server on port {port} did not answer within {START_TIMEOUT:?}; its log: {log}")]
    NotReady { port: u16, log: String },
    #[error("redis-server: {0}")]
    Io(#[from] std::io::Error),
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
}

pub struct RedisProcess {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisProcess {
    /// Starts a server on a free port.
    pub fn start() -> Result<Self, RedisProcessError> {
        let dir = std::env::temp_dir().join(format!(
            "timeline-redis-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir)?;
        // A port taken between the probe and the start makes the server exit: try another.
        let mut last = None;
        for _ in 0..5 {
            let port = super::ports::free_port()?;
            let mut process = Self {
                port,
                dir: dir.clone(),
                child: None,
            };
            match process.spawn() {
                Ok(()) => return Ok(process),
                Err(e @ RedisProcessError::Missing(_)) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(RedisProcessError::NotReady {
            port: 0,
            log: String::new(),
        }))
    }

    fn spawn(&mut self) -> Result<(), RedisProcessError> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--loglevel", "warning"])
            .arg("--logfile")
            .arg(self.log_path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(RedisProcessError::Missing)?;
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < START_TIMEOUT {
            if self.ping().is_ok() {
                return Ok(());
            }
            if let Some(child) = &mut self.child
                && child.try_wait()?.is_some()
            {
                self.child = None;
                return Err(self.not_ready());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Err(self.not_ready())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("redis-{}.log", self.port))
    }

    /// The error for a server that never answered, with the end of its log (why it exited).
    fn not_ready(&self) -> RedisProcessError {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        RedisProcessError::NotReady {
            port: self.port,
            log: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn connection(&self) -> Result<::redis::Connection, RedisProcessError> {
        let client = ::redis::Client::open(self.url())?;
        Ok(client.get_connection_with_timeout(Duration::from_secs(2))?)
    }

    pub fn ping(&self) -> Result<(), RedisProcessError> {
        let mut conn = self.connection()?;
        // Something else on the port (or a self-connected probe) must not hang the wait.
        conn.set_read_timeout(Some(Duration::from_secs(2)))?;
        ::redis::cmd("PING").query::<String>(&mut conn)?;
        Ok(())
    }

    /// Loses every key, as a flush or a restart without persistence does.
    pub fn flushall(&self) -> Result<(), RedisProcessError> {
        let mut conn = self.connection()?;
        ::redis::cmd("FLUSHALL").query::<()>(&mut conn)?;
        Ok(())
    }

    /// Runs one command (for tests that look at what the backend stored).
    pub fn query<T: ::redis::FromRedisValue>(
        &self,
        cmd: &::redis::Cmd,
    ) -> Result<T, RedisProcessError> {
        let mut conn = self.connection()?;
        Ok(cmd.query(&mut conn)?)
    }

    /// SIGKILL: the process dies with its data.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a new, empty server on the same port.
    pub fn restart(&mut self) -> Result<(), RedisProcessError> {
        self.kill();
        self.spawn()
    }

    /// SIGSTOP: connections stay open, nothing answers.
    pub fn pause(&self) -> Result<(), RedisProcessError> {
        self.signal("-STOP")
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) -> Result<(), RedisProcessError> {
        self.signal("-CONT")
    }

    fn signal(&self, signal: &str) -> Result<(), RedisProcessError> {
        if let Some(child) = &self.child {
            Command::new("kill")
                .arg(signal)
                .arg(child.id().to_string())
                .status()?;
        }
        Ok(())
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.resume();
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
