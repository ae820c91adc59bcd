//! Viewers' input routed into the VM: keys to the i8042 keyboard, the pointer to the
//! virtio-input tablet (scaled from screen pixels to the tablet's absolute axes).
//!
//! Shift follows the character, as QEMU's VNC server does: a viewer that sends `A` or `$`
//! without holding Shift (vncdotool's `type`) gets Shift pressed around the key, and one that
//! holds Shift while sending `a` gets it released around the key, so the guest types the
//! character the viewer named. QEMU's extended key events are scancodes and pass unchanged.

use std::sync::Mutex;

use vireo_devices::display::{InputSink, Key};
use vireo_devices::legacy::keymap::{
    keysym_needs_shift, KEYCODE_SHIFT_L, KEYSYM_SHIFT_L, KEYSYM_SHIFT_R,
};
use vireo_devices::legacy::KeyboardInput;
use vireo_devices::virtio::input::{to_abs, TabletHandle};

/// The VM's keyboard and tablet as an [`InputSink`] for the RFB server.
pub struct VmInput {
    keyboard: KeyboardInput,
    tablet: TabletHandle,
    width: u16,
    height: u16,
    /// Shift keys the viewers hold: bit 0 left, bit 1 right.
    shift: Mutex<u8>,
}

impl VmInput {
    /// Routes keys to `keyboard` and the pointer to `tablet` for a `width` × `height` screen.
    pub fn new(keyboard: KeyboardInput, tablet: TabletHandle, width: u16, height: u16) -> Self {
        Self {
            keyboard,
            tablet,
            width,
            height,
            shift: Mutex::new(0),
        }
    }

    fn shift_key(&self, down: bool) {
        self.keyboard
            .key(Key::Scancode(u32::from(KEYCODE_SHIFT_L)), down);
    }
}

impl InputSink for VmInput {
    fn key(&self, key: Key, down: bool) {
        let Key::Keysym(sym) = key else {
            self.keyboard.key(key, down);
            return;
        };
        let mut held = self
            .shift
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bit = match sym {
            KEYSYM_SHIFT_L => 1,
            KEYSYM_SHIFT_R => 2,
            _ => 0,
        };
        if bit != 0 {
            if down {
                *held |= bit;
            } else {
                *held &= !bit;
            }
            self.keyboard.key(key, down);
            return;
        }
        match keysym_needs_shift(sym) {
            Some(need) if down && need != (*held != 0) => {
                // Press (or release) Shift just around the key's make code.
                self.shift_key(need);
                self.keyboard.key(key, true);
                self.shift_key(!need);
            }
            _ => {
                self.keyboard.key(key, down);
            }
        }
    }

    fn pointer(&self, x: u16, y: u16, buttons: u8) {
        self.tablet
            .pointer(to_abs(x, self.width), to_abs(y, self.height), buttons);
    }
}
