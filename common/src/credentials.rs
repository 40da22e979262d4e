//! The volume API's credentials: mutual TLS on TCP (the backend proves it is the VIP's
//! server, callers prove they hold a certificate from the installation's CA) and the
//! bearer token as a second factor.
//!
//! The rule every binary applies through [`check_transport`]: TCP carries the volume API
//! only over mutual TLS; a unix socket stays plaintext, guarded by its file permissions
//! (TLS files given for a unix socket are refused rather than silently ignored).
//! Files are read and parsed at start-up, so a missing, empty or garbled file stops the
//! binary with the path in the message instead of failing the first handshake.

use crate::endpoint::Endpoint;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint as TonicEndpoint, Identity, Server,
    ServerTlsConfig,
};

/// A handshake that has not finished by then is dropped, so a client that connects and
/// sends nothing cannot hold a server task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client waits for the TCP connect (the VIP may be moving).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum CredentialError {
    /// A credential file could not be read.
    #[error("reading the {what} file {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The token file holds nothing but whitespace: that would mean "no authentication".
    #[error(
        "the token file {path} is empty: write the bearer token into it (an empty token is never taken as 'no authentication')"
    )]
    EmptyToken { path: PathBuf },
    /// A PEM file holds nothing usable of what it must hold.
    #[error("the {what} file {path} {problem}")]
    BadPem {
        what: &'static str,
        path: PathBuf,
        problem: String,
    },
    /// TCP without TLS, or TLS files for a unix socket.
    #[error("{0}")]
    Transport(String),
    /// tonic refused the material (e.g. the key does not belong to the certificate).
    #[error("setting up TLS with {files}: {source}")]
    Tls {
        files: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// The three PEM files of one side of the mutual TLS: the CA that signs the *peer's*
/// certificate, and this side's own certificate and key. Kubernetes TLS Secrets name
/// them `ca.crt`, `tls.crt` and `tls.key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// `ca.crt`, `tls.crt`, `tls.key` in `dir` (a mounted Secret).
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca: dir.join("ca.crt"),
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        }
    }
}

impl std::fmt::Display for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CA {}, certificate {}, key {}",
            self.ca.display(),
            self.cert.display(),
            self.key.display()
        )
    }
}

/// The TLS flags every binary that speaks the volume API over TCP takes; all three or
/// none.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// CA certificate (PEM) that must have signed the peer's certificate (the backend:
    /// the clients' CA; a client: the backend's CA).
    #[arg(long, env = "HANFS_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// This side's certificate (PEM, chain allowed). The backend's names the VIP.
    #[arg(long, env = "HANFS_TLS_CERT", requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// This side's private key (PEM).
    #[arg(long, env = "HANFS_TLS_KEY", requires_all = ["tls_ca", "tls_cert"])]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    pub fn files(&self) -> Option<TlsFiles> {
        match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (Some(ca), Some(cert), Some(key)) => Some(TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            }),
            // clap's requires_all makes a partial set a usage error before we get here.
            _ => None,
        }
    }
}

