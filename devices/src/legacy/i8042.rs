//! The i8042 PS/2 controller with a keyboard behind it (no AUX/mouse port).
//!
//! ```text
//!  host input (viewer thread) ── KeyboardInput::key ──┐
//!                                 keymap (set 1)      ▼
//!  guest: out 0x64 (controller command) ──► I8042 ──► output queue ──► in 0x60
//!         out 0x60 (data / keyboard command)   │        (≤ 64 bytes)
//!         in  0x64 (status)                    └──► IRQ 1 (edge, irqfd) per readable byte
//! ```
//!
//! The controller answers what Linux's `i8042` and `atkbd` drivers ask at
//! boot: the self tests, the command byte (translation on, keyboard
//! interrupt on), the keyboard's reset, identify (`ab 41`, translated),
//! LEDs, typematic rate, scancode set and enable. It reports no AUX port:
//! the AUX loopback command (0xd3) answers with a byte that is not marked as
//! AUX data and the AUX interface test (0xa9) reports a stuck clock line, so
//! Linux's `i8042_check_aux` gives up at once instead of waiting out a
//! timeout. A controller reply replaces any unread earlier one (the real
//! chip has a single output register), so no stale reply is left behind.
//!
//! Key events are queued as whole scancode sequences: one that does not fit
//! is dropped and counted, never cut. With the command byte's translation
//! bit set (the default, and what Linux keeps) the guest reads set-1
//! scancodes. A guest that turns translation off reads the selected set
//! untranslated: set 1 as is, set 2 converted ([`keymap::to_set2`]). Set 3
//! is refused (resend), so atkbd stays with set 2.
//!
//! Reset: command 0xfe (any "pulse output line" command that pulses line
//! 0) or writing the output port with bit 0 clear resets the machine, as
//! `reboot=k` expects.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tracing::{debug, warn};

use super::keymap::{self, Scancodes};
use crate::display::Key;
use crate::{BusDevice, ExitHandler, GuestExitRequest, IrqLine};

/// Base I/O port of the i8042 (data port 0x60; the command port is 0x64).
pub const I8042_PORT_BASE: u64 = 0x60;
/// Number of ports covered, 0x60..=0x64.
pub const I8042_PORT_SIZE: u64 = 5;
/// The legacy interrupt line of the keyboard.
pub const I8042_KBD_IRQ: u32 = 1;
/// Bytes the output queue holds (controller replies aside).
pub const OUTPUT_QUEUE_SIZE: usize = 64;

/// Offset of the data port from the base.
const DATA_OFFSET: u64 = 0;
/// Offset of the command/status port from the base.
const COMMAND_OFFSET: u64 = 4;

// Status register bits.
/// Output buffer full: a byte waits at port 0x60.
const STR_OBF: u8 = 0x01;
/// System flag (mirrors the command byte's).
const STR_SYS: u8 = 0x04;
/// The last write went to the command port.
const STR_CMD: u8 = 0x08;
/// The keyboard is not inhibited by a key lock.
const STR_UNLOCKED: u8 = 0x10;

// Command byte ("CTR") bits.
/// Raise IRQ 1 when keyboard data is readable.
pub const CTR_KBD_INT: u8 = 0x01;
/// System flag (set by a passed self test).
pub const CTR_SYS: u8 = 0x04;
/// Keyboard interface disabled.
pub const CTR_KBD_DISABLED: u8 = 0x10;
/// AUX interface disabled.
pub const CTR_AUX_DISABLED: u8 = 0x20;
/// Translate keyboard data to set 1.
pub const CTR_TRANSLATE: u8 = 0x40;
/// Bits of the command byte that exist (bit 7 is reserved and reads 0).
const CTR_MASK: u8 = 0x7f;
/// The command byte at power-on: translation, keyboard interrupt, system
/// flag, AUX disabled.
pub const CTR_DEFAULT: u8 = CTR_KBD_INT | CTR_SYS | CTR_AUX_DISABLED | CTR_TRANSLATE;

// Controller commands (port 0x64).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_OUTPUT: u8 = 0xd2;
const CMD_WRITE_AUX_OUTPUT: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
/// 0xf0..=0xff pulse output lines 0–3 (a clear bit pulses); line 0 resets.
const CMD_PULSE_FIRST: u8 = 0xf0;

// Controller replies.
const SELF_TEST_PASSED: u8 = 0x55;
const INTERFACE_TEST_PASSED: u8 = 0x00;
/// AUX interface test: "clock line stuck high", what an unconnected port
/// with pull-ups looks like.
const AUX_TEST_CLOCK_HIGH: u8 = 0x02;
/// Output port at power-on: reset line high (not in reset), A20 on.
pub(super) const OUTPUT_PORT_DEFAULT: u8 = 0x03;
/// Output port bit 0: the (active low) reset line.
const OUTPUT_PORT_RESET: u8 = 0x01;

