//! virtio-blk requests (virtio 1.2 §5.2.6): parsed from a [`ChainLayout`]
//! and executed against a [`DiskBackend`].
//!
//! Layout: a 16-byte header (type, reserved, sector) and any data-out bytes
//! in the device-readable part; data-in bytes and a final status byte in the
//! device-writable part. Anything the guest gets wrong completes with
//! `VIRTIO_BLK_S_IOERR` (or `UNSUPP` for unknown types) — the VMM never
//! panics and never touches memory outside the chain's segments.

use thiserror::Error;
use vireo_block::{DiskBackend, GuestSlice};

use crate::virtio::chain::{self, ChainError, ChainLayout};
use crate::virtio::GuestMemory;

/// Bytes in a sector.
pub const SECTOR_SIZE: u64 = 512;
/// Header length.
pub const HEADER_LEN: u64 = 16;
/// Length of a discard / write-zeroes segment descriptor.
pub const RANGE_LEN: u64 = 16;

/// Request types.
pub mod kind {
    /// Read.
    pub const IN: u32 = 0;
    /// Write.
    pub const OUT: u32 = 1;
    /// Flush.
    pub const FLUSH: u32 = 4;
    /// Device serial.
    pub const GET_ID: u32 = 8;
    /// Discard.
    pub const DISCARD: u32 = 11;
    /// Write zeroes.
    pub const WRITE_ZEROES: u32 = 13;
}

/// Status byte values.
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// I/O error (also: malformed request).
    pub const IOERR: u8 = 1;
    /// Unsupported request.
    pub const UNSUPP: u8 = 2;
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// Read `len` bytes into the data-in segments.
    In,
    /// Write the data-out segments.
    Out,
    /// Flush.
    Flush,
    /// Return the serial.
    GetId,
    /// Discard the ranges in data-out.
    Discard,
    /// Zero the ranges in data-out.
    WriteZeroes,
    /// A type this device does not implement.
    Unsupported(u32),
}

/// A parsed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub kind: RequestKind,
    /// First sector (for IN/OUT).
    pub sector: u64,
    /// Data bytes: data-in length for IN/GET_ID, data-out length for OUT,
    /// DISCARD and WRITE_ZEROES, 0 for FLUSH and unsupported types.
    pub data_len: u64,
}

/// Why a request is malformed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RequestError {
    /// The chain itself is malformed.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// No device-writable byte for the status.
    #[error("the chain has no writable status byte")]
    NoStatus,
    /// Fewer than 16 readable bytes.
    #[error("the request header is shorter than 16 bytes")]
    ShortHeader,
    /// Data that is not a whole number of sectors.
    #[error("{0} data bytes is not a multiple of 512")]
    Unaligned(u64),
    /// The sector range overflows.
    #[error("sector {0} is out of range")]
    SectorOverflow(u64),
    /// Data in the wrong direction for the request type.
    #[error("the chain's data descriptors have the wrong direction for the request")]
    WrongDirection,
    /// Too many or malformed discard / write-zeroes ranges.
    #[error("invalid discard/write-zeroes ranges: {0}")]
    BadRanges(&'static str),
}

/// Limits the device advertised, enforced on every request.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most discard / write-zeroes ranges per request.
    pub max_ranges: u32,
    /// Most sectors per discard / write-zeroes range.
    pub max_range_sectors: u32,
}

/// Parses the request in `layout` (the status byte is the last writable byte).
pub fn parse(layout: &ChainLayout, mem: &GuestMemory) -> Result<Request, RequestError> {
    let readable = chain::total(&layout.readable);
    let writable = chain::total(&layout.writable);
    if writable == 0 {
        return Err(RequestError::NoStatus);
    }
    let mut header = [0u8; HEADER_LEN as usize];
    if readable < HEADER_LEN || !chain::read_bytes(mem, &layout.readable, 0, &mut header) {
        return Err(RequestError::ShortHeader);
    }
    let ty = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut sector_bytes = [0u8; 8];
    sector_bytes.copy_from_slice(&header[8..16]);
    let sector = u64::from_le_bytes(sector_bytes);
    let data_out = readable - HEADER_LEN;
    let data_in = writable - 1;
    let kind = match ty {
        kind::IN => RequestKind::In,
        kind::OUT => RequestKind::Out,
        kind::FLUSH => RequestKind::Flush,
        kind::GET_ID => RequestKind::GetId,
        kind::DISCARD => RequestKind::Discard,
        kind::WRITE_ZEROES => RequestKind::WriteZeroes,
        other => RequestKind::Unsupported(other),
    };
    let data_len = match kind {
        RequestKind::In => {
            if data_out != 0 {
                return Err(RequestError::WrongDirection);
            }
            data_in
        }
        RequestKind::Out => {
            if data_in != 0 {
                return Err(RequestError::WrongDirection);
            }
            data_out
        }
        RequestKind::GetId => data_in,
        RequestKind::Flush | RequestKind::Unsupported(_) => 0,
        RequestKind::Discard | RequestKind::WriteZeroes => {
            if data_out == 0 || !data_out.is_multiple_of(RANGE_LEN) {
                return Err(RequestError::BadRanges("length is not a multiple of 16"));
            }
            data_out
        }
    };
    if matches!(kind, RequestKind::In | RequestKind::Out) {
        if !data_len.is_multiple_of(SECTOR_SIZE) {
            return Err(RequestError::Unaligned(data_len));
        }
        sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|o| o.checked_add(data_len))
            .ok_or(RequestError::SectorOverflow(sector))?;
    }
    Ok(Request {
        kind,
        sector,
        data_len,
    })
}

