//! Optional TLS on the one port (rustls): gRPC and HTTP alike, ALPN `h2` and `http/1.1`. The
//! certificate chain and key are read from PEM files, and read again on SIGHUP and whenever
//! either file changes, so a renewed certificate needs no restart; a reload that fails keeps
//! the certificate in use and says why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

/// The `[tls]` section: both files, or neither (cleartext).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsOptions {
    /// PEM certificate chain, leaf first.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// How often the files are checked for a change.
    #[serde(with = "crate::units::human")]
    pub reload_interval: Duration,
}

impl Default for TlsOptions {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            reload_interval: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls: cert_file and key_file go together (one is set, the other is not)")]
    Incomplete,
    #[error("tls: reading {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("tls: {0}")]
    Invalid(String),
}

impl TlsOptions {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }

    pub fn validate(&self) -> Result<(), TlsError> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(TlsError::Incomplete);
        }
        if self.reload_interval.is_zero() {
            return Err(TlsError::Invalid("reload_interval must be positive".into()));
        }
        Ok(())
    }
}

fn read_error(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Read {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// A server configuration from the two PEM files.
fn load(cert_file: &Path, key_file: &Path) -> Result<ServerConfig, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| read_error(cert_file, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_error(cert_file, e))?;
    if chain.is_empty() {
        return Err(read_error(cert_file, "no certificate in the file"));
    }
    // The error never quotes the key.
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| read_error(key_file, format!("no usable private key ({e})")))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsError::Invalid(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| TlsError::Invalid(format!("certificate and key do not match: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The acceptor in use, replaced when the files change.
#[derive(Clone)]
pub struct TlsAcceptors {
    current: Arc<RwLock<TlsAcceptor>>,
}

impl TlsAcceptors {
    /// Loads the files (an error here stops the start) and watches them for changes until
    /// the returned task is aborted.
    pub fn start(
        options: &TlsOptions,
    ) -> Result<Option<(Self, tokio::task::JoinHandle<()>)>, TlsError> {
        options.validate()?;
        let (Some(cert_file), Some(key_file)) = (&options.cert_file, &options.key_file) else {
            return Ok(None);
        };
        let config = load(cert_file, key_file)?;
        let acceptors = Self {
            current: Arc::new(RwLock::new(TlsAcceptor::from(Arc::new(config)))),
        };
        let reloaded = acceptors.clone();
        let (cert, key) = (cert_file.clone(), key_file.clone());
        let watcher = super::reload::watch(
            "TLS certificate",
            vec![cert_file.clone(), key_file.clone()],
            options.reload_interval,
            move || {
                let config = load(&cert, &key).map_err(|e| e.to_string())?;
                *reloaded.current.write().unwrap_or_else(|p| p.into_inner()) =
                    TlsAcceptor::from(Arc::new(config));
                Ok(())
            },
        );
        Ok(Some((acceptors, watcher)))
    }

    pub fn current(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
