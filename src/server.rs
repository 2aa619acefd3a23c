//! `labroute serve`: wires listeners, the store writer, destination workers and the admin
//! endpoint, and shuts them down in order.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::config::Config;
use crate::sources::mllp::{ConnLimits, run_listener};
use crate::store::{Store, StoreError, StoreHandle, WriterConfig};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("listener {0} needs TLS but the routes have no [tls] section")]
    NoTls(String),
    #[error("cannot listen on {addr} (listener {name}): {source}")]
    Bind {
        name: String,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Binds a listener; the address it got (port 0 picks one).
async fn bind(
    name: &str,
    at: std::net::SocketAddr,
) -> Result<(TcpListener, std::net::SocketAddr), ServeError> {
    let listener = TcpListener::bind(at)
        .await
        .map_err(|source| ServeError::Bind {
            name: name.to_owned(),
            addr: at,
            source,
        })?;
    let addr = listener.local_addr().unwrap_or(at);
    Ok((listener, addr))
}

/// What an HTTPS endpoint (admin, FHIR) is started with.
struct HttpsContext<'a> {
    tls: &'a Option<Arc<crate::tls::TlsState>>,
    refusals: &'a Arc<crate::sources::accept::RefusalLimiter>,
    store: &'a StoreHandle,
    shutdown: &'a watch::Receiver<bool>,
    /// The admin endpoint's peers that need no certificate for metrics and health.
    open_to: Arc<[std::net::IpAddr]>,
}

impl HttpsContext<'_> {
    /// Binds the endpoint `name` (it needs `[tls]`) and spawns `serve` on it.
    async fn start<F, Fut>(
        &self,
        name: &'static str,
        at: std::net::SocketAddr,
        serve: F,
    ) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>), ServeError>
    where
        F: FnOnce(
            TcpListener,
            StoreHandle,
            crate::sources::accept::TlsListener,
            watch::Receiver<bool>,
        ) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let state = self
            .tls
            .clone()
            .ok_or_else(|| ServeError::NoTls(name.into()))?;
        let (listener, addr) = bind(name, at).await?;
        tracing::info!(%addr, endpoint = name, "listening (HTTPS)");
        let tls = crate::sources::accept::TlsListener {
            state,
            refusals: self.refusals.clone(),
            open_to: if name == crate::admin::http::LISTENER {
                self.open_to.clone()
            } else {
                Arc::from(Vec::new())
            },
        };
        let task = tokio::spawn(serve(
            listener,
            self.store.clone(),
            tls,
            self.shutdown.clone(),
        ));
        Ok((addr, task))
    }
}

/// A running instance.
pub struct Server {
    /// The instance's TLS configurations (reloadable), when `[tls]` is set.
    pub tls: Option<Arc<crate::tls::TlsState>>,
    /// Reloads the routes (`crate::reload`).
    pub reloader: crate::reload::Reloader,
    pub store: StoreHandle,
    pub bound: Vec<(String, std::net::SocketAddr)>,
    /// Where the admin endpoint listens, when `[admin]` is set.
    pub admin: Option<std::net::SocketAddr>,
    /// Where the FHIR endpoint listens, when `[fhir] bind` is set.
    pub fhir: Option<std::net::SocketAddr>,
    shutdown: watch::Sender<bool>,
    slots: Arc<Semaphore>,
    max_connections: usize,
    drain: Duration,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Opens the store, binds every listener and starts every worker.
    pub async fn start(cfg: Arc<Config>, data_dir: PathBuf) -> Result<Server, ServeError> {
        Server::start_with(cfg, data_dir, None).await
    }