// Keyboard commands (port 0x60) and replies.
const KBD_SET_LEDS: u8 = 0xed;
const KBD_ECHO: u8 = 0xee;
const KBD_SCANCODE_SET: u8 = 0xf0;
const KBD_IDENTIFY: u8 = 0xf2;
const KBD_TYPEMATIC: u8 = 0xf3;
const KBD_ENABLE: u8 = 0xf4;
const KBD_DISABLE: u8 = 0xf5;
const KBD_DEFAULTS: u8 = 0xf6;
const KBD_RESET: u8 = 0xff;
const KBD_ACK: u8 = 0xfa;
const KBD_RESEND: u8 = 0xfe;
const KBD_BAT_PASSED: u8 = 0xaa;
/// Identify: an MF2 keyboard, `ab 83`; `83` reads `41` through translation.
const KBD_ID: u8 = 0xab;
const KBD_ID_2: u8 = 0x83;
const KBD_ID_2_TRANSLATED: u8 = 0x41;
/// Typematic rate/delay after reset: 10.9 characters/s after 500 ms.
pub const TYPEMATIC_DEFAULT: u8 = 0x2b;
/// The scancode set after reset.
pub const SCANCODE_SET_DEFAULT: u8 = 2;

/// A controller command that waits for a data byte on port 0x60.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ControllerWrite {
    /// 0x60: the byte is the new command byte.
    CommandByte,
    /// 0xd1: the byte is the new output port (bit 0 clear resets).
    OutputPort,
    /// 0xd2: the byte is queued as if the keyboard had sent it.
    KeyboardOutput,
    /// 0xd3: the byte would be queued as AUX data (no AUX port here).
    AuxOutput,
    /// 0xd4: the byte would go to the AUX device (there is none).
    AuxDevice,
}

impl ControllerWrite {
    /// The command that starts this write.
    pub(super) fn command(self) -> u8 {
        match self {
            Self::CommandByte => CMD_WRITE_CTR,
            Self::OutputPort => CMD_WRITE_OUTPUT_PORT,
            Self::KeyboardOutput => CMD_WRITE_KBD_OUTPUT,
            Self::AuxOutput => CMD_WRITE_AUX_OUTPUT,
            Self::AuxDevice => CMD_WRITE_AUX,
        }
    }

    /// The write `command` starts, if it takes a data byte.
    pub(super) fn from_command(command: u8) -> Option<Self> {
        Some(match command {
            CMD_WRITE_CTR => Self::CommandByte,
            CMD_WRITE_OUTPUT_PORT => Self::OutputPort,
            CMD_WRITE_KBD_OUTPUT => Self::KeyboardOutput,
            CMD_WRITE_AUX_OUTPUT => Self::AuxOutput,
            CMD_WRITE_AUX => Self::AuxDevice,
            _ => return None,
        })
    }
}

/// A keyboard command that waits for its argument byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum KeyboardArg {
    /// 0xed: LED bits.
    Leds,
    /// 0xf3: typematic rate and delay.
    Typematic,
    /// 0xf0: 0 = report the set, 1 or 2 = select it (3 is refused).
    ScancodeSet,
}

impl KeyboardArg {
    /// The command that takes this argument.
    pub(super) fn command(self) -> u8 {
        match self {
            Self::Leds => KBD_SET_LEDS,
            Self::Typematic => KBD_TYPEMATIC,
            Self::ScancodeSet => KBD_SCANCODE_SET,
        }
    }

    /// The argument `command` waits for, if any.
    pub(super) fn from_command(command: u8) -> Option<Self> {
        Some(match command {
            KBD_SET_LEDS => Self::Leds,
            KBD_TYPEMATIC => Self::Typematic,
            KBD_SCANCODE_SET => Self::ScancodeSet,
            _ => return None,
        })
    }
}

/// The i8042 controller and its keyboard, wired to the VM's reset handling
/// and to IRQ 1.
pub struct I8042 {
    exit: Arc<dyn ExitHandler>,
    irq: IrqLine,
    /// The controller command byte.
    pub(super) ctr: u8,
    /// Status bit 3: the last write went to port 0x64.
    pub(super) last_write_command: bool,
    /// A controller command waiting for its data byte.
    pub(super) pending: Option<ControllerWrite>,
    /// An unread controller reply; read before the keyboard queue.
    pub(super) reply: Option<u8>,
    /// The output port (bit 0: reset line, active low).
    pub(super) output_port: u8,
    /// The keyboard scans (0xf4) rather than being disabled (0xf5).
    pub(super) scanning: bool,
    /// A keyboard command waiting for its argument.
    pub(super) kbd_pending: Option<KeyboardArg>,
    /// Keyboard LEDs (bit 0 Scroll, 1 Num, 2 Caps Lock).
    pub(super) leds: u8,
    /// Typematic rate/delay byte.
    pub(super) typematic: u8,
    /// Selected scancode set (1 or 2).
    pub(super) scancode_set: u8,
    /// Keyboard bytes (replies and scancodes) waiting for the guest.
    pub(super) queue: VecDeque<u8>,
    /// Key events and keyboard replies dropped because the queue was full.
    pub(super) dropped: u64,
    /// What port 0x60 reads when nothing is waiting: the last byte read.
    last_read: u8,
}