/// The outcome of one request: the status byte and the bytes written into
/// the guest's writable buffers (the used-ring length, status included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// `status::*`.
    pub status: u8,
    /// Used length.
    pub used_len: u32,
}

/// Runs `req` against `disk`, writes the status byte, and returns the
/// outcome. `slices` is scratch space reused between requests.
pub fn execute<'m>(
    req: &Request,
    layout: &ChainLayout,
    mem: &'m GuestMemory,
    disk: &dyn DiskBackend,
    limits: &Limits,
    slices: &mut Vec<GuestSlice<'m>>,
) -> Outcome {
    let done = perform(req, layout, mem, disk, limits, slices);
    finish(layout, mem, done.status, done.data_written)
}

/// What [`perform`] did: the status to report and the data bytes it wrote
/// into the guest's writable buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Performed {
    /// `status::*`.
    pub status: u8,
    /// Data bytes written into the writable buffers (the status excluded).
    pub data_written: u64,
}

impl Performed {
    /// A request that failed with `status` and wrote no data.
    pub fn failed(status: u8) -> Self {
        Self {
            status,
            data_written: 0,
        }
    }
}

/// Runs `req` against `disk` but leaves the status byte unwritten, so a
/// worker can do the I/O of a whole batch before it completes any of it
/// ([`execute`] = `perform` + [`finish`]).
pub fn perform<'m>(
    req: &Request,
    layout: &ChainLayout,
    mem: &'m GuestMemory,
    disk: &dyn DiskBackend,
    limits: &Limits,
    slices: &mut Vec<GuestSlice<'m>>,
) -> Performed {
    slices.clear();
    match run(req, layout, mem, disk, limits, slices) {
        Ok(n) => Performed {
            status: status::OK,
            data_written: n,
        },
        Err(s) => Performed::failed(s),
    }
}

/// Writes `status` into the last writable byte and computes the used length.
pub fn finish(layout: &ChainLayout, mem: &GuestMemory, status: u8, data_written: u64) -> Outcome {
    let writable = chain::total(&layout.writable);
    if writable == 0 || !chain::write_bytes(mem, &layout.writable, writable - 1, &[status]) {
        return Outcome {
            status,
            used_len: 0,
        };
    }
    Outcome {
        status,
        used_len: u32::try_from(data_written.saturating_add(1)).unwrap_or(u32::MAX),
    }
}

fn run<'m>(
    req: &Request,
    layout: &ChainLayout,
    mem: &'m GuestMemory,
    disk: &dyn DiskBackend,
    limits: &Limits,
    slices: &mut Vec<GuestSlice<'m>>,
) -> Result<u64, u8> {
    let offset = req.sector.wrapping_mul(SECTOR_SIZE);
    match req.kind {
        RequestKind::In => {
            chain::slices(mem, &layout.writable, 0, req.data_len, slices)
                .map_err(|_| status::IOERR)?;
            disk.read_vectored(offset, slices)
                .map_err(|_| status::IOERR)?;
            Ok(req.data_len)
        }
        RequestKind::Out => {
            chain::slices(mem, &layout.readable, HEADER_LEN, req.data_len, slices)
                .map_err(|_| status::IOERR)?;
            disk.write_vectored(offset, slices)
                .map_err(|_| status::IOERR)?;
            Ok(0)
        }
        RequestKind::Flush => disk.flush().map(|()| 0).map_err(|_| status::IOERR),
        RequestKind::GetId => {
            let id = disk.device_id().as_virtio_bytes();
            let n = (id.len() as u64).min(req.data_len);
            if !chain::write_bytes(mem, &layout.writable, 0, &id[..n as usize]) {
                return Err(status::IOERR);
            }
            Ok(n)
        }
        RequestKind::Discard | RequestKind::WriteZeroes => {
            let discard = req.kind == RequestKind::Discard;
            let caps = disk.capabilities();
            if (discard && !caps.discard) || (!discard && !caps.write_zeroes) {
                return Err(status::UNSUPP);
            }
            let count = req.data_len / RANGE_LEN;
            if count > u64::from(limits.max_ranges) {
                return Err(status::IOERR);
            }
            for i in 0..count {
                let mut r = [0u8; RANGE_LEN as usize];
                if !chain::read_bytes(mem, &layout.readable, HEADER_LEN + i * RANGE_LEN, &mut r) {
                    return Err(status::IOERR);
                }
                let mut s = [0u8; 8];
                s.copy_from_slice(&r[0..8]);
                let sector = u64::from_le_bytes(s);
                let sectors = u32::from_le_bytes([r[8], r[9], r[10], r[11]]);
                let flags = u32::from_le_bytes([r[12], r[13], r[14], r[15]]);
                let unmap = flags & 1 != 0;
                // Flags other than unmap are reserved; unmap is only valid for write zeroes.
                if flags & !1 != 0 || (discard && unmap) || sectors > limits.max_range_sectors {
                    return Err(status::UNSUPP);
                }
                let start = sector.checked_mul(SECTOR_SIZE).ok_or(status::IOERR)?;
                let len = u64::from(sectors) * SECTOR_SIZE;
                let res = if discard {
                    disk.discard(start, len)
                } else {
                    disk.write_zeroes(start, len, unmap)
                };
                res.map_err(|_| status::IOERR)?;
            }
            Ok(0)
        }
        RequestKind::Unsupported(_) => Err(status::UNSUPP),
    }
}
