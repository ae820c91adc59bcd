//! Saved state of a virtio-input tablet: the configuration selector the
//! driver last wrote, the button state as queued, and the events still
//! waiting for guest buffers. Queue positions are the transport's (see
//! [`crate::virtio::persist`]). Restored state is checked: whole reports
//! only, at most [`MAX_PENDING`] events, only the event types and codes a
//! tablet produces, no unknown button bits.

use serde::{Deserialize, Serialize};

use super::config::codes::{ABS_X, ABS_Y, EV_ABS, EV_KEY, EV_SYN, SYN_REPORT};
use super::config::{ABS_MAX, BUTTONS};
use super::{InputEvent, VirtioInput, MAX_PENDING};
use crate::persist::PersistError;

const DEVICE: &str = "virtio-input";

/// One saved `virtio_input_event`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventState {
    /// Event type.
    #[serde(rename = "type")]
    pub kind: u16,
    /// Event code.
    pub code: u16,
    /// Value.
    pub value: u32,
}

/// A virtio-input tablet's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputState {
    /// `select` of the configuration space.
    pub select: u8,
    /// `subsel` of the configuration space.
    pub subsel: u8,
    /// Buttons held as the queued events leave them (bit 0 left, 1 middle, 2 right).
    pub buttons: u8,
    /// Events waiting for guest buffers, oldest first.
    #[serde(default)]
    pub pending: Vec<EventState>,
}

/// Whether `e` is an event this tablet produces.
fn valid_event(e: &EventState) -> bool {
    match e.kind {
        EV_SYN => e.code == SYN_REPORT && e.value == 0,
        EV_ABS => matches!(e.code, ABS_X | ABS_Y) && e.value <= ABS_MAX,
        EV_KEY => BUTTONS.contains(&e.code) && e.value <= 1,
        _ => false,
    }
}

impl InputState {
    /// Checks the state as described in the module docs.
    pub fn validate(&self) -> Result<(), PersistError> {
        if self.buttons & !0b111 != 0 {
            return Err(PersistError::invalid(
                DEVICE,
                format!("button state {:#x} has unknown buttons", self.buttons),
            ));
        }
        if self.pending.len() > MAX_PENDING {
            return Err(PersistError::invalid(
                DEVICE,
                format!(
                    "{} pending events (at most {MAX_PENDING})",
                    self.pending.len()
                ),
            ));
        }
        if let Some((i, e)) = self
            .pending
            .iter()
            .enumerate()
            .find(|(_, e)| !valid_event(e))
        {
            return Err(PersistError::invalid(
                DEVICE,
                format!(
                    "pending event {i} (type {}, code {}, value {}) is not a tablet event",
                    e.kind, e.code, e.value
                ),
            ));
        }
        if self
            .pending
            .last()
            .is_some_and(|e| !(e.kind == EV_SYN && e.code == SYN_REPORT))
        {
            return Err(PersistError::invalid(
                DEVICE,
                "pending events end in the middle of a report",
            ));
        }
        Ok(())
    }
}

impl VirtioInput {
    /// The device's state.
    pub fn save(&self) -> InputState {
        let p = self.shared.lock();
        InputState {
            select: self.select,
            subsel: self.subsel,
            buttons: p.buttons,
            pending: p
                .events
                .iter()
                .map(|e| EventState {
                    kind: e.kind,
                    code: e.code,
                    value: e.value,
                })
                .collect(),
        }
    }

    /// Checks `state` and applies it (on a device the driver has not
    /// started; activation then delivers the pending events). Changes
    /// nothing on error.
    pub fn restore(&mut self, state: &InputState) -> Result<(), PersistError> {
        state.validate()?;
        self.select = state.select;
        self.subsel = state.subsel;
        let mut p = self.shared.lock();
        p.buttons = state.buttons;
        p.events = state
            .pending
            .iter()
            .map(|e| InputEvent {
                kind: e.kind,
                code: e.code,
                value: e.value,
            })
            .collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::json_round_trip as json;

    fn ev(kind: u16, code: u16, value: u32) -> EventState {
        EventState { kind, code, value }
    }

    fn sample() -> InputState {
        InputState {
            select: 17,
            subsel: 1,
            buttons: 0b001,
            pending: vec![
                ev(EV_ABS, ABS_X, 100),
                ev(EV_ABS, ABS_Y, 200),
                ev(EV_KEY, super::super::config::codes::BTN_LEFT, 1),
                ev(EV_SYN, SYN_REPORT, 0),
            ],
        }
    }

    #[test]
    fn input_state_round_trips_through_the_device() {
        let state = sample();
        assert_eq!(json(&state), state);
        let mut dev = VirtioInput::new_tablet(0).expect("tablet");
        dev.restore(&state).expect("restore");
        assert_eq!(dev.save(), state);
        assert_eq!(dev.handle().pending(), 4);
        let old: InputState =
            serde_json::from_str(r#"{"select":0,"subsel":0,"buttons":0}"#).expect("defaults");
        assert_eq!(old, InputState::default());
    }

    #[test]
    fn invalid_input_state_is_refused_and_changes_nothing() {
        let mut dev = VirtioInput::new_tablet(0).expect("tablet");
        let before = dev.save();
        let mut bad = Vec::new();
        let mut s = sample();
        s.buttons = 8;
        bad.push(s);
        let mut s = sample();
        s.pending.pop();
        bad.push(s);
        let mut s = sample();
        s.pending[0].kind = 2;
        bad.push(s);
        let mut s = sample();
        s.pending[1].value = ABS_MAX + 1;
        bad.push(s);
        let mut s = sample();
        s.pending[2].value = 2;
        bad.push(s);
        let mut s = sample();
        s.pending = vec![ev(EV_SYN, SYN_REPORT, 0); MAX_PENDING + 1];
        bad.push(s);
        for s in bad {
            assert!(dev.restore(&s).is_err(), "{s:?}");
            assert_eq!(dev.save(), before);
        }
    }
}