impl std::fmt::Debug for I8042 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I8042")
            .field("ctr", &self.ctr)
            .field("scanning", &self.scanning)
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

impl I8042 {
    /// Creates the controller in its power-on state: command byte
    /// [`CTR_DEFAULT`], keyboard scanning, empty output. A reset command is
    /// reported to `exit`; readable output raises `irq` (IRQ 1).
    pub fn new(exit: Arc<dyn ExitHandler>, irq: IrqLine) -> Self {
        Self {
            exit,
            irq,
            ctr: CTR_DEFAULT,
            last_write_command: false,
            pending: None,
            reply: None,
            output_port: OUTPUT_PORT_DEFAULT,
            scanning: true,
            kbd_pending: None,
            leds: 0,
            typematic: TYPEMATIC_DEFAULT,
            scancode_set: SCANCODE_SET_DEFAULT,
            queue: VecDeque::with_capacity(OUTPUT_QUEUE_SIZE),
            dropped: 0,
            last_read: 0,
        }
    }

    /// Queues the scancodes of `key` going down or up. Returns whether they
    /// were queued: not when the key has no scancode, the keyboard is
    /// disabled ([`Self::keyboard_enabled`]) or the queue is full (then the
    /// event is dropped whole and counted).
    pub fn key_event(&mut self, key: Key, down: bool) -> bool {
        match keymap::scancodes(key, down) {
            Some(codes) => self.queue_scancodes(&codes),
            None => {
                debug!(?key, "i8042: key without a scancode ignored");
                false
            }
        }
    }

    /// Queues one key event's set-1 scancodes (see [`keymap::scancodes`]),
    /// whole or not at all; returns whether they were queued. With
    /// translation off and set 2 selected they are sent as set 2.
    pub fn queue_scancodes(&mut self, codes: &Scancodes) -> bool {
        if !self.keyboard_enabled() {
            return false;
        }
        if self.translating() || self.scancode_set == 1 {
            return self.push_keyboard(codes.as_slice());
        }
        match keymap::to_set2(codes) {
            Some(set2) => self.push_keyboard(set2.as_slice()),
            None => false,
        }
    }

    /// Whether key events reach the guest: the keyboard scans (0xf4, not
    /// 0xf5) and its interface is enabled in the command byte.
    pub fn keyboard_enabled(&self) -> bool {
        self.scanning && self.ctr & CTR_KBD_DISABLED == 0
    }

    /// The keyboard LEDs the guest last set (bit 0 Scroll, 1 Num, 2 Caps).
    pub fn leds(&self) -> u8 {
        self.leds
    }

    /// Key events (and keyboard replies) dropped because the output queue
    /// was full.
    pub fn dropped_events(&self) -> u64 {
        self.dropped
    }

    /// Whether a byte is waiting at port 0x60.
    fn output_ready(&self) -> bool {
        self.reply.is_some() || !self.queue.is_empty()
    }

    /// Raises IRQ 1 if the command byte enables it.
    fn interrupt(&self) {
        if self.ctr & CTR_KBD_INT != 0 {
            if let Err(e) = self.irq.trigger() {
                warn!(error = %e, "i8042: cannot raise IRQ 1");
            }
        }
    }

    /// Appends `bytes` from the keyboard, whole or not at all.
    fn push_keyboard(&mut self, bytes: &[u8]) -> bool {
        if self.queue.len() + bytes.len() > OUTPUT_QUEUE_SIZE {
            self.dropped += 1;
            debug!(?bytes, "i8042: output queue full, event dropped");
            return false;
        }
        let was_ready = self.output_ready();
        self.queue.extend(bytes);
        if !was_ready && !bytes.is_empty() {
            self.interrupt();
        }
        true
    }

    /// Sets the controller reply, replacing an unread one.
    fn set_reply(&mut self, byte: u8) {
        let was_ready = self.output_ready();
        self.reply = Some(byte);
        if !was_ready {
            self.interrupt();
        }
    }

