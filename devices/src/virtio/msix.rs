//! MSI-X: the capability in configuration space, the vector table and the
//! pending-bit array (PCI Local Bus 3.0 §6.8.2).
//!
//! [`MsixState`] is shared (behind a mutex) by the vCPU thread that handles
//! table writes and the device worker that fires vectors, so masking and the
//! pending bits stay consistent. Routes are programmed only for vectors the
//! guest can currently receive, and a vector fired while masked is delivered
//! when it is unmasked.

use std::sync::Arc;

use tracing::warn;

use super::interrupt::{MsiMessage, MsiVectors};

/// Capability ID of MSI-X.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Size of one table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Message-control bit: MSI-X enabled.
const CONTROL_ENABLE: u16 = 1 << 15;
/// Message-control bit: all vectors masked.
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector-control bit: this vector masked.
const ENTRY_MASKED: u32 = 1;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) addr_lo: u32,
    pub(super) addr_hi: u32,
    pub(super) data: u32,
    pub(super) control: u32,
}

impl Entry {
    fn message(&self) -> MsiMessage {
        MsiMessage {
            address: u64::from(self.addr_hi) << 32 | u64::from(self.addr_lo),
            data: self.data,
        }
    }
}

/// The MSI-X table, pending bits and enable state of one function.
pub struct MsixState {
    pub(super) entries: Vec<Entry>,
    pub(super) pending: Vec<bool>,
    routed: Vec<Option<MsiMessage>>,
    pub(super) enabled: bool,
    pub(super) function_masked: bool,
    vectors: Arc<dyn MsiVectors>,
}

impl std::fmt::Debug for MsixState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsixState")
            .field("vectors", &self.entries.len())
            .field("enabled", &self.enabled)
            .field("function_masked", &self.function_masked)
            .finish()
    }
}

impl MsixState {
    /// A table with one entry per vector of `vectors`, all masked, MSI-X disabled.
    pub fn new(vectors: Arc<dyn MsiVectors>) -> Self {
        let n = vectors.count();
        Self {
            entries: vec![
                Entry {
                    control: ENTRY_MASKED,
                    ..Entry::default()
                };
                n
            ],
            pending: vec![false; n],
            routed: vec![None; n],
            enabled: false,
            function_masked: false,
            vectors,
        }
    }

    /// Number of vectors.
    pub fn count(&self) -> usize {
        self.entries.len()
    }

    /// The capability body (after ID and next pointer) for a table at
    /// `table_offset` and PBA at `pba_offset`, both in BAR `bar`.
    pub fn capability_body(&self, bar: u8, table_offset: u32, pba_offset: u32) -> [u8; 10] {
        let size = (self.entries.len().saturating_sub(1) as u16) & 0x7ff;
        let mut b = [0u8; 10];
        b[0..2].copy_from_slice(&size.to_le_bytes());
        b[2..6].copy_from_slice(&(table_offset | u32::from(bar & 7)).to_le_bytes());
        b[6..10].copy_from_slice(&(pba_offset | u32::from(bar & 7)).to_le_bytes());
        b
    }

    /// Applies a guest write of the message-control register.
    pub fn set_control(&mut self, control: u16) {
        self.enabled = control & CONTROL_ENABLE != 0;
        self.function_masked = control & CONTROL_FUNCTION_MASK != 0;
        self.sync();
    }

