//! The token secret: the configured one, or one generated once into the data directory (so a
//! laptop needs no setup, and `timeline token` signs with what the server verifies).

use std::path::{Path, PathBuf};

/// File in the data directory holding the generated secret.
pub const SECRET_FILE: &str = "jwt_secret";

#[derive(Debug, thiserror::Error)]
#[error("token secret {}: {source}", path.display())]
pub struct SecretError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// The configured secret, or the one generated into `data_dir` on first start. Returns the
/// secret and whether it was generated just now.
pub fn resolve_jwt_secret(
    configured: Option<&str>,
    data_dir: &Path,
) -> Result<(String, bool), SecretError> {
    if let Some(secret) = configured {
        return Ok((secret.to_owned(), false));
    }
    let path = data_dir.join(SECRET_FILE);
    let io = |source| SecretError {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok((s.trim().to_owned(), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    std::fs::create_dir_all(data_dir).map_err(io)?;
    let secret: String = (0..4)
        .map(|_| format!("{:016x}", rand::random::<u64>()))
        .collect();
    write_private(&path, &secret).map_err(io)?;
    Ok((secret, true))
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}