    fn status(&self) -> u8 {
        let mut s = STR_UNLOCKED;
        if self.output_ready() {
            s |= STR_OBF;
        }
        if self.ctr & CTR_SYS != 0 {
            s |= STR_SYS;
        }
        if self.last_write_command {
            s |= STR_CMD;
        }
        s
    }

    fn read_data(&mut self) -> u8 {
        let byte = match self.reply.take().or_else(|| self.queue.pop_front()) {
            Some(b) => b,
            None => return self.last_read,
        };
        self.last_read = byte;
        if self.output_ready() {
            self.interrupt();
        }
        byte
    }

    fn reset_machine(&self) {
        self.exit.request_exit(GuestExitRequest::Reset);
    }

    fn write_command(&mut self, cmd: u8) {
        self.last_write_command = true;
        self.pending = None;
        self.reply = None;
        if let Some(write) = ControllerWrite::from_command(cmd) {
            self.pending = Some(write);
            return;
        }
        match cmd {
            CMD_READ_CTR => self.set_reply(self.ctr),
            CMD_AUX_DISABLE => self.ctr |= CTR_AUX_DISABLED,
            // No AUX port: it stays disabled.
            CMD_AUX_ENABLE => {}
            CMD_AUX_TEST => self.set_reply(AUX_TEST_CLOCK_HIGH),
            CMD_SELF_TEST => {
                self.ctr |= CTR_SYS;
                self.set_reply(SELF_TEST_PASSED);
            }
            CMD_KBD_TEST => self.set_reply(INTERFACE_TEST_PASSED),
            CMD_KBD_DISABLE => self.ctr |= CTR_KBD_DISABLED,
            CMD_KBD_ENABLE => self.ctr &= !CTR_KBD_DISABLED,
            CMD_READ_OUTPUT_PORT => self.set_reply(self.output_port),
            CMD_PULSE_FIRST..=u8::MAX => {
                if cmd & OUTPUT_PORT_RESET == 0 {
                    self.reset_machine();
                }
            }
            _ => debug!(cmd, "i8042: unsupported controller command ignored"),
        }
    }

    fn write_data(&mut self, byte: u8) {
        self.last_write_command = false;
        let Some(write) = self.pending.take() else {
            self.keyboard_write(byte);
            return;
        };
        match write {
            ControllerWrite::CommandByte => {
                let enabling = self.ctr & CTR_KBD_INT == 0 && byte & CTR_KBD_INT != 0;
                self.ctr = byte & CTR_MASK;
                if enabling && self.output_ready() {
                    self.interrupt();
                }
            }
            ControllerWrite::OutputPort => {
                self.output_port = byte;
                if byte & OUTPUT_PORT_RESET == 0 {
                    self.reset_machine();
                }
            }
            ControllerWrite::KeyboardOutput => {
                self.push_keyboard(&[byte]);
            }
            // The byte comes back, but not as AUX data: Linux's AUX loop
            // test fails at once.
            ControllerWrite::AuxOutput => self.set_reply(byte),
            ControllerWrite::AuxDevice => debug!(byte, "i8042: byte for the absent AUX device"),
        }
    }

    /// Back to the keyboard's defaults (0xf5, 0xf6): typematic, set 2;
    /// pending scancodes are discarded.
    fn keyboard_defaults(&mut self) {
        self.typematic = TYPEMATIC_DEFAULT;
        self.scancode_set = SCANCODE_SET_DEFAULT;
        self.queue.clear();
    }

    fn keyboard_write(&mut self, byte: u8) {
        if let Some(arg) = self.kbd_pending.take() {
            match arg {
                KeyboardArg::Leds => {
                    self.leds = byte & 0x07;
                    self.push_keyboard(&[KBD_ACK]);
                }
                KeyboardArg::Typematic => {
                    self.typematic = byte & 0x7f;
                    self.push_keyboard(&[KBD_ACK]);
                }
                KeyboardArg::ScancodeSet => match byte {
                    0 => {
                        let set = self.reported_set();
                        self.push_keyboard(&[KBD_ACK, set]);
                    }
                    1 | 2 => {
                        self.scancode_set = byte;
                        self.push_keyboard(&[KBD_ACK]);
                    }
                    _ => {
                        self.push_keyboard(&[KBD_RESEND]);
                    }
                },
            }
            return;
        }
        if let Some(arg) = KeyboardArg::from_command(byte) {
            self.kbd_pending = Some(arg);
            self.push_keyboard(&[KBD_ACK]);
            return;
        }
        match byte {
            KBD_ECHO => {
                self.push_keyboard(&[KBD_ECHO]);
            }
            KBD_IDENTIFY => {
                let id2 = if self.translating() {
                    KBD_ID_2_TRANSLATED
                } else {
                    KBD_ID_2
                };
                self.push_keyboard(&[KBD_ACK, KBD_ID, id2]);
            }
            KBD_ENABLE => {
                self.queue.clear();
                self.scanning = true;
                self.push_keyboard(&[KBD_ACK]);
            }
            KBD_DISABLE => {
                self.keyboard_defaults();
                self.scanning = false;
                self.push_keyboard(&[KBD_ACK]);
            }
            KBD_DEFAULTS => {
                self.keyboard_defaults();
                self.push_keyboard(&[KBD_ACK]);
            }
            KBD_RESET => {
                self.keyboard_defaults();
                self.leds = 0;
                self.scanning = true;
                self.push_keyboard(&[KBD_ACK, KBD_BAT_PASSED]);
            }
            _ => {
                debug!(byte, "i8042: unsupported keyboard command");
                self.push_keyboard(&[KBD_RESEND]);
            }
        }
    }