    /// [`Server::start`] for a configuration read from `routes`, the directory a reload
    /// (SIGHUP, `POST /reload`) reads again.
    pub async fn start_with(
        cfg: Arc<Config>,
        data_dir: PathBuf,
        routes: Option<PathBuf>,
    ) -> Result<Server, ServeError> {
        crate::telemetry::install();
        crate::telemetry::register(&cfg);
        let tls = match &cfg.tls {
            Some(files) => Some(crate::tls::TlsState::load(files)?),
            None => None,
        };
        let store = Store::open(&data_dir)?;
        let handle = StoreHandle::open(
            store,
            cfg.clone(),
            WriterConfig {
                max_batch: cfg.engine.group_commit_max,
                sealer: tls.as_ref().map(|t| {
                    Arc::new(crate::store::audit::Sealer::new(
                        t.clone(),
                        cfg.engine.audit_seal_every,
                    ))
                }),
            },
        )
        .await?;
        let (shutdown, rx) = watch::channel(false);
        let slots = Arc::new(Semaphore::new(cfg.engine.max_connections));
        let limits = ConnLimits {
            max_frame: cfg.engine.max_frame_bytes,
            idle_timeout: cfg.engine.idle_timeout,
            frame_timeout: cfg.engine.frame_timeout,
        };
        let admission = Arc::new(crate::sources::mllp::Admission::new(
            slots.clone(),
            cfg.engine.max_connections_per_peer,
        ));
        let mut tasks = Vec::new();
        let mut bound = Vec::new();
        let refusals = Arc::new(crate::sources::accept::RefusalLimiter::default());
        for l in &cfg.listeners {
            let listener_tls = if l.insecure {
                None
            } else {
                Some(
                    tls.clone()
                        .ok_or_else(|| ServeError::NoTls(l.name.to_string()))?,
                )
            };
            let (listener, addr) = bind(l.name.as_str(), l.bind).await?;
            tracing::info!(listener = %l.name, %addr, tls = listener_tls.is_some(), "listening (MLLP)");
            bound.push((l.name.to_string(), addr));
            tasks.push(tokio::spawn(run_listener(
                listener,
                l.name.to_string(),
                limits.clone(),
                admission.clone(),
                handle.clone(),
                listener_tls.map(|state| crate::sources::accept::TlsListener {
                    state,
                    refusals: refusals.clone(),
                    open_to: Arc::from(Vec::new()),
                }),
                rx.clone(),
            )));
        }
        // The destination workers belong to the reload task, which replaces them when the
        // routes change and stops them at shutdown.
        let (reloader, reload_task) =
            crate::reload::start(handle.clone(), tls.clone(), routes, rx.clone());
        tasks.push(reload_task);
        let https = HttpsContext {
            tls: &tls,
            refusals: &refusals,
            store: &handle,
            shutdown: &rx,
            open_to: Arc::from(
                cfg.admin
                    .as_ref()
                    .map(|a| a.without_certificate.clone())
                    .unwrap_or_default(),
            ),
        };
        let mut admin = None;
        if let Some(a) = &cfg.admin {
            let r = reloader.clone();
            let (addr, task) = https
                .start(
                    crate::admin::http::LISTENER,
                    a.bind,
                    move |listener, store, tls, shutdown| {
                        crate::admin::http::serve(listener, store, tls, shutdown, r)
                    },
                )
                .await?;
            admin = Some(addr);
            tasks.push(task);
        }
        let mut fhir = None;
        if let Some(at) = cfg.fhir.bind {
            let (addr, task) = https
                .start(
                    crate::sources::fhir::LISTENER,
                    at,
                    crate::sources::fhir::serve,
                )
                .await?;
            fhir = Some(addr);
            tasks.push(task);
        }
        Ok(Server {
            tls,
            reloader,
            store: handle,
            bound,
            admin,
            fhir,
            shutdown,
            slots,
            max_connections: cfg.engine.max_connections,
            drain: cfg.engine.drain,
            tasks,
        })
    }

    /// Reloads the routes: from the directory it was started from, or `cfg` (validated the
    /// same way). What is now in force, or why nothing changed.
    pub async fn reload(&self, cfg: Option<Config>) -> Result<String, String> {
        let source = match cfg {
            Some(c) => crate::reload::Source::Config(Box::new(c)),
            None => crate::reload::Source::Disk,
        };
        self.reloader.reload(source).await
    }

    /// Address a listener is bound to.
    pub fn addr(&self, listener: &str) -> Option<std::net::SocketAddr> {
        self.bound
            .iter()
            .find(|(n, _)| n == listener)
            .map(|(_, a)| *a)
    }

    /// Stops accepting, lets in-flight work end, and returns once the store is closed, so
    /// that it can be reopened at once (a restart, an operator command); all within the
    /// configured `[engine] drain_secs`. A message whose commit had not answered is not
    /// acknowledged: the sender sends it again. Whether everything ended in time.
    pub async fn shutdown(self) -> bool {
        let drain = self.drain;
        self.shutdown_within(drain).await
    }

    /// [`Server::shutdown`] within `limit`.
    pub async fn shutdown_within(self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        let _ = self.shutdown.send(true);
        let mut clean = true;
        for t in self.tasks {
            clean &= tokio::time::timeout_at(deadline, t).await.is_ok();
        }
        // Every connection task holds a slot: all slots back means all connections ended.
        let permits = u32::try_from(self.max_connections).unwrap_or(u32::MAX);
        let drained = tokio::time::timeout_at(deadline, self.slots.acquire_many(permits)).await;
        if drained.is_err() {
            clean = false;
            tracing::warn!(
                drain_secs = limit.as_secs(),
                "connections still open at the end of the drain; closing anyway"
            );
        }
        let closed = self.store.closed();
        drop(self.store);
        // The store's last commit is waited for even past the deadline (bounded): what a
        // sender was acknowledged is already durable, and the writer only finishes a batch.
        let grace = deadline.max(tokio::time::Instant::now() + Duration::from_secs(5));
        if tokio::time::timeout_at(grace, closed).await.is_err() {
            clean = false;
            tracing::warn!("store writer still busy at the end of the drain");
        }
        clean
    }
}
