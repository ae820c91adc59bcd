//! A running launcher, observed and steered by the VMI reconciler through its control API
//! ([`crate::launcher_link`]): the VM's state (Running, Paused, …) and memory, and the pause
//! the user asked for (VMI annotation `vm.vireo.dev/pause`).
//!
//! The controller asks a launcher when the answer may have changed or is needed — the pause
//! request differs from the last observed state, the pod's readiness disagrees with it, or the
//! observation is older than [`REFRESH`] — and keeps the answers in memory only, keyed by VMI
//! UID. Keeping probe times out of the VMI's status means writing an observation never
//! triggers another probe: a status write wakes the reconciler, which finds a fresh
//! observation and writes nothing. After a controller restart every launcher is asked again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use vireo_spec::api::{ApiVmState, MemoryInfo};

use crate::error::Result;
use crate::launcher_link;

/// How old an observation may get before a running VMI's launcher is asked again (memory
/// figures in the status are at most this old).
pub const REFRESH: Duration = Duration::from_secs(15);
/// The least time between two probes that only a readiness disagreement asks for.
const READINESS_RECHECK: Duration = Duration::from_secs(1);

/// What a launcher reported.
#[derive(Clone, Debug)]
pub struct Observation {
    /// When it was asked.
    pub at: Instant,
    /// The VM's state after any pause or resume the controller sent.
    pub state: ApiVmState,
    /// Guest and process memory.
    pub memory: MemoryInfo,
}

/// The latest [`Observation`] per VMI UID.
#[derive(Debug, Default)]
pub struct Observations(Mutex<HashMap<String, Observation>>);

impl Observations {
    /// The latest observation of VMI `uid`.
    pub fn get(&self, uid: &str) -> Option<Observation> {
        self.0.lock().ok()?.get(uid).cloned()
    }

    fn put(&self, uid: &str, o: Observation) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(uid.to_owned(), o);
        }
    }

    /// Forgets VMI `uid` (its launcher ended or the VMI is gone).
    pub fn forget(&self, uid: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(uid);
        }
    }
}

/// Whether the launcher of a running VMI must be asked now, given the last observation, the
/// pause the user wants and whether the pod is Ready.
pub fn due(last: Option<&Observation>, want_paused: bool, pod_ready: bool) -> bool {
    let Some(o) = last else { return true };
    let age = o.at.elapsed();
    let paused = o.state == ApiVmState::Paused;
    let running = o.state == ApiVmState::Running;
    paused != want_paused || age >= REFRESH || (running != pod_ready && age >= READINESS_RECHECK)
}

/// Asks the launcher in `pod` for its VM's state, pauses or resumes it to match `want_paused`,
/// records and returns the result (when the last observation already shows the VM in the
/// other state, it sends the pause or resume straight away). A VM that is neither Running nor Paused (being built,
/// rebooting, stopping) is left alone and reported as it is.
pub async fn sync(
    obs: &Observations,
    uid: &str,
    pods: &Api<Pod>,
    pod: &str,
    want_paused: bool,
) -> Result<Observation> {
    // The common case of a pause or unpause request: the VM was seen in the other state, so
    // send the request at once (one port-forward, not two); the memory figures wait for the
    // next refresh. If the VM moved meanwhile, the API refuses and the full path below runs.
    if let Some(last) = obs.get(uid) {
        let flip = match (want_paused, last.state) {
            (true, ApiVmState::Running) | (false, ApiVmState::Paused) => Some(want_paused),
            _ => None,
        };
        if let Some(paused) = flip {
            if let Ok(state) = launcher_link::set_paused(pods, pod, paused).await {
                tracing::info!(pod, paused, "changed the VM's pause state");
                let o = Observation {
                    at: Instant::now(),
                    state,
                    memory: last.memory,
                };
                obs.put(uid, o.clone());
                return Ok(o);
            }
        }
    }
    let info = launcher_link::vm_info(pods, pod).await?;
    let mut state = info.state;
    match (want_paused, state) {
        (true, ApiVmState::Running) => {
            state = launcher_link::set_paused(pods, pod, true).await?;
            tracing::info!(pod, "paused the VM");
        }
        (false, ApiVmState::Paused) => {
            state = launcher_link::set_paused(pods, pod, false).await?;
            tracing::info!(pod, "resumed the VM");
        }
        _ => {}
    }
    let o = Observation {
        at: Instant::now(),
        state,
        memory: info.memory,
    };
    obs.put(uid, o.clone());
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(state: ApiVmState, ago: Duration) -> Observation {
        Observation {
            at: Instant::now() - ago,
            state,
            memory: MemoryInfo {
                guest_bytes: 0,
                guest_resident_bytes: 0,
                process_resident_bytes: 0,
            },
        }
    }

    #[test]
    fn asks_when_the_answer_may_have_changed_and_only_then() {
        let fresh = Duration::from_millis(10);
        assert!(due(None, false, true), "never asked");
        let running = seen(ApiVmState::Running, fresh);
        assert!(!due(Some(&running), false, true), "fresh and agreeing");
        assert!(due(Some(&running), true, true), "a pause is wanted");
        assert!(
            !due(Some(&running), false, false),
            "readiness disagrees, but was just checked"
        );
        let older = seen(ApiVmState::Running, Duration::from_secs(2));
        assert!(due(Some(&older), false, false), "readiness disagrees");
        let paused = seen(ApiVmState::Paused, fresh);
        assert!(due(Some(&paused), false, false), "a resume is wanted");
        assert!(!due(Some(&paused), true, false), "paused as wanted");
        let stale = seen(ApiVmState::Paused, REFRESH);
        assert!(due(Some(&stale), true, false), "memory figures are stale");
    }
}