    fn translating(&self) -> bool {
        self.ctr & CTR_TRANSLATE != 0
    }

    /// The answer to "get scancode set": the set number, passed through the
    /// controller's set-2 → set-1 translation when it is on (1 → 0x43,
    /// 2 → 0x41), which is what atkbd expects to see.
    fn reported_set(&self) -> u8 {
        if !self.translating() {
            return self.scancode_set;
        }
        match self.scancode_set {
            1 => 0x43,
            _ => 0x41,
        }
    }

    /// Raises IRQ 1 if output is waiting (after a restore).
    pub(super) fn interrupt_if_ready(&self) {
        if self.output_ready() {
            self.interrupt();
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let value = match offset {
            DATA_OFFSET => self.read_data(),
            COMMAND_OFFSET => self.status(),
            _ => return,
        };
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        match offset {
            DATA_OFFSET => self.write_data(value),
            COMMAND_OFFSET => self.write_command(value),
            _ => debug!(offset, value, "i8042: write to an unused port"),
        }
    }
}

/// A handle for the VMM's input threads: feeds host key events to the
/// keyboard. Mapping happens outside the device lock; under it only the
/// bytes are queued (and IRQ 1 raised).
#[derive(Clone, Debug)]
pub struct KeyboardInput {
    dev: Arc<Mutex<I8042>>,
}

impl KeyboardInput {
    /// A handle on the controller `dev` (the one on the VM's port-I/O bus).
    pub fn new(dev: Arc<Mutex<I8042>>) -> Self {
        Self { dev }
    }

    /// Sends `key` going down (`down`) or up to the guest. Returns whether
    /// its scancodes were queued (see [`I8042::key_event`]).
    pub fn key(&self, key: Key, down: bool) -> bool {
        let Some(codes) = keymap::scancodes(key, down) else {
            debug!(?key, "i8042: key without a scancode ignored");
            return false;
        };
        self.dev
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .queue_scancodes(&codes)
    }

