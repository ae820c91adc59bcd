//! Helpers shared by this crate's unit tests: a writer that keeps what is
//! written to it, a UART that writes to one, and a serde round trip.

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::legacy::Serial8250;
use crate::IrqLine;

/// A writer whose clones share one buffer of everything written to them.
#[derive(Clone, Default)]
pub(crate) struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl SharedBuf {
    /// Everything written so far.
    pub(crate) fn bytes(&self) -> Vec<u8> {
        self.0.lock().expect("lock").clone()
    }
}

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::ErrorKind::Other)?
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A UART writing to a new [`SharedBuf`], with the eventfd behind its
/// interrupt line.
pub(crate) fn uart() -> (Serial8250, SharedBuf, EventFd) {
    let evt = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let out = SharedBuf::default();
    let s = Serial8250::new(
        IrqLine::new(evt.try_clone().expect("clone")),
        Box::new(out.clone()),
    );
    (s, out, evt)
}

/// `v` serialized to JSON and back.
pub(crate) fn json_round_trip<T>(v: &T) -> T
where
    T: Serialize + for<'de> Deserialize<'de>,
{
    serde_json::from_str(&serde_json::to_string(v).expect("serialize")).expect("deserialize")
}
