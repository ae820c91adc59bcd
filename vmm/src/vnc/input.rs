//! Viewers' input routed into the VM: keys to the i8042 keyboard, the pointer to the
//! virtio-input tablet (scaled from screen pixels to the tablet's absolute axes).

use std::sync::{Arc, Mutex};

use vireo_devices::display::{InputSink, Key};
use vireo_devices::legacy::I8042;
use vireo_devices::virtio::input::{to_abs, TabletHandle};

/// The VM's keyboard and tablet as an [`InputSink`] for the RFB server.
pub struct VmInput {
    keyboard: Arc<Mutex<I8042>>,
    tablet: TabletHandle,
    width: u16,
    height: u16,
}

impl VmInput {
    /// Routes keys to `keyboard` and the pointer to `tablet` for a `width` × `height` screen.
    pub fn new(keyboard: Arc<Mutex<I8042>>, tablet: TabletHandle, width: u16, height: u16) -> Self {
        Self {
            keyboard,
            tablet,
            width,
            height,
        }
    }
}

impl InputSink for VmInput {
    fn key(&self, key: Key, down: bool) {
        // Held only to queue a few bytes: a vCPU reading port 0x60 waits microseconds at most.
        let mut kbd = self
            .keyboard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        kbd.key_event(key, down);
    }

    fn pointer(&self, x: u16, y: u16, buttons: u8) {
        self.tablet.pointer(
            to_abs(x, self.width),
            to_abs(y, self.height),
            buttons,
        );
    }
}
