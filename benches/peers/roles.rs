//! Helper processes the harness runs by re-executing itself: the bare tokio-rustls proxy (the
//! floor of what any rustls server can cost), a plaintext echo upstream, and a crowd of idle
//! clients to SIGKILL.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::load;

/// Runs the role named in `args` if there is one; returns false otherwise.
pub(crate) fn run_if_asked(args: &[String]) -> bool {
    let Some(role) = args.get(1) else {
        return false;
    };
    match role.as_str() {
        "--bare-proxy" => bare_proxy(&args[2], &args[3], &args[4], &args[5]),
        "--echo-upstream" => echo_upstream(&args[2]),
        "--crowd" => crowd(
            &args[2],
            args[3].parse().unwrap(),
            &args[4],
            args.get(5).map(|ip| ip.parse().unwrap()),
        ),
        _ => return false,
    }
    true
}

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap()
}

/// rustls's defaults with one certificate (the crypto provider tlsvisor's build uses): what a
/// tokio-rustls proxy written from its README would serve.
fn bare_config(cert: &str, key: &str) -> std::sync::Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = std::sync::Arc::new(tlsvisor_actors::crypto_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    std::sync::Arc::new(config)
}

/// A TLS-terminating proxy in ~30 lines of tokio-rustls: accept, handshake, connect, copy
/// both ways. No supervision, no metrics, no timeouts: the floor.
fn bare_proxy(listen: &str, upstream: &str, cert: &str, key: &str) {
    let acceptor = tokio_rustls::TlsAcceptor::from(bare_config(cert, key));
    let upstream: SocketAddr = upstream.parse().unwrap();
    runtime(2).block_on(async move {
        let listener = TcpListener::bind(listen).await.unwrap();
        println!("READY");
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = up.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
}

/// Echoes every byte; finishes when the client does.
fn echo_upstream(listen: &str) {
    runtime(1).block_on(async move {
        let listener = TcpListener::bind(listen).await.unwrap();
        println!("READY");
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
}

/// Opens `n` TLS connections (handshake and one PING round trip each), from `source` if given,
/// prints READY, then waits for the server to close each; prints how many saw close_notify.
/// Killed by SIGKILL in the burst measurements.
fn crowd(addr: &str, n: usize, ca: &str, source: Option<std::net::IpAddr>) {
    let addr: SocketAddr = addr.parse().unwrap();
    let ca = std::fs::read(ca).unwrap();
    let config = load::client_config(&ca, true);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let conns = load::open_idle_from(addr, source, Arc::clone(&config), n).await;
            println!("READY {}", conns.len());
            let mut clean = 0;
            let mut tasks = Vec::new();
            for mut conn in conns {
                tasks.push(tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    loop {
                        match conn.read(&mut buf).await {
                            Ok(0) => return true,
                            Ok(_) => continue,
                            Err(_) => return false,
                        }
                    }
                }));
            }
            for task in tasks {
                if task.await.unwrap_or(false) {
                    clean += 1;
                }
            }
            println!("CLEAN {clean}");
        });
}
