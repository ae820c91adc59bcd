//! Saved state of the legacy PC devices: the 8250 UART, the i8042 and the
//! CMOS.
//!
//! What is not state: the UART's output writer and interrupt line, the
//! i8042's exit handler, and the CMOS clock (the time registers always show
//! the host's current time, so a restored guest sees the wall clock move on,
//! as after a suspend). The VMM rebuilds those when it builds the devices.

use serde::{Deserialize, Serialize};
use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use super::{Cmos, Serial8250, I8042};
use crate::persist::PersistError;

/// Capacity of the UART's receive FIFO.
const SERIAL_FIFO_SIZE: usize = 64;
/// Bytes of CMOS RAM (registers included).
const CMOS_RAM_SIZE: usize = 128;

/// The UART's registers and pending input (mirrors `vm_superio::SerialState`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// Interrupt enable register.
    pub interrupt_enable: u8,
    /// Interrupt identification register.
    pub interrupt_identification: u8,
    /// Line control register.
    pub line_control: u8,
    /// Line status register.
    pub line_status: u8,
    /// Modem control register.
    pub modem_control: u8,
    /// Modem status register.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Received bytes the guest has not read yet (at most 64).
    pub in_buffer: Vec<u8>,
}

/// Both conversions copy the same registers: `Self` built from the
/// registers of `$s` and the pending input `$in_buffer`.
macro_rules! serial_state_from {
    ($s:ident, $in_buffer:expr) => {
        Self {
            baud_divisor_low: $s.baud_divisor_low,
            baud_divisor_high: $s.baud_divisor_high,
            interrupt_enable: $s.interrupt_enable,
            interrupt_identification: $s.interrupt_identification,
            line_control: $s.line_control,
            line_status: $s.line_status,
            modem_control: $s.modem_control,
            modem_status: $s.modem_status,
            scratch: $s.scratch,
            in_buffer: $in_buffer,
        }
    };
}

impl From<vm_superio::serial::SerialState> for SerialState {
    fn from(s: vm_superio::serial::SerialState) -> Self {
        serial_state_from!(s, s.in_buffer)
    }
}

impl From<&SerialState> for vm_superio::serial::SerialState {
    fn from(s: &SerialState) -> Self {
        serial_state_from!(s, s.in_buffer.clone())
    }
}

impl Serial8250 {
    /// The UART's registers and pending input.
    pub fn save(&self) -> SerialState {
        self.inner.state().into()
    }

    /// Applies `state`, keeping this UART's output writer and interrupt
    /// line. Raises the interrupt if the restored registers have one pending.
    pub fn restore(&mut self, state: &SerialState) -> Result<(), PersistError> {
        const DEVICE: &str = "serial";
        if state.in_buffer.len() > SERIAL_FIFO_SIZE {
            return Err(PersistError::invalid(
                DEVICE,
                format!(
                    "{} pending input bytes, the FIFO holds {SERIAL_FIFO_SIZE}",
                    state.in_buffer.len()
                ),
            ));
        }
        let irq = self
            .inner
            .interrupt_evt()
            .try_clone()
            .map_err(|source| PersistError::Io {
                device: DEVICE,
                what: "cannot clone the interrupt line",
                source,
            })?;
        // Build with a stand-in writer, then move this UART's writer over:
        // a failure leaves this UART untouched.
        let sink: Box<dyn std::io::Write + Send> = Box::new(std::io::sink());
        let mut serial = Serial::from_state(&state.into(), irq, NoEvents, sink)
            .map_err(|e| PersistError::invalid(DEVICE, e.to_string()))?;
        std::mem::swap(serial.writer_mut(), self.inner.writer_mut());
        self.inner = serial;
        Ok(())
    }
}

/// The i8042's state. It has none today; fields added later take defaults
/// (an idle controller), so this is extensible.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct I8042State {}

impl I8042 {
    /// The controller's state.
    pub fn save(&self) -> I8042State {
        I8042State {}
    }

    /// Applies `state` (nothing to apply today).
    pub fn restore(&mut self, _state: &I8042State) -> Result<(), PersistError> {
        Ok(())
    }
}

/// The CMOS index register and its 128 bytes of registers and RAM. The
/// clock is the host's and is not saved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CmosState {
    /// The index register (0–127).
    pub index: u8,
    /// All 128 register / RAM bytes.
    pub ram: Vec<u8>,
}

impl Cmos {
    /// The index register and RAM.
    pub fn save(&self) -> CmosState {
        CmosState {
            index: self.index,
            ram: self.ram.to_vec(),
        }
    }

