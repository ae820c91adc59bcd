//! Saved state of the legacy PC devices: the 8250 UART, the i8042 and the
//! CMOS.
//!
//! What is not state: the UART's output writer and interrupt line, the
//! i8042's exit handler and interrupt line (and what its data port reads
//! when nothing is waiting), and the CMOS clock (the time registers always show
//! the host's current time, so a restored guest sees the wall clock move on,
//! as after a suspend). The VMM rebuilds those when it builds the devices.

use serde::{Deserialize, Serialize};
use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use super::i8042::{self, ControllerWrite, KeyboardArg};
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

/// The i8042's state: the controller's registers, the keyboard's settings
/// and the bytes the guest has not read. Every field has a default (the
/// power-on state), so snapshots taken before a field existed still load.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct I8042State {
    /// The controller command byte (bit 7 reserved, must be clear).
    pub command_byte: u8,
    /// Status bit 3: the last write went to the command port.
    pub last_write_command: bool,
    /// A controller command waiting for its data byte (0x60, 0xd1–0xd4).
    pub pending_command: Option<u8>,
    /// An unread controller reply.
    pub controller_reply: Option<u8>,
    /// The output port.
    pub output_port: u8,
    /// The keyboard is scanning (enabled with 0xf4).
    pub scanning: bool,
    /// A keyboard command waiting for its argument (0xed, 0xf0, 0xf3).
    pub pending_keyboard_command: Option<u8>,
    /// Keyboard LEDs (bits 0–2).
    pub leds: u8,
    /// Typematic rate/delay (bits 0–6).
    pub typematic: u8,
    /// Scancode set (1 or 2).
    pub scancode_set: u8,
    /// Keyboard bytes the guest has not read (at most 64).
    pub output: Vec<u8>,
    /// Key events dropped on a full queue.
    pub dropped_events: u64,
}

impl Default for I8042State {
    fn default() -> Self {
        Self {
            command_byte: i8042::CTR_DEFAULT,
            last_write_command: false,
            pending_command: None,
            controller_reply: None,
            output_port: i8042::OUTPUT_PORT_DEFAULT,
            scanning: true,
            pending_keyboard_command: None,
            leds: 0,
            typematic: i8042::TYPEMATIC_DEFAULT,
            scancode_set: i8042::SCANCODE_SET_DEFAULT,
            output: Vec::new(),
            dropped_events: 0,
        }
    }
}

impl I8042 {
    /// The controller's state.
    pub fn save(&self) -> I8042State {
        I8042State {
            command_byte: self.ctr,
            last_write_command: self.last_write_command,
            pending_command: self.pending.map(ControllerWrite::command),
            controller_reply: self.reply,
            output_port: self.output_port,
            scanning: self.scanning,
            pending_keyboard_command: self.kbd_pending.map(KeyboardArg::command),
            leds: self.leds,
            typematic: self.typematic,
            scancode_set: self.scancode_set,
            output: self.queue.iter().copied().collect(),
            dropped_events: self.dropped,
        }
    }

