//! Saved state of a virtio-net device model: its configuration space (MAC,
//! link status, queue pairs). The MAC is checked against the device built
//! here (a guest resumed with another MAC would drop its own frames). The
//! tap and its offloads are not state: activation sets the offloads again
//! from the features the driver accepted.

use serde::{Deserialize, Serialize};

use super::VirtioNet;
use crate::persist::PersistError;

const DEVICE: &str = "virtio-net";

fn default_link_status() -> u16 {
    super::STATUS_LINK_UP
}

fn default_pairs() -> u16 {
    1
}

/// A virtio-net device's configuration space.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// The `status` field (link up).
    #[serde(default = "default_link_status")]
    pub link_status: u16,
    /// `max_virtqueue_pairs`.
    #[serde(default = "default_pairs")]
    pub max_virtqueue_pairs: u16,
}

impl VirtioNet {
    /// The device's state.
    pub fn save(&self) -> NetState {
        let c = &self.config;
        NetState {
            mac: [c[0], c[1], c[2], c[3], c[4], c[5]],
            link_status: u16::from_le_bytes([c[6], c[7]]),
            max_virtqueue_pairs: u16::from_le_bytes([c[8], c[9]]),
        }
    }

    /// Checks `state` against this device (MAC, queue pairs) and applies
    /// the link status.
    pub fn restore(&mut self, state: &NetState) -> Result<(), PersistError> {
        let here = self.save();
        if state.mac != here.mac {
            return Err(PersistError::mismatch(
                DEVICE,
                "MAC",
                vireo_net::MacAddr::from_bytes(state.mac),
                vireo_net::MacAddr::from_bytes(here.mac),
            ));
        }
        if state.max_virtqueue_pairs != here.max_virtqueue_pairs {
            return Err(PersistError::mismatch(
                DEVICE,
                "queue pairs",
                state.max_virtqueue_pairs,
                here.max_virtqueue_pairs,
            ));
        }
        self.config[6..8].copy_from_slice(&state.link_status.to_le_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_state_round_trips_and_defaults() {
        let state = NetState {
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            link_status: 1,
            max_virtqueue_pairs: 1,
        };
        let s = serde_json::to_string(&state).expect("serialize");
        assert_eq!(
            serde_json::from_str::<NetState>(&s).expect("deserialize"),
            state
        );
        let old: NetState =
            serde_json::from_str(r#"{"mac":[82,84,0,18,52,86]}"#).expect("defaults");
        assert_eq!(old, state);
    }
}
