//! What runs beside the stage threads: the one tokio runtime for network I/O (sinks, the HTTP
//! endpoint, and MQTT and NATS next), the health table and the metrics recorder.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use skynet_core::Health;
use skynet_serve::ServeError;
use tokio::sync::watch;

pub struct Services {
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    pub health: Health,
    pub metrics: PrometheusHandle,
    /// Where `/metrics`, `/healthz`, `/readyz` and `/platforms` are served, when they are.
    pub http: Option<SocketAddr>,
    /// What `/platforms` lists: the pipeline registers one report per platform.
    pub platforms: skynet_serve::PlatformReports,
    stop_http: watch::Sender<bool>,
    /// Where the console is served, when it is.
    console: Mutex<Option<SocketAddr>>,
}

impl Services {
    /// Starts the runtime (2 worker threads: I/O only, the heavy work has its own threads),
    /// installs the metrics recorder, and serves HTTP on `listen` when given.
    pub fn start(listen: Option<SocketAddr>) -> Result<Self, ServeError> {
        Self::start_with_token(listen, None)
    }

    /// [`start`](Self::start), with `[metrics] auth_token` required on `/metrics` and
    /// `/readyz`.
    pub fn start_with_token(
        listen: Option<SocketAddr>,
        auth_token: Option<skynet_core::Secret>,
    ) -> Result<Self, ServeError> {
        let metrics = skynet_serve::install_metrics()?;
        // Every crate's metric descriptions, now that a recorder takes them.
        crate::describe_metrics();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("io")
            .enable_all()
            .build()
            .map_err(|e| ServeError::Recorder(format!("the I/O runtime could not start: {e}")))?;
        let handle = runtime.handle().clone();
        let health = Health::new();
        let platforms = skynet_serve::PlatformReports::default();
        let (stop_http, mut stopped) = watch::channel(false);
        let mut http = None;
        if let Some(listen) = listen {
            let listener = skynet_serve::bind(listen)?;
            http = listener.local_addr().ok();
            let (metrics, health, reports) = (metrics.clone(), health.clone(), platforms.clone());
            handle.spawn(async move {
                let shutdown = async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                };
                if let Err(e) = skynet_serve::serve_ops(
                    listener, metrics, health, reports, auth_token, shutdown,
                )
                .await
                {
                    tracing::error!(error = %e, "the HTTP endpoint stopped");
                }
            });
        }
        Ok(Self {
            runtime: Mutex::new(Some(runtime)),
            handle,
            health,
            metrics,
            http,
            platforms,
            stop_http,
            console: Mutex::new(None),
        })
    }

    /// Binds `listen` now (a taken port fails the start clearly) and serves the console
    /// there until [`stop`](Self::stop).
    pub fn serve_console(
        &self,
        listen: SocketAddr,
        console: std::sync::Arc<skynet_serve::console::Console>,
    ) -> Result<SocketAddr, ServeError> {
        // A bad certificate or key stops the start, naming the file.
        let tls = skynet_serve::console_tls(console.config())?;
        warn_insecure(console.config());
        let listener = skynet_serve::bind(listen)?;
        let addr = listener.local_addr().unwrap_or(listen);
        let mut stopped = self.stop_http.subscribe();
        self.handle.spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            if let Err(e) = skynet_serve::serve_console(listener, console, tls, shutdown).await {
                tracing::error!(error = %e, "the console stopped");
            }
        });
        *self
            .console
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(addr);
        Ok(addr)
    }

    /// Where the console is served, once it is.
    pub fn console_addr(&self) -> Option<SocketAddr> {
        *self
            .console
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn runtime(&self) -> tokio::runtime::Handle {
        self.handle.clone()
    }

    /// Stops the HTTP endpoint and the runtime; tasks still blocked (a sink writing into a
    /// full pipe) are abandoned after a second.
    pub fn stop(&self) {
        let _ = self.stop_http.send(true);
        if let Some(runtime) = self.take_runtime() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }

    fn take_runtime(&self) -> Option<tokio::runtime::Runtime> {
        self.runtime
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        if let Some(runtime) = self.take_runtime() {
            // Never block a drop on a task that will not end.
            runtime.shutdown_background();
        }
    }
}

/// Says what an operator should know before people log in over this listener: passwords,
/// session cookies and tokens cross the network in clear unless TLS protects them.
fn warn_insecure(config: &skynet_serve::console::ApiConfig) {
    if config.insecure_cookie_forced {
        tracing::warn!(
            listen = %config.listen,
            "[api] secure_cookie = false on a listener beyond loopback: browsers send the session cookie over plain HTTP, where anyone on the path can read it and act as the user"
        );
    }
    if config.listen.ip().is_unspecified()
        && config.hosts == skynet_serve::console::ApiConfig::local(config.listen).hosts
    {
        tracing::warn!(
            listen = %config.listen,
            "the console listens on every address but [api] hosts is the default (localhost and the loopback addresses): requests by this machine's name or network address answer 421; list the names people use in [api] hosts"
        );
    }
    if !config.listen.ip().is_loopback() && config.tls.is_none() {
        tracing::warn!(
            listen = %config.listen,
            "the console listens beyond loopback without [api] tls_cert: passwords, session cookies and API tokens cross the network in clear unless a TLS proxy fronts it"
        );
    }
}

/// The outbox's retention and disk watch, on a thread of its own with its own connection
/// (never on the commit thread): `[outbox] retain_days` for events and the history tables,
/// `max_lag_days` for a sink that stays down, `min_free_mb` for `/readyz`. Its health
/// component is `disk` (kind `storage`): up, with the detail `degraded` while the free space
/// is below the minimum.
pub(crate) fn start_pruner(
    config: &crate::config::PipelineConfig,
    health: &Health,
    sinks: Vec<String>,
) -> Result<skynet_emit::Pruner, super::PipelineError> {
    skynet_emit::spawn_pruner(
        &config.outbox,
        skynet_emit::PruneOptions {
            retention: config.outbox_retention,
            max_lag: config.outbox_max_lag,
            sinks,
            min_free_bytes: config.outbox_min_free_bytes,
        },
        health.register("disk", "storage"),
    )
    .map_err(|source| super::PipelineError::Spawn {
        stage: "outbox-prune".into(),
        source,
    })
}