    /// Key events dropped so far because the guest did not read them.
    pub fn dropped_events(&self) -> u64 {
        self.dev
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .dropped_events()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[derive(Default)]
    pub(crate) struct Recorder(pub(crate) Mutex<Vec<GuestExitRequest>>);
    impl ExitHandler for Recorder {
        fn request_exit(&self, request: GuestExitRequest) {
            if let Ok(mut v) = self.0.lock() {
                v.push(request);
            }
        }
    }

    /// A controller whose exits go to a recorder and whose IRQ 1 is an
    /// eventfd the test reads.
    pub(crate) fn controller() -> (I8042, Arc<Recorder>, EventFd) {
        let rec = Arc::new(Recorder::default());
        let evt = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let dev = I8042::new(rec.clone(), IrqLine::new(evt.try_clone().expect("clone")));
        (dev, rec, evt)
    }

    /// Interrupts raised since the last call.
    pub(crate) fn irqs(evt: &EventFd) -> u64 {
        evt.read().unwrap_or(0)
    }

    fn status(dev: &mut I8042) -> u8 {
        let mut b = [0u8];
        dev.read(COMMAND_OFFSET, &mut b);
        b[0]
    }

    /// What Linux's `__i8042_command` does: command, parameters, then one
    /// read per reply byte, each after OBF is seen. Returns the replies
    /// read, stopping early (like the driver) when OBF stays clear.
    fn command(dev: &mut I8042, cmd: u8, params: &[u8], replies: usize) -> Vec<u8> {
        dev.write(COMMAND_OFFSET, &[cmd]);
        for p in params {
            assert_eq!(status(dev) & 0x02, 0, "IBF never set");
            dev.write(DATA_OFFSET, &[*p]);
        }
        let mut out = Vec::new();
        for _ in 0..replies {
            if status(dev) & STR_OBF == 0 {
                break;
            }
            out.push(data(dev));
        }
        out
    }

    fn data(dev: &mut I8042) -> u8 {
        let mut b = [0u8];
        dev.read(DATA_OFFSET, &mut b);
        b[0]
    }

    /// Everything readable now.
    pub(crate) fn drain(dev: &mut I8042) -> Vec<u8> {
        let mut out = Vec::new();
        while status(dev) & STR_OBF != 0 {
            out.push(data(dev));
        }
        out
    }

    /// A byte sent to the keyboard (what `i8042_kbd_write` does), and what
    /// comes back.
    fn kbd(dev: &mut I8042, byte: u8) -> Vec<u8> {
        dev.write(DATA_OFFSET, &[byte]);
        drain(dev)
    }

    #[test]
    fn reset_command_requests_reset_only_on_command_port() {
        let (mut dev, rec, _evt) = controller();
        dev.write(DATA_OFFSET, &[0xfe]); // data port: a keyboard command
        dev.write(COMMAND_OFFSET, &[0xad]); // another command
        assert!(rec.0.lock().expect("lock").is_empty());
        dev.write(COMMAND_OFFSET, &[0xfe]);
        assert_eq!(*rec.0.lock().expect("lock"), vec![GuestExitRequest::Reset]);
    }

    #[test]
    fn output_port_write_with_bit0_clear_resets() {
        let (mut dev, rec, _evt) = controller();
        command(&mut dev, CMD_WRITE_OUTPUT_PORT, &[0x03], 0);
        assert!(rec.0.lock().expect("lock").is_empty());
        assert_eq!(command(&mut dev, CMD_READ_OUTPUT_PORT, &[], 1), [0x03]);
        command(&mut dev, CMD_WRITE_OUTPUT_PORT, &[0x02], 0);
        assert_eq!(*rec.0.lock().expect("lock"), vec![GuestExitRequest::Reset]);
    }

    /// The sequence Linux's i8042 probe and atkbd's connect perform, with
    /// the replies they check.
    #[test]
    fn linux_init_sequence() {
        let (mut dev, rec, evt) = controller();
        // i8042_controller_check: flush.
        assert!(drain(&mut dev).is_empty());
        assert_eq!(status(&mut dev) & STR_UNLOCKED, STR_UNLOCKED, "no key lock");
        // i8042_controller_selftest.
        assert_eq!(command(&mut dev, CMD_SELF_TEST, &[], 1), [0x55]);
        // i8042_controller_init: two equal CTR reads, then disable the
        // keyboard and its interrupt and write the CTR back.
        let ctr = command(&mut dev, CMD_READ_CTR, &[], 1);
        assert_eq!(ctr, command(&mut dev, CMD_READ_CTR, &[], 1));
        assert_eq!(ctr, [CTR_DEFAULT]);
        assert_ne!(ctr[0] & CTR_TRANSLATE, 0, "translation on: set-1 scancodes");
        let mut ctr = ctr[0];
        ctr |= CTR_KBD_DISABLED;
        ctr &= !CTR_KBD_INT;
        command(&mut dev, CMD_WRITE_CTR, &[ctr], 0);
        assert_eq!(command(&mut dev, CMD_READ_CTR, &[], 1), [ctr]);
        assert!(drain(&mut dev).is_empty());
        irqs(&evt);

        // i8042_check_aux: the loopback reply is not AUX data (the driver
        // returns -1 without reading it); the AUX test fails right after.
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_AUX_OUTPUT]);
        dev.write(DATA_OFFSET, &[0x5a]);
        let s = status(&mut dev);
        assert_eq!(s & STR_OBF, STR_OBF, "answered at once, no timeout");
        assert_eq!(s & 0x20, 0, "never AUX data");
        let aux_test = command(&mut dev, CMD_AUX_TEST, &[], 1);
        assert_eq!(aux_test.len(), 1);
        assert!(
            aux_test[0] != 0 && aux_test[0] != 0xfa && aux_test[0] != 0xff,
            "AUX test must read as a failure: {aux_test:x?}"
        );
        assert!(drain(&mut dev).is_empty(), "no stale loopback byte left");
        assert_eq!(irqs(&evt), 0, "interrupt off during the probe");

        // i8042_setup_kbd: enable the port and its interrupt.
        ctr &= !CTR_KBD_DISABLED;
        ctr |= CTR_KBD_INT;
        command(&mut dev, CMD_WRITE_CTR, &[ctr], 0);

