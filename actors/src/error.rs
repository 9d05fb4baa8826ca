//! Typed errors of the crate.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Starting a server failed.
#[non_exhaustive]
#[derive(Debug)]
pub enum ServerError {
    /// The listen address could not be bound.
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// The unix socket path of a plaintext listener could not be bound (or a live process
    /// listens there, or the path is not a socket).
    BindUnix {
        /// The path asked for.
        path: PathBuf,
        /// What the OS said, or why the path was not taken.
        source: io::Error,
    },
    /// A listening socket handed to the builder cannot be used (its address cannot be read).
    Listener {
        /// Its place among the builder's listeners, from 0.
        position: usize,
        /// What the OS said.
        source: io::Error,
    },
    /// The configuration cannot work (zero workers, zero max connections, …).
    Config(String),
    /// `Server::start` was called outside a running actix system.
    NoSystem,
    /// A worker thread could not be started (the OS refused another thread).
    WorkerSpawn,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            ServerError::BindUnix { path, source } => {
                write!(f, "cannot listen on unix:{}: {source}", path.display())
            }
            ServerError::Listener { position, source } => {
                write!(f, "cannot use listening socket {position}: {source}")
            }
            ServerError::Config(why) => write!(f, "invalid server configuration: {why}"),
            ServerError::NoSystem => {
                f.write_str("Server::start must run inside an actix system (actix_rt::System)")
            }
            ServerError::WorkerSpawn => f.write_str("cannot start a worker thread"),
        }
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServerError::Bind { source, .. }
            | ServerError::BindUnix { source, .. }
            | ServerError::Listener { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Loading a certificate chain and private key failed.
#[non_exhaustive]
#[derive(Debug)]
pub enum TlsConfigError {
    /// A file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A file is not a regular file (a FIFO, a device, a directory): it is refused before it
    /// is read, since reading it could block or never end.
    NotRegularFile {
        /// The file.
        path: PathBuf,
        /// What it is instead (`a FIFO`, `a character device`, ...).
        kind: &'static str,
    },
    /// A file is larger than any certificate, key, CA bundle, CRL or ticket key file should be.
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The most bytes read from one file.
        limit: u64,
    },
    /// The PEM text holds no certificate.
    NoCertificate,
    /// The PEM text holds no private key, or one rustls cannot parse.
    NoPrivateKey,
    /// rustls refused the certificate and key (mismatch, unsupported key type, …).
    Rustls(rustls::Error),
    /// A certificate given to serve cannot authenticate a TLS server: it is a CA certificate,
    /// or its extended key usage leaves out serverAuth. Clients would refuse every handshake.
    NotServerCertificate(String),
    /// A certificate's DER could not be read (serial, expiry, names).
    Certificate(crate::tls::certificate::X509Error),
    /// Two certificates of the same key type serve the same name: which one a client got would
    /// depend on their order.
    NameOverlap {
        /// The name both claim.
        name: String,
        /// The earlier certificate file.
        first: PathBuf,
        /// The later certificate file.
        second: PathBuf,
    },
    /// A certificate other than the first (the default) has no SAN DNS name, so no SNI can
    /// ever select it.
    Unselectable {
        /// The certificate file.
        path: PathBuf,
    },
    /// A name in the TLS policy (cipher suite, key-exchange group) that rustls does not offer.
    UnknownName {
        /// What kind of name.
        what: &'static str,
        /// The name given.
        name: String,
        /// The names that would work.
        valid: Vec<String>,
    },
    /// The TLS policy cannot work (no cipher suite left for the versions allowed, …).
    Policy(String),
    /// Something is wrong with the content of one file.
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: Box<TlsConfigError>,
    },
}

impl fmt::Display for TlsConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsConfigError::Read { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            TlsConfigError::NotRegularFile { path, kind } => write!(
                f,
                "cannot read {}: it is {kind}, not a regular file",
                path.display()
            ),
            TlsConfigError::TooLarge { path, limit } => write!(
                f,
                "cannot read {}: larger than {} (no certificate, key, CA bundle, CRL or ticket \
                 key file is; is it the right file?)",
                path.display(),
                human_bytes(*limit)
            ),
            TlsConfigError::NoCertificate => f.write_str("no PEM certificate found"),
            TlsConfigError::NoPrivateKey => f.write_str("no usable PEM private key found"),
            TlsConfigError::Rustls(e) => write!(f, "certificate and key rejected: {e}"),
            TlsConfigError::NotServerCertificate(why) => {
                write!(f, "not a server certificate: {why}")
            }
            TlsConfigError::Certificate(e) => e.fmt(f),
            TlsConfigError::NameOverlap {
                name,
                first,
                second,
            } => write!(
                f,
                "{} and {} both serve {name} with the same key type",
                first.display(),
                second.display()
            ),
            TlsConfigError::UnknownName { what, name, valid } => {
                write!(f, "unknown {what} {name:?}; valid: {}", valid.join(", "))
            }
            TlsConfigError::Policy(why) => write!(f, "TLS policy: {why}"),
            TlsConfigError::Unselectable { path } => write!(
                f,
                "{}: no DNS name in its subjectAltName, so no client can select it (only the \
                 first certificate, the default, may have none)",
                path.display()
            ),
            TlsConfigError::InFile { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for TlsConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsConfigError::Read { source, .. } => Some(source),
            TlsConfigError::Rustls(e) => Some(e),
            TlsConfigError::Certificate(e) => Some(e),
            TlsConfigError::InFile { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

/// `limit` in the largest binary unit that divides it (`1 MiB`), else in bytes.
fn human_bytes(limit: u64) -> String {
    match limit {
        0 => "0 bytes".into(),
        n if n % (1024 * 1024) == 0 => format!("{} MiB", n / (1024 * 1024)),
        n if n % 1024 == 0 => format!("{} KiB", n / 1024),
        n => format!("{n} bytes"),
    }
}

/// A session refused what the client sent; the connection is disposed with
/// [`DisposeReason::ProtocolError`](crate::supervision::dispose_reason::DisposeReason::ProtocolError).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionError(pub String);

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "protocol error: {}", self.0)
    }
}

impl std::error::Error for SessionError {}
