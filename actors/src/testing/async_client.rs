//! An async TLS client for tests that run inside an actix system or a tokio runtime.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::client::CloseSeen;

/// How long any single step may take before a test call fails (a hang, not a result).
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A tokio-rustls client over a real TCP socket, the async counterpart of
/// [`TlsClient`](super::client::TlsClient).
pub struct AsyncTlsClient {
    stream: TlsStream<TcpStream>,
}

/// Runs `step` under the harness's I/O time limit.
async fn bounded<T>(step: impl std::future::Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(IO_TIMEOUT, step)
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "test client step")))
}

impl AsyncTlsClient {
    /// Connects to `addr` as `localhost` and completes the handshake.
    pub async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> io::Result<Self> {
        let tcp = bounded(TcpStream::connect(addr)).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from("localhost").map_err(io::Error::other)?;
        let stream = bounded(TlsConnector::from(config).connect(name, tcp)).await?;
        Ok(AsyncTlsClient { stream })
    }

    /// Writes `data` and flushes it out of rustls to the socket.
    pub async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        bounded(async {
            self.stream.write_all(data).await?;
            self.stream.flush().await
        })
        .await
    }

    /// Sends `data` and reads back exactly as many bytes.
    pub async fn echo(&mut self, data: &[u8]) -> io::Result<Vec<u8>> {
        self.send(data).await?;
        let mut back = vec![0; data.len()];
        bounded(self.stream.read_exact(&mut back)).await?;
        Ok(back)
    }

    /// Ends the connection properly: `close_notify` and a FIN, then waits for the server's
    /// own end, and says how it came.
    pub async fn close(mut self) -> CloseSeen {
        if let Err(e) = bounded(self.stream.shutdown()).await {
            return CloseSeen::Error(e);
        }
        self.read_until_close().await
    }

    /// Reads and discards until the server ends the connection, and says how it did.
    pub async fn read_until_close(&mut self) -> CloseSeen {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match bounded(self.stream.read(&mut buf)).await {
                // tokio-rustls reads 0 once close_notify has arrived.
                Ok(0) => return CloseSeen::CloseNotifyThenEof,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return CloseSeen::EofWithoutCloseNotify
                }
                Err(e) => return CloseSeen::Error(e),
            }
        }
    }
}
