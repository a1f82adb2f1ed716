//! HTTPS: a certificate chain and its private key read from PEM files,
//! checked against each other at start, offered to every new handshake from
//! one swappable slot, and loaded again when the files change, without
//! touching established connections. HTTP/2 and HTTP/1.1 are offered by ALPN.

use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject as _};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// How often the certificate and key files are checked for a change: a
/// renewed certificate is served within a second or two. Each check is two
/// `stat` calls on a blocking thread, and wakes an otherwise idle server
/// once a second. Polling rather than inotify: no extra dependency, and it
/// sees every way a file can change on every filesystem (a rename into
/// place, a Kubernetes secret's symlink swap, NFS), where inotify misses
/// some.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// ALPN protocols, in the server's order of preference: a client offering
/// HTTP/2 gets it.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The first byte of every TLS connection: a handshake record (RFC 8446
/// §5.1). A plain HTTP request starts with a method's letter instead.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The answer to a plain HTTP request on a TLS port (in a `400 Bad
/// Request`): a client, or a person with curl, reads why, instead of a TLS
/// alert it cannot parse.
pub const PLAIN_HTTP_REFUSAL: &str = "this port speaks HTTPS: use https:// to reach it\n";

/// How long a refused plain HTTP connection is read (and what it sends
/// thrown away) after the refusal, before it is closed: closing a socket
/// with unread bytes makes the kernel send a reset, which can destroy the
/// refusal before the client reads it.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Why a certificate and key cannot be served. Each names its file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} file `{}` does not exist", path.display())]
    Missing { what: &'static str, path: PathBuf },
    #[error("cannot read {what} file `{}`: {source}", path.display())]
    Unreadable { what: &'static str, path: PathBuf, source: io::Error },
    #[error("{what} file `{}` is not valid PEM: {reason}", path.display())]
    Pem { what: &'static str, path: PathBuf, reason: String },
    #[error("no certificate in `{}`: expected a PEM `BEGIN CERTIFICATE` section", path.display())]
    NoCertificate { path: PathBuf },
    #[error("no private key in `{}`: expected a PEM `BEGIN PRIVATE KEY` (or RSA or EC) section", path.display())]
    NoKey { path: PathBuf },
    #[error("unusable private key in `{}`: {source}", path.display())]
    BadKey { path: PathBuf, source: rustls::Error },
    #[error("unusable certificate in `{}`: {source}", path.display())]
    BadCertificate { path: PathBuf, source: rustls::Error },
    #[error("the private key in `{}` does not match the certificate in `{}`", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("cannot configure TLS: {0}")]
    Config(rustls::Error),
}

/// HTTPS for a gateway: the certificate and key files, what was last loaded
/// from them, and the TLS configuration that serves it. Cloning is cheap and
/// clones share the certificate: a reload is seen by all.
#[derive(Clone)]
pub struct Tls {
    files: Arc<Files>,
    current: Arc<ArcSwap<CertifiedKey>>,
    acceptor: tokio_rustls::TlsAcceptor,
    /// The files as they were when `current` was read from them.
    loaded: Stamps,
    /// Why the last reload failed, until one succeeds: logged once.
    failure: Arc<std::sync::Mutex<Option<String>>>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("cert", &self.files.cert).field("key", &self.files.key).finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
}

/// What a file looked like: modification time, length, inode (a file
/// renamed into place is new even with the old time and length) and change
/// time (a `chmod` or `chown` that makes it readable). `None` while it
/// cannot be looked at.
type Stamp = Option<(SystemTime, u64, u64, (i64, i64))>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamps {
    cert: Stamp,
    key: Stamp,
}

impl Tls {
    /// Reads the certificate chain (`cert`: PEM, end-entity certificate
    /// first) and its private key (`key`: PEM, PKCS#8, PKCS#1 or SEC1) and
    /// checks that they belong together. Blocking (two small reads).
    ///
    /// Errors: a file missing or unreadable, not PEM, with no certificate or
    /// no key, a key rustls cannot sign with (RSA, ECDSA P-256/P-384 and
    /// Ed25519 are supported), or a key that is not the certificate's.
    pub fn load(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let files = Arc::new(Files { cert: cert.into(), key: key.into(), provider: provider.clone() });
        let loaded = files.stamps();
        let current = Arc::new(ArcSwap::from_pointee(files.load()?));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(current.clone())));
        config.alpn_protocols = ALPN.iter().map(|protocol| protocol.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Ok(Tls { files, current, acceptor, loaded, failure: Arc::default() })
    }

    /// The certificate chain new handshakes get (DER, end-entity first).
    #[cfg(test)]
    fn certificate_chain(&self) -> Vec<CertificateDer<'static>> {
        self.current.load().cert.clone()
    }

    /// Takes a TLS connection through its handshake. A connection whose
    /// first byte is not a TLS handshake (a plain HTTP request) gets a
    /// plain-text 400 that says to use `https://`, and an error. Unbounded:
    /// the caller gives it a deadline.
    pub(crate) async fn accept(&self, mut stream: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        let mut first = [0u8; 1];
        if stream.peek(&mut first).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if first[0] != TLS_HANDSHAKE_RECORD {
            refuse_plain_http(&mut stream).await;
            return Err(io::Error::other("plain HTTP on the TLS port: answered 400"));
        }
        self.acceptor.accept(stream).await
    }

    /// Checks the files every [`RELOAD_INTERVAL`] and loads them again when
    /// either changed. Runs until dropped (the gateway aborts it when it
    /// stops serving).
    pub(crate) async fn watch(self) {
        let mut ticks = tokio::time::interval(RELOAD_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        let mut seen = self.loaded;
        loop {
            ticks.tick().await;
            // `stat`, and reading the files when they changed, block: off
            // the runtime's workers, which a slow (network) filesystem
            // would otherwise stall.
            let tls = self.clone();
            match tokio::task::spawn_blocking(move || tls.reload_if_changed(seen)).await {
                Ok(now) => seen = now,
                Err(_) => return,
            }
        }
    }

    /// Loads the files again if they no longer look as they did (`seen`):
    /// on success new handshakes get the new certificate; on failure one
    /// error is logged and the previous certificate stays. Returns the
    /// files as they look now. Blocking.
    fn reload_if_changed(&self, seen: Stamps) -> Stamps {
        // Looked at before reading: a change while reading is seen next time.
        let now = self.files.stamps();
        if now == seen {
            return now;
        }
        match self.files.load() {
            Ok(certified) => {
                self.current.store(Arc::new(certified));
                tracing::info!(
                    "TLS certificate reloaded from `{}` and `{}`",
                    self.files.cert.display(),
                    self.files.key.display()
                );
            }
            // A renewal that writes one file and then the other passes
            // through a mismatched pair, and one that sets the owner last
            // through an unreadable file: logged once, tried again on every
            // tick until it loads.
            Err(error) => {
                let error = error.to_string();
                let mut failure = self.failure.lock().expect("not poisoned");
                if failure.as_deref() != Some(&error) {
                    tracing::error!("TLS certificate not reloaded, still serving the previous one: {error}");
                    *failure = Some(error);
                }
                return Stamps { cert: None, key: None };
            }
        }
        *self.failure.lock().expect("not poisoned") = None;
        now
    }
}

impl Files {
    fn stamps(&self) -> Stamps {
        let stamp = |path: &Path| {
            let metadata = std::fs::metadata(path).ok()?;
            Some((metadata.modified().ok()?, metadata.len(), metadata.ino(), (metadata.ctime(), metadata.ctime_nsec())))
        };
        Stamps { cert: stamp(&self.cert), key: stamp(&self.key) }
    }

    /// Reads the pair and checks that the key is the certificate's.
    fn load(&self) -> Result<CertifiedKey, TlsError> {
        let cert_pem = read("certificate", &self.cert)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem).collect::<Result<Vec<_>, _>>().map_err(|source| {
            TlsError::Pem { what: "certificate", path: self.cert.clone(), reason: pem_reason(&source) }
        })?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate { path: self.cert.clone() });
        }
        let key_pem = read("private key", &self.key)?;
        let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
            Ok(key) => key,
            Err(pem::Error::NoItemsFound) => return Err(TlsError::NoKey { path: self.key.clone() }),
            Err(source) => {
                return Err(TlsError::Pem { what: "private key", path: self.key.clone(), reason: pem_reason(&source) });
            }
        };
        let key = self
            .provider
            .key_provider
            .load_private_key(key)
            .map_err(|source| TlsError::BadKey { path: self.key.clone(), source })?;
        let certified = CertifiedKey::new(chain, key);
        match certified.keys_match() {
            // A key type whose public half rustls cannot tell is taken on
            // trust, as rustls's own `CertifiedKey::from_der` does.
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                Err(TlsError::Mismatch { cert: self.cert.clone(), key: self.key.clone() })
            }
            Err(source) => Err(TlsError::BadCertificate { path: self.cert.clone(), source }),
        }
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => TlsError::Missing { what, path: path.to_owned() },
        _ => TlsError::Unreadable { what, path: path.to_owned(), source },
    })
}

