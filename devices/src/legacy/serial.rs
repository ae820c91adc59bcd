//! The 16550A-compatible UART on COM1, built on `vm-superio`.
//!
//! Output goes to whatever writer the VMM hands in (stdout, a file, a unix
//! socket). Input is pushed by the VMM's console thread with
//! [`Serial8250::enqueue_input`], which respects the 64-byte receive FIFO so
//! that no input byte is ever dropped: bytes that do not fit stay with the
//! caller until the guest drains the FIFO.

use std::io::Write;

use tracing::warn;
use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use crate::{BusDevice, IrqLine};

/// Standard I/O port base of COM1.
pub const COM1_PORT_BASE: u64 = 0x3f8;
/// Number of I/O ports a 8250 occupies.
pub const SERIAL_PORT_SIZE: u64 = 8;
/// Legacy interrupt line of COM1.
pub const COM1_IRQ: u32 = 4;

/// A 8250/16550A UART whose output goes to `out`.
pub struct Serial8250 {
    pub(super) inner: Serial<IrqLine, NoEvents, Box<dyn Write + Send>>,
}

impl std::fmt::Debug for Serial8250 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serial8250").finish_non_exhaustive()
    }
}

impl Serial8250 {
    /// Creates a UART that raises `irq` and writes transmitted bytes to `out`.
    pub fn new(irq: IrqLine, out: Box<dyn Write + Send>) -> Self {
        Self {
            inner: Serial::new(irq, out),
        }
    }

    /// Free space in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.inner.fifo_capacity()
    }

    /// Queues as many of `bytes` as fit in the receive FIFO and raises the
    /// receive interrupt; returns how many were taken (possibly 0).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        if bytes.is_empty() || self.inner.fifo_capacity() == 0 {
            return 0;
        }
        match self.inner.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "serial input not queued");
                0
            }
        }
    }
}

impl BusDevice for Serial8250 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The UART has byte registers; wider accesses read the first one
        // and pad with zero, as real hardware on an 8-bit bus would.
        data.fill(0);
        if let (Ok(off), Some(first)) = (u8::try_from(offset), data.first_mut()) {
            if offset < SERIAL_PORT_SIZE {
                *first = self.inner.read(off);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(off), Some(&value)) = (u8::try_from(offset), data.first()) else {
            return;
        };
        if offset >= SERIAL_PORT_SIZE {
            return;
        }
        if let Err(e) = self.inner.write(off, value) {
            // A closed console must not stop the guest; report and go on.
            warn!(error = %e, "serial output failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::uart;

    #[test]
    fn transmits_written_bytes() {
        let (mut s, out, _evt) = uart();
        for b in b"hi" {
            s.write(0, &[*b]);
        }
        assert_eq!(out.bytes(), b"hi");
    }

    #[test]
    fn input_is_never_dropped_when_fifo_fills() {
        let (mut s, _out, evt) = uart();
        // Enable the received-data interrupt so enqueueing raises IRQ.
        s.write(1, &[0x01]);
        let input = vec![b'x'; 100];
        let taken = s.enqueue_input(&input);
        assert_eq!(taken, 64, "the 16550 FIFO holds 64 bytes");
        assert_eq!(s.enqueue_input(&input[taken..]), 0);
        assert!(evt.read().expect("irq raised") >= 1);
        // The guest drains one byte: one more fits.
        let mut b = [0u8];
        s.read(0, &mut b);
        assert_eq!(b[0], b'x');
        assert_eq!(s.enqueue_input(&input[taken..]), 1);
    }

    #[test]
    fn odd_offsets_and_sizes_do_not_panic() {
        let (mut s, _out, _evt) = uart();
        let mut wide = [0xffu8; 8];
        s.read(u64::MAX, &mut wide);
        s.read(3, &mut []);
        s.write(u64::MAX, &[1, 2, 3]);
        s.write(0, &[]);
        assert_eq!(wide, [0; 8]);
    }
}
