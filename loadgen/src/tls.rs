//! `wss://`: the clients' TLS configuration (rustls with ring). Certificates are checked
//! against the system's roots, or a private CA (`--ca`), or not at all (`--insecure`, for a
//! self-signed test server). One configuration is shared by every client; sessions are never
//! resumed, so each client does the full handshake a new player's device would.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// How the clients check the server's certificate.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Trust<'a> {
    /// The operating system's root certificates.
    System,
    /// The CA certificates (PEM) in this file, and nothing else.
    Ca(&'a Path),
    /// Any certificate: `--insecure`.
    Anything,
}

/// What every `wss://` client connects with.
#[derive(Debug, Clone)]
pub(crate) struct TlsClient {
    pub(crate) config: Arc<ClientConfig>,
    /// The name the certificate must carry: the URL's host.
    pub(crate) server_name: ServerName<'static>,
}

impl TlsClient {
    pub(crate) fn new(host: &str, trust: Trust<'_>) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS versions")?;
        let mut config = match trust {
            Trust::Anything => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
                .with_no_client_auth(),
            Trust::Ca(path) => builder
                .with_root_certificates(ca_roots(path)?)
                .with_no_client_auth(),
            Trust::System => builder
                .with_root_certificates(system_roots()?)
                .with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Self {
            config: Arc::new(config),
            server_name: server_name(host)?,
        })
    }

    /// The same trust, for another host (a fleet node a client was sent to).
    pub(crate) fn for_host(&self, host: &str) -> anyhow::Result<Self> {
        Ok(Self {
            config: self.config.clone(),
            server_name: server_name(host)?,
        })
    }
}

fn server_name(host: &str) -> anyhow::Result<ServerName<'static>> {
    ServerName::try_from(host.to_owned())
        .with_context(|| format!("{host:?} is not a TLS server name"))
}

fn ca_roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read --ca {}", path.display()))?;
    for cert in certs {
        let cert =
            cert.with_context(|| format!("--ca {}: not a PEM certificate", path.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("--ca {}: unusable certificate", path.display()))?;
    }
    if roots.is_empty() {
        bail!("--ca {} holds no certificate", path.display());
    }
    Ok(roots)
}

fn system_roots() -> anyhow::Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        bail!(
            "no root certificates found on this system ({:?}): give --ca FILE, or --insecure for a test server",
            found.errors.first()
        );
    }
    Ok(roots)
}

/// `--insecure`: any certificate is accepted (the handshake's signatures are still checked,
/// so the session is encrypted, just not authenticated).
#[derive(Debug)]
struct AcceptAnything(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
