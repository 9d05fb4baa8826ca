//! `tlsvisor serve`: run a server until SIGTERM or SIGINT, then shut it down gracefully.

use actix_rt::signal::unix::{signal, SignalKind};
use slog::{error, info, warn, Logger};
use std::sync::Arc;

use tlsvisor_actors::{Echo, LoadedTls, ProxyConfig, ProxyHeader, Server, ServerConfig};

use crate::cli::{ProtocolKind, ProxyProtocolVersion};
use crate::logging;
use crate::metrics::MetricsServer;
use crate::reload::{self, CertWatcher};
use crate::settings::{CertSource, Settings};
use crate::tls_metrics::TlsCollector;
use crate::BoxError;

/// Runs the server described by `settings` until a signal, then runs the shutdown protocol and
/// returns (exit code 0) once it is done.
pub fn run(settings: Settings) -> Result<(), BoxError> {
    let (log, _flush_on_exit) = logging::build(settings.log_format, settings.log_level);
    raise_fd_limit(&log);
    if settings.cert == CertSource::BuiltIn {
        warn!(log, "USING THE BUILT-IN DEVELOPMENT CERTIFICATE: anyone can impersonate this \
                    server; pass --cert and --key for real use";
            "trust_for_testing" => "certs/ca.crt");
    }
    let tls = reload::build_tls(&settings)?;
    let mut config = ServerConfig::new(settings.listen, Arc::clone(tls.config()));
    config.workers = settings.workers;
    config.max_connections = settings.max_connections;
    config.handshake_timeout = settings.handshake_timeout;
    config.idle_timeout = settings.idle_timeout;
    config.close_timeout = settings.close_timeout;

    actix_rt::System::new().block_on(serve(settings, config, tls, log))
}

async fn serve(
    settings: Settings,
    config: ServerConfig,
    tls: LoadedTls,
    log: Logger,
) -> Result<(), BoxError> {
    // Installed before the server starts, so a signal sent as soon as it listens is handled.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;

    let builder = match (settings.protocol, &settings.upstream) {
        (ProtocolKind::Proxy, Some(upstream)) => {
            let mut proxy = ProxyConfig::new(upstream.clone());
            proxy.connect_timeout = settings.upstream_connect_timeout;
            proxy.proxy_header = settings.proxy_protocol.map(|v| match v {
                ProxyProtocolVersion::V1 => ProxyHeader::V1,
                ProxyProtocolVersion::V2 => ProxyHeader::V2,
            });
            Server::proxy(config, proxy)
        }
        _ => Server::builder(config, Echo),
    };
    let server = builder.logger(log.clone()).tls(tls).start()?;
    let metrics = settings
        .metrics_listen
        .map(|addr| -> Result<_, BoxError> {
            let tls_metrics = Box::new(TlsCollector::new(server.tls_reloader())?);
            MetricsServer::start(addr, server.stats(), vec![tls_metrics], log.clone())
        })
        .transpose()?;
    let _watcher = match settings.watch_certs {
        true => Some(CertWatcher::start(
            settings.clone(),
            server.tls_reloader(),
            log.clone(),
            reload::WATCH_INTERVAL,
        )?),
        false => None,
    };

    let name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    info!(log, "signal received: shutting down";
        "signal" => name, "grace_ms" => settings.shutdown_grace.as_millis() as u64);
    let report = server.shutdown(settings.shutdown_grace).await;
    if report.left_registered > 0 {
        error!(log, "connections still registered after shutdown";
            "left_registered" => report.left_registered);
    }
    drop(metrics);
    Ok(())
}

/// Raises the soft open-files limit to the hard limit: every connection is a descriptor, and the
/// default soft limit (often 1024) is far below `--max-connections`.
fn raise_fd_limit(log: &Logger) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
        }
    };
    if raised {
        info!(log, "open files limit"; "nofile" => limit.rlim_cur);
    } else {
        warn!(log, "could not raise the open files limit"; "error" => %std::io::Error::last_os_error());
    }
}
