//! The store the replicas share (Valkey / Redis 7+, `sharedState` in the
//! config): request and token buckets, the brute-force guard's counters,
//! web sessions and per-key usage, so that three replicas enforce one
//! limit, not three.
//!
//! ```text
//!  request ──> limits::Buckets ──> Store::buckets ──EVALSHA──> store
//!                    │                  │ (timeout, errors counted by kind)
//!                    │                  └─ Err ─> FailClosed: 503 + Retry-After
//!                    └─ memory (no sharedState, or LocalFallback: limit / replicas)
//! ```
//!
//! Every check-and-update is one Lua script (one atomic round trip), timed
//! by the store's own clock. Connections: a bounded pool of
//! `ConnectionManager`s (each one multiplexed connection that reconnects
//! with backoff by itself); a pool member whose handshake failed (a wrong
//! password, a store that was down at start) is rebuilt from the config's
//! files at most once per [`REBUILD_INTERVAL`], so a fixed password or a
//! returning store needs no restart.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};
use securechat_crds::files::config::SharedStateConfig;
use securechat_crds::v1alpha1::OnUnavailable;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, oneshot};

pub mod sealed;
pub mod usage;

use crate::breaker::Breaker;
use crate::metrics::KindLabels;
use crate::ratelimit::{Admission, Decision, Op, Rate};

/// The bucket script (see its header).
pub const BUCKET_SCRIPT: &str = include_str!("bucket.lua");

/// Connections per server process. Each is multiplexed (requests are
/// pipelined on it), so a few carry thousands of requests a second; more
/// than one keeps one slow reply from queueing every other request.
pub const POOL_SIZE: usize = 4;

/// Script calls for admissions out at once (see [`Store::spawn_batcher`]).
/// One more than one, so that a call's reply and the next call's request
/// overlap; more would split the queue into smaller calls.
pub const ADMISSION_CALLS_IN_FLIGHT: usize = 2;

/// Most admissions in one script call: the store runs nothing else while
/// a script runs, so a call must stay short.
pub const MAX_ADMISSIONS_PER_CALL: usize = 256;

/// Admissions waiting for a call before senders wait for room.
const ADMISSION_QUEUE: usize = 4096;

/// How often idle connections are checked (see [`Store::spawn_keepalive`]).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(500);

/// Least time between two rebuilds of a pool member whose handshake failed.
pub const REBUILD_INTERVAL: Duration = Duration::from_secs(1);

/// Why a store operation failed. `kind()` is the metric label.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the shared store did not answer within {0:?}")]
    Timeout(Duration),
    #[error(
        "the shared store refused the credentials (check sharedState's user and password): {0}"
    )]
    Auth(String),
    #[error("the shared store cannot be reached: {0}")]
    Connection(String),
    #[error("the shared store answered unexpectedly: {0}")]
    Reply(String),
    #[error("sharedState: {0}")]
    Config(String),
}

impl StoreError {
    /// The `kind` label of `securechat_shared_state_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Timeout(_) => "timeout",
            StoreError::Auth(_) => "auth",
            StoreError::Connection(_) => "connection",
            StoreError::Reply(_) => "reply",
            StoreError::Config(_) => "config",
        }
    }

    /// Whether the pool member that failed this way must be rebuilt (its
    /// handshake failed; the connection manager only retries I/O errors).
    fn needs_rebuild(&self) -> bool {
        matches!(self, StoreError::Auth(_) | StoreError::Config(_))
    }
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        if e.kind() == redis::ErrorKind::AuthenticationFailed
            || matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
        {
            StoreError::Auth(e.to_string())
        } else if e.is_timeout() {
            StoreError::Timeout(Duration::ZERO)
        } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
            StoreError::Connection(e.to_string())
        } else {
            StoreError::Reply(e.to_string())
        }
    }
}

