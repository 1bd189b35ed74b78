//! TLS for the public listener: the certificate and key (PEM files, read at start and on
//! reload), the rustls configuration (ring, TLS 1.2 and 1.3, ALPN `http/1.1`) and the reload
//! triggers (SIGHUP, a change in the files). A reload swaps the certificate that new
//! handshakes get; live connections keep the session they have.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("cannot read a PEM certificate chain from {path}: {source}")]
    Cert {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("cannot read a PEM private key from {path}: {source}")]
    Key {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error(
        "the key in {key} cannot serve the certificate in {cert} (not its key, or not RSA, \
         ECDSA P-256/P-384 or Ed25519): {source}"
    )]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

impl TlsError {
    /// The flag whose file is at fault.
    pub(crate) fn flag(&self) -> &'static str {
        match self {
            Self::Key { .. } | Self::Mismatch { .. } => "tls-key",
            Self::Cert { .. } | Self::Config(_) => "tls-cert",
        }
    }
}

/// The public listener's TLS: what accepts handshakes, and the certificate it serves.
pub(crate) struct Tls {
    acceptor: TlsAcceptor,
    current: Arc<CurrentCert>,
    provider: Arc<CryptoProvider>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

/// The certificate new handshakes get; replaced whole on reload.
#[derive(Debug)]
struct CurrentCert(Mutex<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(crate::sync::lock(&self.0).clone())
    }
}

impl Tls {
    /// Loads the certificate chain and key; fails with what is wrong with them.
    pub(crate) fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = Arc::new(CurrentCert(Mutex::new(Arc::new(certified_key(
            cert_path, key_path, &provider,
        )?))));
        let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        // HTTP/1.1 only: the WebSocket upgrade is an HTTP/1.1 request. A client that offers
        // ALPN without it (h2 only) is refused in the handshake, not after it.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            current,
            provider,
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
        })
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Reads the files again and serves what they hold from the next handshake on; on error
    /// the current certificate stays.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let key = certified_key(&self.cert_path, &self.key_path, &self.provider)?;
        *crate::sync::lock(&self.current.0) = Arc::new(key);
        Ok(())
    }

    /// What identifies the files' current contents cheaply (inode, size, modification and
    /// change times of each), to notice a change without reading them: a rewrite, a rename
    /// over them, a `chmod` that makes them readable.
    fn fingerprint(&self) -> Option<[Stamp; 2]> {
        Some([Stamp::of(&self.cert_path)?, Stamp::of(&self.key_path)?])
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    len: u64,
    modified: SystemTime,
    changed: (i64, i64),
}

impl Stamp {
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            inode: meta.ino(),
            len: meta.len(),
            modified: meta.modified().ok()?,
            changed: (meta.ctime(), meta.ctime_nsec()),
        })
    }
}

fn certified_key(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let cert_error = |source| TlsError::Cert {
        path: cert_path.to_owned(),
        source,
    };
    let chain = CertificateDer::pem_file_iter(cert_path)
        .map_err(cert_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(cert_error)?;
    if chain.is_empty() {
        return Err(cert_error(rustls::pki_types::pem::Error::NoItemsFound));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|source| TlsError::Key {
        path: key_path.to_owned(),
        source,
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Mismatch {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        source,
    })
}

/// Reloads the certificate on SIGHUP and, every `check` (unless zero), when the files changed,
/// until `shutdown`. Each attempt is logged and counted in
/// `tickrelay_tls_reloads_total{result}`.
pub(crate) async fn watch(
    tls: Arc<Tls>,
    metrics: Arc<Metrics>,
    check: Duration,
    shutdown: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(err) => {
            warn!(%err, "cannot listen for SIGHUP: TLS certificates reload only when their files change");
            None
        }
    };
    let mut seen = tls.fingerprint();
    let mut interval = (!check.is_zero()).then(|| {
        let mut interval = tokio::time::interval(check);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    loop {
        let trigger = tokio::select! {
            () = shutdown.cancelled() => return,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(hangup) => hangup.recv().await,
                    None => std::future::pending().await,
                }
            } => "SIGHUP",
            () = async {
                match interval.as_mut() {
                    Some(interval) => drop(interval.tick().await),
                    None => std::future::pending().await,
                }
            } => {
                if tls.fingerprint() == seen {
                    continue;
                }
                "files changed"
            }
        };
        // Taken before reading them: a change during the reload is seen at the next check.
        seen = tls.fingerprint();
        match tls.reload() {
            Ok(()) => {
                metrics.tls_reload("ok");
                info!(trigger, cert = %tls.cert_path.display(), "TLS certificate reloaded");
            }
            Err(err) => {
                metrics.tls_reload("failed");
                warn!(trigger, %err, "TLS certificate reload failed: keeping the current one");
            }
        }
    }
}