        // atkbd_probe: deactivate, identify; atkbd_select_set returns 2 at
        // once when translated; atkbd_reset_state/activate: LEDs, rate,
        // enable. Every reply byte raises IRQ 1 once.
        assert_eq!(kbd(&mut dev, KBD_DISABLE), [KBD_ACK]);
        assert_eq!(irqs(&evt), 1);
        assert_eq!(kbd(&mut dev, KBD_IDENTIFY), [KBD_ACK, 0xab, 0x41]);
        assert_eq!(irqs(&evt), 3);
        assert_eq!(kbd(&mut dev, KBD_SET_LEDS), [KBD_ACK]);
        assert_eq!(kbd(&mut dev, 0x02), [KBD_ACK]);
        assert_eq!(dev.leds(), 0x02);
        assert_eq!(kbd(&mut dev, KBD_TYPEMATIC), [KBD_ACK]);
        assert_eq!(kbd(&mut dev, 0x00), [KBD_ACK]);
        assert!(!dev.keyboard_enabled(), "not scanning before 0xf4");
        assert!(!dev.key_event(Key::Scancode(0x1e), true));
        assert_eq!(kbd(&mut dev, KBD_ENABLE), [KBD_ACK]);
        assert!(dev.keyboard_enabled());
        irqs(&evt);
        assert!(rec.0.lock().expect("lock").is_empty());

        // A key press and release: set 1, one interrupt per byte.
        assert!(dev.key_event(Key::Keysym(u32::from(b'a')), true));
        assert!(dev.key_event(Key::Keysym(u32::from(b'a')), false));
        assert!(dev.key_event(Key::Keysym(0xff52), true)); // Up
        assert_eq!(irqs(&evt), 1, "only the first byte is readable yet");
        assert_eq!(drain(&mut dev), [0x1e, 0x9e, 0xe0, 0x48]);
        assert_eq!(irqs(&evt), 3, "one more per byte that became readable");
    }

    #[test]
    fn keyboard_reset_echo_sets_and_unknown_commands() {
        let (mut dev, _rec, _evt) = controller();
        assert_eq!(kbd(&mut dev, KBD_RESET), [KBD_ACK, KBD_BAT_PASSED]);
        assert_eq!(kbd(&mut dev, KBD_ECHO), [KBD_ECHO]);
        assert_eq!(kbd(&mut dev, KBD_SCANCODE_SET), [KBD_ACK]);
        assert_eq!(kbd(&mut dev, 0), [KBD_ACK, 0x41], "set 2, translated");
        kbd(&mut dev, KBD_SCANCODE_SET);
        assert_eq!(kbd(&mut dev, 1), [KBD_ACK]);
        kbd(&mut dev, KBD_SCANCODE_SET);
        assert_eq!(kbd(&mut dev, 0), [KBD_ACK, 0x43], "set 1, translated");
        kbd(&mut dev, KBD_SCANCODE_SET);
        assert_eq!(kbd(&mut dev, 7), [KBD_RESEND], "no set 7");
        kbd(&mut dev, KBD_SCANCODE_SET);
        assert_eq!(kbd(&mut dev, 3), [KBD_RESEND], "set 3 is refused");
        assert_eq!(kbd(&mut dev, KBD_DEFAULTS), [KBD_ACK]);
        // Translation off: raw answers.
        command(&mut dev, CMD_WRITE_CTR, &[CTR_KBD_INT | CTR_SYS], 0);
        assert_eq!(kbd(&mut dev, KBD_IDENTIFY), [KBD_ACK, 0xab, 0x83]);
        kbd(&mut dev, KBD_SCANCODE_SET);
        assert_eq!(kbd(&mut dev, 0), [KBD_ACK, 2]);
        assert_eq!(kbd(&mut dev, 0x42), [KBD_RESEND], "unknown command");
    }

    #[test]
    fn translation_off_sends_the_selected_set() {
        let (mut dev, _rec, _evt) = controller();
        command(&mut dev, CMD_WRITE_CTR, &[CTR_KBD_INT | CTR_SYS], 0);
        assert!(dev.key_event(Key::Keysym(u32::from(b'a')), true));
        assert!(dev.key_event(Key::Keysym(u32::from(b'a')), false));
        assert!(dev.key_event(Key::Scancode(0xc8), false)); // Up released
        assert_eq!(drain(&mut dev), [0x1c, 0xf0, 0x1c, 0xe0, 0xf0, 0x75]);
        kbd(&mut dev, KBD_SCANCODE_SET);
        assert_eq!(kbd(&mut dev, 1), [KBD_ACK]);
        assert!(dev.key_event(Key::Scancode(0xc8), false));
        assert_eq!(drain(&mut dev), [0xe0, 0xc8], "set 1 untranslated");
    }