/// What `/readyz` reports about the store.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StoreHealth {
    /// `ok`, or `unavailable` since the last failed operation until the
    /// next good one.
    pub status: &'static str,
    /// The last failure, while unavailable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `FailClosed` or `LocalFallback`.
    pub on_unavailable: OnUnavailable,
}

/// The metrics the store reports into (clones of the registry's families).
#[derive(Clone)]
pub struct StoreMetrics {
    pub errors: Family<KindLabels, Counter>,
    /// 1 while limits are enforced locally (LocalFallback, store down).
    pub fallback: Gauge,
}

/// One request's admission (see [`Store::admit`]), its names prefixed.
struct QueuedAdmission {
    keys: Vec<String>,
    rates: Vec<Rate>,
    /// The first `guards` of `keys`.
    guards: usize,
    op: Op,
    cost: f64,
}

type AdmissionReply = oneshot::Sender<Result<[i64; 6], StoreError>>;

struct Member {
    manager: ArcSwap<ConnectionManager>,
    rebuilt: Mutex<Instant>,
}

/// A connection pool to the shared store and the scripts it runs.
pub struct Store {
    config: SharedStateConfig,
    /// Directory that relative file paths in `config` are read from.
    base: PathBuf,
    pool: Vec<Member>,
    next: AtomicUsize,
    bucket_script: redis::Script,
    /// The batcher's queue, once it runs.
    admissions: OnceLock<mpsc::Sender<(QueuedAdmission, AdmissionReply)>>,
    /// `usage::USAGE_SCRIPT`, hashed once.
    usage_script: redis::Script,
    /// `config.replicas` as the last config reload said: scaling the model
    /// rewrites it without rolling the pods (the operator leaves it out of
    /// the pod template's checksum), so LocalFallback's share follows.
    replicas: AtomicU32,
    last_error: Mutex<Option<StoreError>>,
    metrics: StoreMetrics,
    /// Every operation goes through it when set (see [`Store::with_breaker`]).
    breaker: Option<Arc<Breaker>>,
}

impl Store {
    /// Builds the pool without connecting (connections are made on first
    /// use and remade when they fail), so a store that is down at start
    /// delays nothing. Fails only on a config it can never use.
    pub fn new(
        config: SharedStateConfig,
        base: &Path,
        metrics: StoreMetrics,
    ) -> Result<Self, StoreError> {
        let mut pool = Vec::with_capacity(POOL_SIZE);
        for _ in 0..POOL_SIZE {
            pool.push(Member {
                manager: ArcSwap::from_pointee(manager(&config, base)?),
                rebuilt: Mutex::new(Instant::now()),
            });
        }
        Ok(Self {
            replicas: AtomicU32::new(config.replicas),
            config,
            base: base.to_path_buf(),
            pool,
            next: AtomicUsize::new(0),
            bucket_script: redis::Script::new(BUCKET_SCRIPT),
            admissions: OnceLock::new(),
            usage_script: redis::Script::new(usage::USAGE_SCRIPT),
            last_error: Mutex::new(None),
            metrics,
            breaker: None,
        })
    }

    /// Puts every operation, the keepalive's pings included, behind
    /// `breaker`: once it opens, operations fail at once (the last failure
    /// stays the store's state, so LocalFallback or FailClosed applies
    /// without waiting for a timeout per request) until a ping or request
    /// probes after the cool-down.
    pub fn with_breaker(mut self, breaker: Arc<Breaker>) -> Self {
        self.breaker = Some(breaker);
        self
    }

    pub fn config(&self) -> &SharedStateConfig {
        &self.config
    }

    /// The model's replica count, as the current config file says.
    pub fn replicas(&self) -> u32 {
        self.replicas.load(Ordering::Relaxed)
    }

    /// Takes the replica count of a reloaded config.
    pub fn set_replicas(&self, replicas: u32) {
        self.replicas.store(replicas, Ordering::Relaxed);
    }