    /// Applies `state`; the clock stays the one this CMOS was built with.
    pub fn restore(&mut self, state: &CmosState) -> Result<(), PersistError> {
        const DEVICE: &str = "cmos";
        let ram: [u8; CMOS_RAM_SIZE] = state.ram.as_slice().try_into().map_err(|_| {
            PersistError::invalid(
                DEVICE,
                format!("{} RAM bytes, expected {CMOS_RAM_SIZE}", state.ram.len()),
            )
        })?;
        if usize::from(state.index) >= CMOS_RAM_SIZE {
            return Err(PersistError::invalid(
                DEVICE,
                format!("index register {:#x} is past the RAM", state.index),
            ));
        }
        self.index = state.index;
        self.ram = ram;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{json_round_trip, uart};
    use crate::{BusDevice, ExitHandler, GuestExitRequest};
    use std::sync::Arc;

    #[test]
    fn serial_state_round_trips_with_pending_input() {
        let (mut a, _out, _evt) = uart();
        a.write(7, &[0x5a]); // scratch
        a.write(3, &[0x80]); // DLAB
        a.write(0, &[0x0c]); // divisor low
        a.write(3, &[0x03]); // 8N1
        a.write(1, &[0x01]); // receive interrupt
        assert_eq!(a.enqueue_input(b"abc"), 3);
        let state = json_round_trip(&a.save());
        assert_eq!(state, a.save());
        assert_eq!(state.in_buffer, b"abc");

        let (mut b, out, evt) = uart();
        b.restore(&state).expect("restore");
        assert_eq!(b.save(), state);
        assert!(evt.read().expect("pending input raises the irq") >= 1);
        let mut byte = [0u8];
        b.read(0, &mut byte);
        assert_eq!(byte[0], b'a', "pending input survives");
        b.read(7, &mut byte);
        assert_eq!(byte[0], 0x5a);
        // Output still goes to the restored UART's own writer.
        b.write(0, b"z");
        assert_eq!(out.bytes(), b"z");
    }

    #[test]
    fn serial_rejects_an_overfull_fifo() {
        let (mut s, out, _evt) = uart();
        let mut state = s.save();
        state.in_buffer = vec![0; SERIAL_FIFO_SIZE + 1];
        assert!(matches!(
            s.restore(&state),
            Err(PersistError::Invalid {
                device: "serial",
                ..
            })
        ));
        s.write(0, b"k");
        assert_eq!(out.bytes(), b"k", "still usable");
    }

    struct NoExit;
    impl ExitHandler for NoExit {
        fn request_exit(&self, _: GuestExitRequest) {}
    }

    #[test]
    fn i8042_state_round_trips_and_accepts_unknown_fields() {
        let mut dev = I8042::new(Arc::new(NoExit));
        let state = json_round_trip(&dev.save());
        dev.restore(&state).expect("restore");
        let later: I8042State =
            serde_json::from_str(r#"{"output_buffer": 7}"#).expect("unknown fields are ignored");
        assert_eq!(later, I8042State::default());
    }

    fn fixed() -> u64 {
        1_795_469_285
    }

    #[test]
    fn cmos_state_round_trips_and_validates() {
        let mut a = Cmos::with_clock(fixed);
        a.write(0, &[0x40]);
        a.write(1, &[0xab]);
        a.write(0, &[0x0b]);
        a.write(1, &[0x06]); // binary, 24h
        a.write(0, &[0x41]);
        let state = json_round_trip(&a.save());
        assert_eq!(state, a.save());
        let mut b = Cmos::with_clock(fixed);
        b.restore(&state).expect("restore");
        assert_eq!(b.save(), state);
        let mut byte = [0u8];
        b.read(0, &mut byte);
        assert_eq!(byte[0], 0x41, "index register");
        b.write(0, &[0x40]);
        b.read(1, &mut byte);
        assert_eq!(byte[0], 0xab);
        b.write(0, &[0x04]);
        b.read(1, &mut byte);
        assert_eq!(byte[0], 21, "binary hours from register B");

        let mut short = state.clone();
        short.ram.truncate(100);
        let mut c = Cmos::with_clock(fixed);
        let before = c.save();
        assert!(matches!(
            c.restore(&short),
            Err(PersistError::Invalid { device: "cmos", .. })
        ));
        let mut bad_index = state;
        bad_index.index = 0x80;
        assert!(c.restore(&bad_index).is_err());
        assert_eq!(c.save(), before, "left as built");
    }
}