/// Reads a bearer token file: surrounding whitespace (a trailing newline) is dropped, and
/// an empty token is an error.
pub fn read_token_file(path: &Path) -> Result<String, CredentialError> {
    let text = std::fs::read_to_string(path).map_err(|source| CredentialError::Read {
        what: "token",
        path: path.to_owned(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(CredentialError::EmptyToken {
            path: path.to_owned(),
        });
    }
    Ok(token.to_owned())
}

/// [`read_token_file`] for an optional flag.
pub fn read_optional_token(path: Option<&Path>) -> Result<Option<String>, CredentialError> {
    path.map(read_token_file).transpose()
}

/// The transport rule: mutual TLS on TCP, plaintext (file permissions) on unix sockets.
/// `role` names the flag set in the message, e.g. "the volume API (--listen)".
pub fn check_transport(
    endpoint: &Endpoint,
    tls_configured: bool,
    role: &str,
) -> Result<(), CredentialError> {
    match (endpoint, tls_configured) {
        (Endpoint::Tcp(_), true) | (Endpoint::Unix(_), false) => Ok(()),
        (Endpoint::Tcp(addr), false) => Err(CredentialError::Transport(format!(
            "{role} is on TCP ({addr}) but no TLS files are configured: give the CA, \
             certificate and key (--tls-ca, --tls-cert, --tls-key, or the tls section of the \
             agent's config); on TCP the volume API runs only over mutual TLS"
        ))),
        (Endpoint::Unix(path), true) => Err(CredentialError::Transport(format!(
            "{role} is a unix socket ({}), which runs without TLS (its file permissions guard \
             it): drop the TLS files or use a tcp:// endpoint",
            path.display()
        ))),
    }
}

struct Pems {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, CredentialError> {
    std::fs::read(path).map_err(|source| CredentialError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Reads the three files and checks that each holds what it must, naming the file that
/// does not.
fn load(files: &TlsFiles) -> Result<Pems, CredentialError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &'static str, path: &Path, problem: String| CredentialError::BadPem {
        what,
        path: path.to_owned(),
        problem,
    };
    let certificates = |what: &'static str, path: &Path, pem: &[u8]| {
        let mut count = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            cert.map_err(|e| bad(what, path, format!("holds a broken certificate: {e}")))?;
            count += 1;
        }
        if count == 0 {
            return Err(bad(
                what,
                path,
                "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned(),
            ));
        }
        Ok(())
    };
    let ca = read_pem("CA certificate", &files.ca)?;
    certificates("CA certificate", &files.ca, &ca)?;
    let cert = read_pem("certificate", &files.cert)?;
    certificates("certificate", &files.cert, &cert)?;
    let key = read_pem("private key", &files.key)?;
    PrivateKeyDer::from_pem_slice(&key).map_err(|e| {
        bad(
            "private key",
            &files.key,
            format!("holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    Ok(Pems { ca, cert, key })
}

/// rustls needs one process-wide crypto provider for the server side; ring is the one
/// the workspace builds (kube's TLS uses it too). Installing fails only when one is
/// installed already, which is just as good.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A server builder that speaks TLS with `files`' certificate and accepts only clients
/// whose certificate chains to `files`' CA (no certificate: the handshake fails).
pub fn server(files: &TlsFiles) -> Result<Server, CredentialError> {
    install_crypto_provider();
    let pems = load(files)?;
    let config = ServerTlsConfig::new()
        .identity(Identity::from_pem(pems.cert, pems.key))
        .client_ca_root(Certificate::from_pem(pems.ca))
        .client_auth_optional(false)
        .timeout(HANDSHAKE_TIMEOUT);
    Server::builder()
        .tls_config(config)
        .map_err(|source| CredentialError::Tls {
            files: files.to_string(),
            source,
        })
}

/// A server builder for `endpoint`: TLS as [`server`] on TCP, plaintext on a unix socket
/// (after [`check_transport`]).
pub fn server_for(
    endpoint: &Endpoint,
    tls: Option<&TlsFiles>,
    role: &str,
) -> Result<Server, CredentialError> {
    check_transport(endpoint, tls.is_some(), role)?;
    match tls {
        Some(files) => server(files),
        None => Ok(Server::builder()),
    }
}

/// The client side of one TLS peer: whom to trust, what to present, and the name the
/// server's certificate must carry.
#[derive(Clone)]
pub struct ClientTls {
    config: ClientTlsConfig,
}

impl ClientTls {
    /// `server_name`: the DNS name or IP address the server certificate must name; by
    /// default the host part of the address dialled (the VIP).
    pub fn load(files: &TlsFiles, server_name: Option<&str>) -> Result<Self, CredentialError> {
        install_crypto_provider();
        let pems = load(files)?;
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(pems.ca))
            .identity(Identity::from_pem(pems.cert, pems.key))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(name) = server_name {
            config = config.domain_name(name);
        }
        Ok(Self { config })
    }
}

/// Dials `endpoint` lazily: mutual TLS on TCP (required), plaintext on a unix socket;
/// `configure` tunes the channel (keepalives, timeouts) either way.
pub fn connect_lazy_with(
    endpoint: &Endpoint,
    tls: Option<&ClientTls>,
    role: &str,
    configure: impl FnOnce(TonicEndpoint) -> Result<TonicEndpoint, tonic::transport::Error>,
) -> Result<Channel, CredentialError> {
    check_transport(endpoint, tls.is_some(), role)?;
    let err = |source| CredentialError::Tls {
        files: format!("the endpoint {endpoint}"),
        source,
    };
    match (endpoint, tls) {
        // tonic applies TLS only to https:// URIs: with http:// and a TLS config it
        // would silently dial plaintext.
        (Endpoint::Tcp(addr), Some(tls)) => Ok(configure(
            TonicEndpoint::from_shared(format!("https://{addr}"))
                .map_err(err)?
                .connect_timeout(CONNECT_TIMEOUT)
                .tls_config(tls.config.clone())
                .map_err(err)?,
        )
        .map_err(err)?
        .connect_lazy()),
        // check_transport let only a unix socket without TLS through.
        _ => crate::endpoint::connect_lazy_with(endpoint, configure)
            .map_err(|e| CredentialError::Transport(format!("connecting to {endpoint}: {e}"))),
    }
}

/// [`connect_lazy_with`] with tonic's defaults.
pub fn connect_lazy(
    endpoint: &Endpoint,
    tls: Option<&ClientTls>,
    role: &str,
) -> Result<Channel, CredentialError> {
    connect_lazy_with(endpoint, tls, role, Ok)
}

/// What a user can do about a call that failed below gRPC: tonic reports a refused
/// handshake as UNAVAILABLE "transport error" with the TLS alert deep in its source
/// chain, so the chain is spelled out and the likely fix added.
pub fn explain(status: &tonic::Status) -> String {
    let mut chain = Vec::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        let text = error.to_string();
        if !chain.contains(&text) {
            chain.push(text);
        }
        source = error.source();
    }
    let detail = if chain.is_empty() {
        status.message().to_owned()
    } else {
        format!("{}: {}", status.message(), chain.join(": "))
    };
    let lower = detail.to_ascii_lowercase();
    let hint = if lower.contains("certificateexpired") || lower.contains("expired") {
        " (a certificate has expired: renew it from the installation's CA)"
    } else if lower.contains("unknownissuer")
        || lower.contains("unknown ca")
        || lower.contains("unknownca")
        || lower.contains("badcertificate")
        || lower.contains("bad certificate")
        || lower.contains("certificaterequired")
        || lower.contains("certificate required")
    {
        " (the peer refused the certificate: the client needs a certificate signed by the CA the \
         backend trusts, and must trust the CA that signed the backend's)"
    } else if lower.contains("notvalidforname") || lower.contains("not valid for name") {
        " (the backend's certificate does not name the address dialled: add it (the VIP) to the \
         certificate's subject alternative names)"
    } else {
        ""
    };
    format!("{detail}{hint}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_empty_or_blank_token_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        for blank in ["", "\n", "  \t\n"] {
            std::fs::write(&path, blank).unwrap();
            let err = read_token_file(&path).unwrap_err();
            assert!(matches!(err, CredentialError::EmptyToken { .. }), "{err}");
            assert!(err.to_string().contains(&path.display().to_string()));
        }
        std::fs::write(&path, "s3cret\n").unwrap();
        assert_eq!(read_token_file(&path).unwrap(), "s3cret");
        let missing = read_token_file(&dir.path().join("none")).unwrap_err();
        assert!(
            missing.to_string().contains("reading the token file"),
            "{missing}"
        );
    }

    #[test]
    fn tcp_needs_tls_and_unix_sockets_take_none() {
        let tcp = Endpoint::Tcp("10.0.0.100:9820".into());
        let unix = Endpoint::Unix("/run/b.sock".into());
        assert!(check_transport(&tcp, true, "x").is_ok());
        assert!(check_transport(&unix, false, "x").is_ok());
        let err = check_transport(&tcp, false, "the volume API").unwrap_err();
        assert!(err.to_string().contains("--tls-ca"), "{err}");
        let err = check_transport(&unix, true, "the volume API").unwrap_err();
        assert!(err.to_string().contains("drop the TLS files"), "{err}");
    }

    #[test]
    fn garbled_pem_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles::in_dir(dir.path());
        let err = load(&files).err().unwrap();
        assert!(err.to_string().contains("ca.crt"), "{err}");
        std::fs::write(&files.ca, "").unwrap();
        let err = load(&files).err().unwrap();
        assert!(
            err.to_string().contains("holds no PEM certificate"),
            "{err}"
        );
        assert!(err.to_string().contains("ca.crt"), "{err}");
    }
}