    /// The store's key for `name` (the model's prefix first).
    pub fn key(&self, name: &str) -> String {
        format!("{}{}", self.config.key_prefix, name)
    }

    pub fn health(&self) -> StoreHealth {
        let error = self
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        StoreHealth {
            status: if error.is_some() { "unavailable" } else { "ok" },
            error: error.map(|e| e.to_string()),
            on_unavailable: self.config.on_unavailable,
        }
    }

    /// Pings the store on every pooled connection (so that a probe sees a
    /// store that came back, or a password that stopped working, without
    /// waiting for traffic) and reports its state.
    pub async fn probe(&self) -> StoreHealth {
        for member in &self.pool {
            let _ = self
                .guarded(member, |mut conn| async move {
                    redis::cmd("PING").query_async::<String>(&mut conn).await
                })
                .await;
        }
        self.health()
    }

    /// Probes every [`KEEPALIVE_INTERVAL`] until the store is dropped: a
    /// connection that broke while idle is remade before a request needs
    /// it, and a store that came back is noticed (log line, fallback
    /// gauge) without waiting for traffic.
    pub fn spawn_keepalive(self: &Arc<Self>) {
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(KEEPALIVE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(store) = store.upgrade() else { return };
                store.probe().await;
            }
        });
    }

    /// Applies a bucket operation to every named bucket at once (see
    /// `ratelimit::decide`); names are prefixed here.
    pub async fn buckets(
        &self,
        op: Op,
        buckets: &[(&str, Rate)],
        cost: f64,
    ) -> Result<Decision, StoreError> {
        match self.admit(&[], op, buckets, cost).await? {
            Admission::Decided(decision) => Ok(decision),
            Admission::Throttled { .. } => Err(self.failed(StoreError::Reply(
                "the bucket script refused a guard it was not given".into(),
            ))),
        }
    }

    /// Checks the `guards` (each must hold one unit; nothing is taken from
    /// them) and, if they pass, applies `op` to `buckets`: everything a
    /// request checks and updates, in one script. The script call carries
    /// every admission queued while the previous calls were on their way
    /// (see [`Store::spawn_batcher`]); without a batcher it goes alone.
    pub async fn admit(
        &self,
        guards: &[(&str, Rate)],
        op: Op,
        buckets: &[(&str, Rate)],
        cost: f64,
    ) -> Result<Admission, StoreError> {
        let named = guards.iter().chain(buckets);
        let admission = QueuedAdmission {
            keys: named.clone().map(|(name, _)| self.key(name)).collect(),
            rates: named.map(|&(_, rate)| rate).collect(),
            guards: guards.len(),
            op,
            cost,
        };
        let reply = match self.admissions.get() {
            None => self.send_admissions(&[admission]).await?.remove(0),
            Some(queue) => {
                let (reply, answer) = oneshot::channel();
                // The batch's call has the store's timeout; this one also
                // covers the wait for a free slot (at most one other call).
                let budget = self.config.timeout.as_std() * 2;
                let queued = async {
                    queue.send((admission, reply)).await.ok()?;
                    answer.await.ok()
                };
                match tokio::time::timeout(budget, queued).await {
                    Ok(Some(reply)) => reply?,
                    Ok(None) => {
                        return Err(self.failed(StoreError::Connection(
                            "the shared store's batcher has stopped".into(),
                        )));
                    }
                    Err(_) => return Err(self.failed(StoreError::Timeout(budget))),
                }
            }
        };
        let millis = |n: i64| Duration::from_millis(u64::try_from(n).unwrap_or(0));
        match reply {
            [0, _, retry, _, 1, _] => Ok(Admission::Throttled {
                retry_after: millis(retry),
            }),
            [1, remaining, _, reset, 0, bucket] => Ok(Admission::Decided(Decision::Allowed {
                remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
                reset: millis(reset),
                bucket: usize::try_from(bucket).unwrap_or(0),
            })),
            [0, _, retry, _, 0, _] => Ok(Admission::Decided(Decision::Denied {
                retry_after: millis(retry),
            })),
            other => Err(self.failed(StoreError::Reply(format!(
                "the bucket script returned {other:?}"
            )))),
        }
    }

    /// Starts the task that sends queued admissions to the store, many to
    /// a script call: under load each request's call used to be one
    /// round trip, one write and read on both sides and one script start;
    /// now a call carries what arrived while the previous ones were on
    /// their way. At most [`ADMISSION_CALLS_IN_FLIGHT`] calls are out at
    /// once, so a lone request goes at once and a busy server's requests
    /// share calls. The admissions of one call are applied in order, each
    /// exactly as if alone. Stops when the store is dropped.
    pub fn spawn_batcher(self: &Arc<Self>) {
        let (queue, mut queued) = mpsc::channel(ADMISSION_QUEUE);
        if self.admissions.set(queue).is_err() {
            return;
        }
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(ADMISSION_CALLS_IN_FLIGHT));
            let mut batch = Vec::with_capacity(MAX_ADMISSIONS_PER_CALL);
            loop {
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                if queued.recv_many(&mut batch, MAX_ADMISSIONS_PER_CALL).await == 0 {
                    return;
                }
                let Some(store) = store.upgrade() else { return };
                let batch =
                    std::mem::replace(&mut batch, Vec::with_capacity(MAX_ADMISSIONS_PER_CALL));
                tokio::spawn(async move {
                    let (admissions, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                    match store.send_admissions(&admissions).await {
                        Ok(answers) => {
                            for (reply, answer) in replies.into_iter().zip(answers) {
                                let _ = reply.send(Ok(answer));
                            }
                        }
                        Err(e) => {
                            for reply in replies {
                                let _ = reply.send(Err(e.clone()));
                            }
                        }
                    }
                    drop(slot);
                });
            }
        });
    }

    /// One script call for `admissions`: their answers in order.
    async fn send_admissions(
        &self,
        admissions: &[QueuedAdmission],
    ) -> Result<Vec<[i64; 6]>, StoreError> {
        let mut invocation = self.bucket_script.prepare_invoke();
        invocation.arg(admissions.len());
        for a in admissions {
            for key in &a.keys {
                invocation.key(key);
            }
            invocation
                .arg(a.op.as_str())
                .arg(a.cost)
                .arg(a.guards)
                .arg(a.keys.len());
            for rate in &a.rates {
                invocation.arg(rate.capacity).arg(rate.per_second);
            }
        }
        let reply: Vec<i64> = self
            .run(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await?;
        if reply.len() != 6 * admissions.len() {
            return Err(self.failed(StoreError::Reply(format!(
                "the bucket script returned {} numbers for {} admissions",
                reply.len(),
                admissions.len()
            ))));
        }
        Ok(reply
            .chunks_exact(6)
            .map(|answer| {
                [
                    answer[0], answer[1], answer[2], answer[3], answer[4], answer[5],
                ]
            })
            .collect())
    }

    /// Stores `value` under `name` for `ttl` (at least a millisecond).
    pub async fn set(&self, name: &str, value: Vec<u8>, ttl: Duration) -> Result<(), StoreError> {
        let key = self.key(name);
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.run(|mut conn| async move {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(millis)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.key(name);
        self.run(|mut conn| async move {
            redis::cmd("GET")
                .arg(key)
                .query_async::<Option<Vec<u8>>>(&mut conn)
                .await
        })
        .await
    }

    /// Reads and deletes in one step (GETDEL): exactly one caller gets it.
    pub async fn take(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.key(name);
        self.run(|mut conn| async move {
            redis::cmd("GETDEL")
                .arg(key)
                .query_async::<Option<Vec<u8>>>(&mut conn)
                .await
        })
        .await
    }

    pub async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let key = self.key(name);
        self.run(|mut conn| async move {
            redis::cmd("DEL")
                .arg(key)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    /// Runs one operation on the next pool member under the timeout,
    /// counting and remembering failures.
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
        self.guarded(&self.pool[index], op).await
    }

    /// [`Store::run_on`] under the breaker, if there is one. A reply the
    /// store gave (a script error) is an answer, not an outage.
    async fn guarded<T, F, Fut>(&self, member: &Member, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let Some(breaker) = &self.breaker else {
            return self.run_on(member, op).await;
        };
        let call = self.run_on(member, op);
        match breaker
            .call(call, |e| !matches!(e, StoreError::Reply(_)))
            .await
        {
            Ok(result) => result,
            // Not counted again: the failures that opened it were.
            Err(refused) => Err(StoreError::Connection(refused.to_string())),
        }
    }

    async fn run_on<T, F, Fut>(&self, member: &Member, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let conn = ConnectionManager::clone(&member.manager.load());
        let timeout = self.config.timeout.as_std();
        let result = match tokio::time::timeout(timeout, op(conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(match StoreError::from(e) {
                StoreError::Timeout(_) => StoreError::Timeout(timeout),
                other => other,
            }),
            Err(_) => Err(StoreError::Timeout(timeout)),
        };
        match result {
            Ok(value) => {
                self.recovered();
                Ok(value)
            }
            Err(e) => {
                if e.needs_rebuild() {
                    self.rebuild(member);
                }
                Err(self.failed(e))
            }
        }
    }

    fn rebuild(&self, member: &Member) {
        let mut rebuilt = member.rebuilt.lock().unwrap_or_else(|e| e.into_inner());
        if rebuilt.elapsed() < REBUILD_INTERVAL {
            return;
        }
        *rebuilt = Instant::now();
        match manager(&self.config, &self.base) {
            Ok(m) => member.manager.store(Arc::new(m)),
            Err(e) => tracing::error!(error = %e, "rebuilding a shared-store connection"),
        }
    }

    /// Counts a failure, logs the first of a run of them, and returns it.
    fn failed(&self, e: StoreError) -> StoreError {
        self.metrics
            .errors
            .get_or_create(&KindLabels {
                kind: e.kind().into(),
            })
            .inc();
        let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none() {
            match self.config.on_unavailable {
                OnUnavailable::FailClosed => tracing::error!(
                    error = %e,
                    "shared store unavailable: limited endpoints answer 503 until it is back"
                ),
                OnUnavailable::LocalFallback => tracing::warn!(
                    error = %e,
                    replicas = self.replicas(),
                    "shared store unavailable: enforcing this replica's share of every limit locally"
                ),
            }
            if self.config.on_unavailable == OnUnavailable::LocalFallback {
                self.metrics.fallback.set(1);
            }
        }
        *last = Some(e.clone());
        e
    }

    fn recovered(&self) {
        let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        if last.take().is_some() {
            tracing::info!("shared store reachable again: limits are global again");
            self.metrics.fallback.set(0);
        }
    }
}

/// Whether a reloaded config's `sharedState` differs from the one this
/// process started with in anything but the replica count (which applies
/// in place). The store, its address, credentials' paths, TLS, timeout
/// and `onUnavailable` are chosen at start: such a change needs a restart,
/// which the operator does by rolling the pods (the setting is in the pod
/// template's config checksum); a standalone server logs that it waits for
/// one.
pub fn restart_needed(
    running: Option<&SharedStateConfig>,
    reloaded: Option<&SharedStateConfig>,
) -> bool {
    let without_replicas = |c: Option<&SharedStateConfig>| {
        c.map(|c| SharedStateConfig {
            replicas: 0,
            ..c.clone()
        })
    };
    without_replicas(running) != without_replicas(reloaded)
}

/// Parses `host:port` (an IPv6 host in brackets).
fn host_port(address: &str) -> Result<(String, u16), StoreError> {
    let bad = || StoreError::Config(format!("address {address:?}: expected host:port"));
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_string(), port.parse().map_err(|_| bad())?))
}

fn read_secret(base: &Path, path: &Path, what: &str) -> Result<String, StoreError> {
    let path = base.join(path);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| StoreError::Config(format!("reading the {what} {}: {e}", path.display())))?;
    // Secrets written by hand often end with a newline the store never saw.
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

/// A lazy connection manager for the config, reading its files now (so a
/// rotated password applies at the next rebuild).
fn manager(config: &SharedStateConfig, base: &Path) -> Result<ConnectionManager, StoreError> {
    let (host, port) = host_port(&config.address)?;
    let mut redis_info = RedisConnectionInfo::default();
    if let Some(path) = &config.username_file {
        redis_info = redis_info.set_username(read_secret(base, path, "user name file")?);
    }
    if let Some(path) = &config.password_file {
        redis_info = redis_info.set_password(read_secret(base, path, "password file")?);
    }
    let client = match &config.tls {
        None => {
            let info = ConnectionAddr::Tcp(host, port)
                .into_connection_info()?
                .set_redis_settings(redis_info);
            redis::Client::open(info)?
        }
        Some(tls) => {
            // The client verifies the certificate against the host it
            // connects to; a different serverName cannot be honoured.
            if let Some(name) = &tls.server_name
                && *name != host
            {
                return Err(StoreError::Config(format!(
                    "tls.serverName {name:?} differs from the address's host {host:?}: \
                     use the name the certificate carries in the address"
                )));
            }
            let ca_path = base.join(&tls.ca_file);
            let ca = std::fs::read(&ca_path).map_err(|e| {
                StoreError::Config(format!("reading tls.caFile {}: {e}", ca_path.display()))
            })?;
            let info = ConnectionAddr::TcpTls {
                host,
                port,
                insecure: false,
                tls_params: None,
            }
            .into_connection_info()?
            .set_redis_settings(redis_info);
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca),
                },
            )?
        }
    };
    let timeout = config.timeout.as_std();
    let manager_config = ConnectionManagerConfig::new()
        // One quick attempt per reconnect: a request waits at most its
        // own timeout, and the next request starts the next attempt.
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(2))
        .set_connection_timeout(Some(timeout.max(Duration::from_millis(500))))
        .set_response_timeout(Some(timeout));
    Ok(ConnectionManager::new_lazy_with_config(
        client,
        manager_config,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_replica_count_applies_without_a_restart() {
        let base: SharedStateConfig =
            serde_yaml::from_str("address: valkey:6379\nkeyPrefix: ns/m/\nreplicas: 2\n").unwrap();
        let scaled = SharedStateConfig {
            replicas: 5,
            ..base.clone()
        };
        assert!(!restart_needed(Some(&base), Some(&scaled)));
        assert!(!restart_needed(None, None));
        let moved = SharedStateConfig {
            address: "valkey-2:6379".into(),
            ..base.clone()
        };
        let fallback = SharedStateConfig {
            on_unavailable: OnUnavailable::LocalFallback,
            ..base.clone()
        };
        for changed in [&moved, &fallback] {
            assert!(restart_needed(Some(&base), Some(changed)));
        }
        assert!(restart_needed(None, Some(&base)));
        assert!(restart_needed(Some(&base), None));
    }

    #[test]
    fn addresses_parse_with_ipv6_brackets() {
        assert_eq!(
            host_port("valkey.ns.svc:6379").unwrap(),
            ("valkey.ns.svc".into(), 6379)
        );
        assert_eq!(host_port("[::1]:6380").unwrap(), ("::1".into(), 6380));
        for bad in ["valkey", ":6379", "valkey:port", "valkey:70000"] {
            assert!(
                matches!(host_port(bad), Err(StoreError::Config(_))),
                "{bad}"
            );
        }
    }
}