    /// Whether MSI-X is enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Reads the table at byte `offset`.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| self.table_byte(o))
                .unwrap_or(0);
        }
    }

    fn table_byte(&self, offset: u64) -> Option<u8> {
        let entry = self
            .entries
            .get(usize::try_from(offset / MSIX_ENTRY_SIZE).ok()?)?;
        let word = match (offset % MSIX_ENTRY_SIZE) / 4 {
            0 => entry.addr_lo,
            1 => entry.addr_hi,
            2 => entry.data,
            _ => entry.control,
        };
        Some(word.to_le_bytes()[(offset % 4) as usize])
    }

    /// Applies a guest write to the table at byte `offset` (any size).
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i as u64) else {
                return;
            };
            let Some(entry) = usize::try_from(o / MSIX_ENTRY_SIZE)
                .ok()
                .and_then(|n| self.entries.get_mut(n))
            else {
                return;
            };
            let word = match (o % MSIX_ENTRY_SIZE) / 4 {
                0 => &mut entry.addr_lo,
                1 => &mut entry.addr_hi,
                2 => &mut entry.data,
                _ => &mut entry.control,
            };
            let mut bytes = word.to_le_bytes();
            bytes[(o % 4) as usize] = *b;
            *word = u32::from_le_bytes(bytes);
        }
        self.sync();
    }

    /// Reads the pending-bit array at byte `offset`.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let mut v = 0u8;
            for bit in 0..8u64 {
                let idx = offset
                    .checked_add(i as u64)
                    .and_then(|o| o.checked_mul(8))
                    .and_then(|o| o.checked_add(bit))
                    .and_then(|o| usize::try_from(o).ok());
                if idx.and_then(|n| self.pending.get(n)).copied() == Some(true) {
                    v |= 1 << bit;
                }
            }
            *b = v;
        }
    }

    fn deliverable(&self, n: usize) -> bool {
        self.enabled
            && !self.function_masked
            && self
                .entries
                .get(n)
                .is_some_and(|e| e.control & ENTRY_MASKED == 0)
    }

    /// Brings the KVM routes in line with the table and delivers vectors
    /// that became unmasked while pending.
    pub(super) fn sync(&mut self) {
        for n in 0..self.entries.len() {
            let want = self.deliverable(n).then(|| self.entries[n].message());
            if want != self.routed[n] {
                match self.vectors.set_route(n, want) {
                    Ok(()) => self.routed[n] = want,
                    Err(e) => warn!(vector = n, error = %e, "cannot program MSI route"),
                }
            }
            if want.is_some() && self.pending[n] {
                self.pending[n] = false;
                self.fire_now(n);
            }
        }
    }

    fn fire_now(&self, n: usize) {
        if let Err(e) = self.vectors.fire(n) {
            warn!(vector = n, error = %e, "cannot fire MSI vector");
        }
    }

    /// Fires `vector`, or marks it pending when masked. Returns false if
    /// MSI-X is disabled or the vector does not exist (nothing delivered).
    pub fn fire(&mut self, vector: u16) -> bool {
        let n = usize::from(vector);
        if !self.enabled || n >= self.entries.len() {
            return false;
        }
        if self.deliverable(n) {
            self.fire_now(n);
        } else {
            self.pending[n] = true;
        }
        true
    }
}

/// The message-control bits the guest may write.
pub const CONTROL_WRITABLE: u16 = CONTROL_ENABLE | CONTROL_FUNCTION_MASK;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder {
        routes: Mutex<Vec<(usize, Option<MsiMessage>)>>,
        fired: Mutex<Vec<usize>>,
    }
    impl MsiVectors for Recorder {
        fn count(&self) -> usize {
            2
        }
        fn set_route(&self, index: usize, message: Option<MsiMessage>) -> std::io::Result<()> {
            self.routes.lock().expect("lock").push((index, message));
            Ok(())
        }
        fn fire(&self, index: usize) -> std::io::Result<()> {
            self.fired.lock().expect("lock").push(index);
            Ok(())
        }
    }

    #[test]
    fn masked_vectors_pend_and_fire_on_unmask() {
        let rec = Arc::new(Recorder::default());
        let mut m = MsixState::new(rec.clone());
        assert!(!m.fire(0), "disabled");
        m.set_control(CONTROL_ENABLE);
        m.write_table(0, &0xfee0_0000u32.to_le_bytes());
        m.write_table(8, &0x41u32.to_le_bytes());
        assert!(m.fire(0));
        assert!(rec.fired.lock().expect("lock").is_empty(), "still masked");
        let mut pba = [0u8; 1];
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 1);
        m.write_table(12, &0u32.to_le_bytes());
        assert_eq!(*rec.fired.lock().expect("lock"), vec![0]);
        assert_eq!(
            rec.routes.lock().expect("lock").last().copied(),
            Some((
                0,
                Some(MsiMessage {
                    address: 0xfee0_0000,
                    data: 0x41
                })
            ))
        );
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0);
        let mut back = [0u8; 4];
        m.read_table(8, &mut back);
        assert_eq!(u32::from_le_bytes(back), 0x41);
        // Out-of-range accesses are ignored.
        m.write_table(u64::MAX - 1, &[1, 2, 3]);
        m.read_table(1 << 40, &mut back);
        assert_eq!(back, [0; 4]);
        assert!(!m.fire(7));
    }
}
