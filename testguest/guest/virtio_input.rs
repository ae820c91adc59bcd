//! A polling virtio-input driver (virtio 1.2 §5.8) for the `input-events`
//! scenario: reads the device name from the configuration space, keeps the
//! event queue full of 8-byte buffers and prints every event it receives.
//! The status queue is set up (the device needs both) and never used.

use crate::mem::{rd16, rd32, Bump};
use crate::virtio::{fail, fail_with};
use crate::virtio::{find_nth, Kind, Transport, VResult, VIRTQ_DESC_F_WRITE};
use crate::{parse_u64, put_dec, putc, puts, Args};

/// Event queue index.
const EVENT_QUEUE: u16 = 0;
/// Status queue index.
const STATUS_QUEUE: u16 = 1;
/// Event buffers kept posted.
const BUFFERS: u16 = 32;
/// Bytes of one `virtio_input_event` (`le16 type, le16 code, le32 value`).
const EVENT_SIZE: usize = 8;
/// `select` value asking for the device name.
const CFG_ID_NAME: u8 = 1;
/// Configuration offsets: `select`, `subsel`, `size`, the union.
const CFG_SELECT: usize = 0;
const CFG_SUBSEL: usize = 1;
const CFG_SIZE: usize = 2;
const CFG_UNION: usize = 8;
/// How long to wait for each event (the host injects them when it sees
/// `input ready`).
const EVENT_TIMEOUT_MS: u64 = 30_000;

/// `input-events COUNT`.
pub fn scenario_events(args: &mut Args<'_>) -> VResult<()> {
    let count = parse_u64(args.next(), 8);
    let mut arena = Bump::arena();
    let slot = find_nth(Kind::Input, 0)?;
    let mut t = Transport::open(slot)?;
    t.negotiate(0)?;

    t.write_config_u8(CFG_SELECT, CFG_ID_NAME)?;
    t.write_config_u8(CFG_SUBSEL, 0)?;
    let size = t
        .read_config(|c| c.u8(CFG_SIZE))?
        .ok_or(fail("configuration has no size field"))?;
    if size == 0 || size > 128 {
        return Err(fail_with("bad ID_NAME size", size.into()));
    }
    puts("input name=");
    for i in 0..usize::from(size) {
        let b = t
            .read_config(|c| c.u8(CFG_UNION + i))?
            .ok_or(fail("configuration union is cut short"))?;
        putc(b);
    }
    putc(b'\n');

    let mut evq = t.setup_queue(EVENT_QUEUE, BUFFERS, &mut arena)?;
    let _statusq = t.setup_queue(STATUS_QUEUE, 8, &mut arena)?;
    let n = evq.size;
    let bufs = arena
        .alloc_zeroed(EVENT_SIZE * usize::from(n), 4096)
        .ok_or(fail("out of memory for event buffers"))?;
    for i in 0..n {
        evq.set_desc(
            i,
            bufs + EVENT_SIZE * usize::from(i),
            EVENT_SIZE as u32,
            VIRTQ_DESC_F_WRITE,
            0,
        );
        evq.push(i);
    }
    t.driver_ok()?;
    evq.kick();
    puts("input ready\n");

    for _ in 0..count {
        let e = evq.wait_used(&t, EVENT_TIMEOUT_MS)?;
        if e.len as usize != EVENT_SIZE {
            return Err(fail_with("event buffer used with length", e.len.into()));
        }
        let at = bufs + EVENT_SIZE * usize::from(e.id);
        puts("input type=");
        put_dec(rd16(at).into());
        puts(" code=");
        put_dec(rd16(at + 2).into());
        puts(" value=");
        put_dec(rd32(at + 4).into());
        putc(b'\n');
        evq.push(e.id);
        evq.kick();
    }
    puts("input done\n");
    Ok(())
}