    #[test]
    fn controller_commands_answer_and_toggle() {
        let (mut dev, _rec, _evt) = controller();
        assert_eq!(command(&mut dev, CMD_KBD_TEST, &[], 1), [0x00]);
        assert_eq!(status(&mut dev) & STR_CMD, STR_CMD);
        command(&mut dev, CMD_KBD_DISABLE, &[], 0);
        assert!(!dev.keyboard_enabled());
        assert_ne!(
            command(&mut dev, CMD_READ_CTR, &[], 1)[0] & CTR_KBD_DISABLED,
            0
        );
        command(&mut dev, CMD_KBD_ENABLE, &[], 0);
        assert!(dev.keyboard_enabled());
        command(&mut dev, CMD_AUX_ENABLE, &[], 0);
        assert_ne!(
            command(&mut dev, CMD_READ_CTR, &[], 1)[0] & CTR_AUX_DISABLED,
            0,
            "the absent AUX port stays disabled"
        );
        // 0xd2: a byte as if from the keyboard.
        assert_eq!(command(&mut dev, CMD_WRITE_KBD_OUTPUT, &[0x77], 1), [0x77]);
        // 0xd4: swallowed.
        assert!(command(&mut dev, CMD_WRITE_AUX, &[0xff], 1).is_empty());
        // The reserved CTR bit never sticks.
        command(&mut dev, CMD_WRITE_CTR, &[0xff], 0);
        assert_eq!(command(&mut dev, CMD_READ_CTR, &[], 1), [0x7f]);
        // Reads with nothing waiting repeat the last byte.
        assert_eq!(data(&mut dev), 0x7f);
        assert_eq!(status(&mut dev) & STR_OBF, 0);
    }

    #[test]
    fn controller_reply_comes_before_queued_keys() {
        let (mut dev, _rec, _evt) = controller();
        assert!(dev.key_event(Key::Scancode(0x10), true));
        assert_eq!(command(&mut dev, CMD_READ_CTR, &[], 1), [CTR_DEFAULT]);
        assert_eq!(drain(&mut dev), [0x10]);
    }

    #[test]
    fn full_queue_drops_whole_events_and_counts_them() {
        let (mut dev, _rec, evt) = controller();
        for _ in 0..OUTPUT_QUEUE_SIZE / 2 - 1 {
            assert!(dev.key_event(Key::Scancode(0xc8), true)); // e0 48
        }
        assert!(dev.key_event(Key::Scancode(0x1e), true)); // 63 bytes
        assert!(
            !dev.key_event(Key::Scancode(0xc8), false),
            "2 bytes, 1 free"
        );
        assert_eq!(dev.dropped_events(), 1);
        assert!(dev.key_event(Key::Scancode(0x1e), false), "1 byte fits");
        assert!(!dev.key_event(Key::Scancode(0x1e), true));
        assert_eq!(dev.dropped_events(), 2);
        assert_eq!(irqs(&evt), 1);
        let out = drain(&mut dev);
        assert_eq!(out.len(), OUTPUT_QUEUE_SIZE);
        assert_eq!(&out[OUTPUT_QUEUE_SIZE - 4..], [0xe0, 0x48, 0x1e, 0x9e]);
        assert_eq!(irqs(&evt), OUTPUT_QUEUE_SIZE as u64 - 1);
    }

    #[test]
    fn no_interrupt_while_disabled_in_the_command_byte() {
        let (mut dev, _rec, evt) = controller();
        command(&mut dev, CMD_WRITE_CTR, &[CTR_DEFAULT & !CTR_KBD_INT], 0);
        assert!(dev.key_event(Key::Scancode(0x1e), true));
        assert_eq!(irqs(&evt), 0);
        // Enabling it with output waiting raises it.
        command(&mut dev, CMD_WRITE_CTR, &[CTR_DEFAULT], 0);
        assert_eq!(irqs(&evt), 1);
        assert_eq!(drain(&mut dev), [0x1e]);
    }

    #[test]
    fn handle_feeds_the_shared_controller() {
        let (dev, _rec, evt) = controller();
        let dev = Arc::new(Mutex::new(dev));
        let input = KeyboardInput::new(dev.clone());
        assert!(input.key(Key::Keysym(u32::from(b'A')), true));
        assert!(!input.key(Key::Keysym(0xdead_beef), true));
        assert_eq!(irqs(&evt), 1);
        assert_eq!(drain(&mut dev.lock().expect("lock")), [0x1e]);
        assert_eq!(input.dropped_events(), 0);
    }

    #[test]
    fn odd_offsets_and_sizes_do_not_panic() {
        let (mut dev, rec, _evt) = controller();
        let mut wide = [0xffu8; 4];
        dev.read(2, &mut wide);
        dev.read(u64::MAX, &mut wide);
        dev.read(0, &mut []);
        dev.write(u64::MAX, &[0xfe]);
        dev.write(COMMAND_OFFSET, &[]);
        assert_eq!(wide, [0; 4]);
        assert!(rec.0.lock().expect("lock").is_empty());
    }
}
