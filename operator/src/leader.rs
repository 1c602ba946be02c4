//! Leader election on a coordination.k8s.io/v1 Lease, the protocol client-go
//! uses: the holder renews `renewTime` every `retry_period`; a candidate takes
//! the lease over once `renewTime + leaseDurationSeconds` has passed. Writes
//! carry the resourceVersion they read, so two candidates racing for an
//! expired lease cannot both win (the loser gets 409 Conflict).
//!
//! Why our own: the maintained crate (kube-leader-election 0.44) depends on
//! kube 4, which would put a second kube client into the tree; the protocol
//! is small and its decision is a pure function tested below.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tracing::{info, warn};

use crate::Result;

/// Where the lease lives and how long it lasts.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// Unique per process (pod name, or host + pid).
    pub identity: String,
    /// How long a lease stays valid without renewal: the longest a crashed
    /// leader blocks the others.
    pub lease_duration: Duration,
    /// How often the holder renews and candidates retry.
    pub retry_period: Duration,
}

/// What a candidate should do about the lease it read.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// No lease yet: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it over (one more transition).
    TakeOver { transitions: i32 },
    /// Someone else holds a valid lease until then.
    Wait { until: Timestamp },
}

/// The pure core of the protocol.
pub fn decide(lease: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Decision {
    let Some(spec) = lease else {
        return Decision::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder == identity {
        return Decision::Renew;
    }
    let transitions = spec.lease_transitions.unwrap_or(0) + 1;
    if holder.is_empty() {
        return Decision::TakeOver { transitions };
    }
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0);
    let duration = SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(0).into());
    match renewed.and_then(|r| r.checked_add(duration).ok()) {
        Some(until) if until > now => Decision::Wait { until },
        _ => Decision::TakeOver { transitions },
    }
}

pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
}

impl LeaderElector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
        }
    }

    /// Blocks until this process holds the lease.
    pub async fn acquire(&self) -> Result<()> {
        let mut waiting_logged = false;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(None) => {
                    info!(lease = %self.config.name, identity = %self.config.identity, "became leader");
                    return Ok(());
                }
                Ok(Some(holder)) => {
                    if !waiting_logged {
                        info!(lease = %self.config.name, %holder, "another operator leads; standing by");
                        waiting_logged = true;
                    }
                }
                Err(e) => warn!(error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Renews the lease every retry period and returns when it is lost (not
    /// renewed within the lease duration, or taken by another). The caller
    /// must stop reconciling then.
    pub async fn hold(&self) {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            match self.try_acquire_or_renew().await {
                Ok(None) => last_renewal = tokio::time::Instant::now(),
                Ok(Some(holder)) => {
                    warn!(%holder, "lost the lease to another operator");
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "renewing the lease failed");
                    // Stop before the lease can expire under us: another
                    // candidate may take over once it has.
                    if last_renewal.elapsed() + self.config.retry_period
                        >= self.config.lease_duration
                    {
                        return;
                    }
                }
            }
        }
    }

    /// Gives the lease up so a standby takes over at once (clean shutdown).
    pub async fn release(&self) -> Result<()> {
        if let Some(mut lease) = self.api.get_opt(&self.config.name).await?
            && let Some(spec) = lease.spec.as_mut()
            && spec.holder_identity.as_deref() == Some(&self.config.identity)
        {
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            self.api
                .replace(&self.config.name, &PostParams::default(), &lease)
                .await?;
            info!(lease = %self.config.name, "released the lease");
        }
        Ok(())
    }

    /// One round: `Ok(None)` if we hold the lease afterwards, `Ok(Some(holder))`
    /// if someone else does.
    async fn try_acquire_or_renew(&self) -> Result<Option<String>> {
        let now = Timestamp::now();
        let existing = self.api.get_opt(&self.config.name).await?;
        let decision = decide(
            existing.as_ref().and_then(|l| l.spec.as_ref()),
            &self.config.identity,
            now,
        );
        let mine = |acquire_time: Option<MicroTime>, transitions: i32| LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.lease_duration.as_secs().max(1) as i32),
            acquire_time: acquire_time.or(Some(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        };
        let write = match (decision, existing) {
            (Decision::Wait { .. }, Some(lease)) => {
                let holder = lease
                    .spec
                    .and_then(|s| s.holder_identity)
                    .unwrap_or_default();
                return Ok(Some(holder));
            }
            (Decision::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(mine(None, 0)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (Decision::Renew, Some(mut lease)) => {
                let spec = lease.spec.take().unwrap_or_default();
                lease.spec = Some(mine(spec.acquire_time, spec.lease_transitions.unwrap_or(0)));
                self.api
                    .replace(&self.config.name, &PostParams::default(), &lease)
                    .await
            }
            (Decision::TakeOver { transitions }, Some(mut lease)) => {
                lease.spec = Some(mine(None, transitions));
                self.api
                    .replace(&self.config.name, &PostParams::default(), &lease)
                    .await
            }
            (_, None) => unreachable!("decide returns Create for a missing lease"),
        };
        match write {
            Ok(_) => Ok(None),
            // Someone else wrote between our read and write: they won.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Some("(lost a race)".into())),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed_secs_ago: i64, duration: i32) -> LeaseSpec {
        let now = Timestamp::from_second(1_000_000).unwrap();
        LeaseSpec {
            holder_identity: (!holder.is_empty()).then(|| holder.to_string()),
            renew_time: Some(MicroTime(
                now.checked_sub(SignedDuration::from_secs(renewed_secs_ago))
                    .unwrap(),
            )),
            lease_duration_seconds: Some(duration),
            lease_transitions: Some(3),
            ..Default::default()
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_000_000).unwrap()
    }

    #[test]
    fn a_missing_lease_is_created() {
        assert_eq!(decide(None, "a", now()), Decision::Create);
    }

    #[test]
    fn the_holder_renews() {
        assert_eq!(
            decide(Some(&lease("a", 5, 15)), "a", now()),
            Decision::Renew
        );
        // even when it renewed late: nobody took it in between
        assert_eq!(
            decide(Some(&lease("a", 50, 15)), "a", now()),
            Decision::Renew
        );
    }

    #[test]
    fn a_valid_lease_of_another_holder_is_waited_for() {
        assert_eq!(
            decide(Some(&lease("b", 5, 15)), "a", now()),
            Decision::Wait {
                until: now().checked_add(SignedDuration::from_secs(10)).unwrap()
            }
        );
    }

    #[test]
    fn an_expired_or_released_lease_is_taken_over() {
        assert_eq!(
            decide(Some(&lease("b", 16, 15)), "a", now()),
            Decision::TakeOver { transitions: 4 }
        );
        assert_eq!(
            decide(Some(&lease("", 0, 15)), "a", now()),
            Decision::TakeOver { transitions: 4 }
        );
    }
}