/// Gives every handshake the certificate loaded last.
#[derive(Debug)]
struct Resolver(Arc<ArcSwap<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// Answers a plain HTTP client with [`PLAIN_HTTP_REFUSAL`], then reads what
/// it sent for at most [`REFUSAL_LINGER`] so that closing does not reset the
/// connection under the answer.
async fn refuse_plain_http(stream: &mut TcpStream) {
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{PLAIN_HTTP_REFUSAL}",
        PLAIN_HTTP_REFUSAL.len()
    );
    if stream.write_all(response.as_bytes()).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        let mut sink = [0u8; 4096];
        while matches!(stream.read(&mut sink).await, Ok(read) if read > 0) {}
    })
    .await;
}

/// A PEM error in words: the parser's own message shows the lines it
/// quotes as byte arrays.
fn pem_reason(error: &pem::Error) -> String {
    match error {
        pem::Error::MissingSectionEnd { end_marker } => {
            format!("a section has no `{}` line (a file cut short?)", String::from_utf8_lossy(end_marker))
        }
        pem::Error::IllegalSectionStart { line } => {
            format!("`{}` does not start a PEM section", String::from_utf8_lossy(line))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `localhost` and its key, as PEM.
    fn pair() -> (String, String) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (certified.cert.pem(), certified.signing_key.serialize_pem())
    }

    fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Writes through a new file renamed into place, as certificate tools
    /// do: a new inode, so the change is seen even within the filesystem's
    /// timestamp granularity.
    fn replace(path: &Path, contents: &str) {
        let next = path.with_extension("next");
        std::fs::write(&next, contents).unwrap();
        std::fs::rename(&next, path).unwrap();
    }

    fn error(cert: &Path, key: &Path) -> String {
        Tls::load(cert, key).unwrap_err().to_string()
    }

    #[test]
    fn a_matching_pair_loads_and_offers_h2_first() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair();
        let tls = Tls::load(write(dir.path(), "cert.pem", &cert), write(dir.path(), "key.pem", &key)).unwrap();
        assert_eq!(tls.certificate_chain().len(), 1);
        let protocols = &tls.acceptor.config().alpn_protocols;
        assert_eq!(protocols, &[b"h2".to_vec(), b"http/1.1".to_vec()]);
    }

    #[test]
    fn every_bad_pair_is_refused_naming_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair();
        let (_, other_key) = pair();
        let cert = write(dir.path(), "cert.pem", &cert);
        let key = write(dir.path(), "key.pem", &key);
        let other_key = write(dir.path(), "other-key.pem", &other_key);
        let missing = dir.path().join("missing.pem");
        let empty = write(dir.path(), "empty.pem", "");
        let broken = write(dir.path(), "broken.pem", "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n");

        let message = error(&missing, &key);
        assert_eq!(message, format!("certificate file `{}` does not exist", missing.display()));
        let message = error(&cert, &missing);
        assert_eq!(message, format!("private key file `{}` does not exist", missing.display()));
        let message = error(dir.path(), &key);
        assert!(
            message.starts_with(&format!("cannot read certificate file `{}`: ", dir.path().display())),
            "{message}"
        );
        let message = error(&empty, &key);
        assert!(message.starts_with(&format!("no certificate in `{}`", empty.display())), "{message}");
        // The flags swapped: the key file holds no certificate.
        let message = error(&key, &cert);
        assert!(message.starts_with(&format!("no certificate in `{}`", key.display())), "{message}");
        let message = error(&cert, &cert);
        assert!(message.starts_with(&format!("no private key in `{}`", cert.display())), "{message}");
        let message = error(&broken, &key);
        assert!(message.starts_with(&format!("certificate file `{}` is not valid PEM", broken.display())), "{message}");
        let message = error(&cert, &other_key);
        let expected = format!(
            "the private key in `{}` does not match the certificate in `{}`",
            other_key.display(),
            cert.display()
        );
        assert_eq!(message, expected);
    }

    #[test]
    fn a_changed_pair_is_served_and_a_broken_one_keeps_the_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair();
        let (cert_path, key_path) = (write(dir.path(), "cert.pem", &cert), write(dir.path(), "key.pem", &key));
        let tls = Tls::load(&cert_path, &key_path).unwrap();
        let first = tls.certificate_chain();
        let seen = tls.reload_if_changed(tls.loaded);
        assert_eq!(seen, tls.loaded, "nothing changed");

        let (cert, key) = pair();
        replace(&cert_path, &cert);
        // Half-way through a renewal: the new certificate, the old key.
        let seen = tls.reload_if_changed(seen);
        assert_eq!(tls.certificate_chain(), first, "a mismatched pair is not served");
        replace(&key_path, &key);
        let seen = tls.reload_if_changed(seen);
        let second = tls.certificate_chain();
        assert_ne!(second, first, "the renewed pair is served");

        replace(&key_path, "not a key");
        let seen = tls.reload_if_changed(seen);
        assert_eq!(tls.certificate_chain(), second);
        std::fs::remove_file(&cert_path).unwrap();
        let seen = tls.reload_if_changed(seen);
        assert_eq!(tls.certificate_chain(), second);
        replace(&cert_path, &cert);
        let seen = tls.reload_if_changed(seen);
        assert_eq!(tls.certificate_chain(), second, "the key is still broken");
        // A pair that failed to load is tried again on the next tick,
        // though the files look the same (a key made readable by a `chown`
        // changes nothing else an older stamp saw).
        assert_ne!(seen, tls.files.stamps(), "a failed load is not remembered as seen");
    }
}
