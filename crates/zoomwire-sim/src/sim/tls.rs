//! The simulator over TLS, for what must not go over plain HTTP: recording
//! downloads carry a bearer token, which zoomwire sends only over https.
//!
//! With [`SimTls`] in its configuration the simulator also listens on a
//! second port with TLS (the same routes), and the files it describes
//! (`download_url`, `play_url`, `share_url`, `join_url`) point there; the
//! token, REST, WebSocket and Slack endpoints stay on the plain port. The
//! certificate comes from the caller (tests make one with `openssl`), whose
//! CA the client must trust. [`TlsListener`] serves any axum router this way.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A handshake that takes longer is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The simulator's TLS identity: a certificate chain and its key, in PEM.
#[derive(Clone)]
pub struct SimTls {
    pub cert_chain_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for SimTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimTls").finish_non_exhaustive()
    }
}

impl SimTls {
    /// Reads the two PEM files.
    pub fn from_files(cert_chain: &std::path::Path, key: &std::path::Path) -> io::Result<SimTls> {
        Ok(SimTls {
            cert_chain_pem: std::fs::read(cert_chain)?,
            key_pem: std::fs::read(key)?,
        })
    }

    fn acceptor(&self) -> io::Result<TlsAcceptor> {
        let invalid = |what: &str, e: &dyn fmt::Display| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {e}"))
        };
        let chain = CertificateDer::pem_slice_iter(&self.cert_chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("the certificate chain", &e))?;
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| invalid("the private key", &e))?;
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| invalid("the certificate", &e))?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// A TCP listener whose connections are TLS, for `axum::serve`.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, tls: &SimTls) -> io::Result<TlsListener> {
        Ok(TlsListener {
            tcp,
            acceptor: tls.acceptor()?,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (tcp, addr) = match self.tcp.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::debug!(error = %error, "simulator cannot accept a tls connection");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => return (stream, addr),
                Ok(Err(error)) => {
                    tracing::debug!(error = %error, "simulator tls handshake failed")
                }
                Err(_) => tracing::debug!("simulator tls handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}