    /// Applies `state`, keeping this controller's exit handler and IRQ line;
    /// raises IRQ 1 if output is waiting and the command byte enables it.
    /// Refuses (leaving the controller as it was) a state no guest could
    /// have produced.
    pub fn restore(&mut self, state: &I8042State) -> Result<(), PersistError> {
        const DEVICE: &str = "i8042";
        let invalid = |what: String| Err(PersistError::invalid(DEVICE, what));
        if state.output.len() > i8042::OUTPUT_QUEUE_SIZE {
            return invalid(format!(
                "{} queued bytes, the queue holds {}",
                state.output.len(),
                i8042::OUTPUT_QUEUE_SIZE
            ));
        }
        if state.command_byte & 0x80 != 0 {
            return invalid(format!(
                "command byte {:#04x} has the reserved bit set",
                state.command_byte
            ));
        }
        let pending = match state.pending_command {
            None => None,
            Some(c) => match ControllerWrite::from_command(c) {
                Some(p) => Some(p),
                None => return invalid(format!("{c:#04x} is not a command awaiting data")),
            },
        };
        let kbd_pending = match state.pending_keyboard_command {
            None => None,
            Some(c) => match KeyboardArg::from_command(c) {
                Some(p) => Some(p),
                None => {
                    return invalid(format!(
                        "{c:#04x} is not a keyboard command awaiting an argument"
                    ))
                }
            },
        };
        if state.leds & !0x07 != 0 {
            return invalid(format!("LED byte {:#04x}", state.leds));
        }
        if state.typematic & 0x80 != 0 {
            return invalid(format!("typematic byte {:#04x}", state.typematic));
        }
        if !(1..=2).contains(&state.scancode_set) {
            return invalid(format!("scancode set {}", state.scancode_set));
        }
        self.ctr = state.command_byte;
        self.last_write_command = state.last_write_command;
        self.pending = pending;
        self.reply = state.controller_reply;
        self.output_port = state.output_port;
        self.scanning = state.scanning;
        self.kbd_pending = kbd_pending;
        self.leds = state.leds;
        self.typematic = state.typematic;
        self.scancode_set = state.scancode_set;
        self.queue = state.output.iter().copied().collect();
        self.dropped = state.dropped_events;
        self.interrupt_if_ready();
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
    use crate::BusDevice;

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

    #[test]
    fn i8042_state_round_trips_with_pending_output() {
        use crate::display::Key;
        use crate::legacy::i8042::tests::{controller, drain, irqs};
        let (mut a, _rec, _evt) = controller();
        a.write(4, &[0x60]);
        a.write(0, &[0x45]); // command byte, keyboard interrupt on
        a.write(0, &[0xed]); // set LEDs, argument still to come
        a.read(0, &mut [0u8]); // its ack
        assert!(a.key_event(Key::Scancode(0xc8), true));
        a.write(4, &[0x20]); // a controller reply left unread
        let state = json_round_trip(&a.save());
        assert_eq!(state, a.save());
        assert_eq!(state.output, [0xe0, 0x48]);
        assert_eq!(state.pending_keyboard_command, Some(0xed));

        let (mut b, _rec, evt) = controller();
        irqs(&evt);
        b.restore(&state).expect("restore");
        assert_eq!(b.save(), state);
        assert_eq!(irqs(&evt), 1, "waiting output raises IRQ 1");
        assert_eq!(drain(&mut b), [0x45, 0xe0, 0x48]);
        b.write(0, &[0x04]); // the LED argument
        assert_eq!(drain(&mut b), [0xfa]);
        assert_eq!(b.leds(), 0x04);
    }

    #[test]
    fn i8042_old_snapshots_load_as_power_on_state() {
        use crate::legacy::i8042::tests::controller;
        let old: I8042State = serde_json::from_str("{}").expect("empty state");
        let (mut dev, _rec, _evt) = controller();
        let fresh = dev.save();
        assert_eq!(old, fresh);
        dev.restore(&old).expect("restore");
        let later: I8042State =
            serde_json::from_str(r#"{"future_field": 7}"#).expect("unknown fields are ignored");
        assert_eq!(later, I8042State::default());
    }

    #[test]
    fn i8042_rejects_impossible_state() {
        use crate::legacy::i8042::tests::controller;
        let (mut dev, _rec, _evt) = controller();
        let good = dev.save();
        let bad: Vec<I8042State> = vec![
            I8042State {
                output: vec![0; 65],
                ..good.clone()
            },
            I8042State {
                command_byte: 0x80,
                ..good.clone()
            },
            I8042State {
                pending_command: Some(0x20),
                ..good.clone()
            },
            I8042State {
                pending_keyboard_command: Some(0xf4),
                ..good.clone()
            },
            I8042State {
                leds: 0x08,
                ..good.clone()
            },
            I8042State {
                typematic: 0x80,
                ..good.clone()
            },
            I8042State {
                scancode_set: 0,
                ..good.clone()
            },
            I8042State {
                scancode_set: 3,
                ..good.clone()
            },
        ];
        for state in bad {
            assert!(
                matches!(
                    dev.restore(&state),
                    Err(PersistError::Invalid {
                        device: "i8042",
                        ..
                    })
                ),
                "{state:?}"
            );
            assert_eq!(dev.save(), good, "left as it was");
        }
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
