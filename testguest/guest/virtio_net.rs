//! virtio-net (virtio 1.2, section 5.1) on the modern PCI transport, polled,
//! without offloads or mergeable buffers: identification (`virtio-list`),
//! ARP and ICMP echo against the host (`net-ping`) and a UDP transmit
//! benchmark (`net-bench`).

use crate::mem::{self, Bump};
use crate::virtio::{
    fail, fail_with, find_nth, put_mac, IdlePolls, Kind, Transport, VResult, Virtqueue,
    VIRTIO_F_RING_EVENT_IDX,
};
use crate::{parse_u64, put_dec, putc, puts, rdtsc, tsc_hz, Args, Deadline};

// Feature bits.
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const VIRTIO_NET_F_STATUS: u64 = 1 << 16;

/// `struct virtio_net_config` offsets.
mod config {
    pub const MAC: usize = 0;
    pub const STATUS: usize = 6;
}
const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// `struct virtio_net_hdr` with VERSION_1 (num_buffers included): 12 bytes,
/// all zero on transmit (no offloads).
const NET_HDR_LEN: usize = 12;

const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
/// Receive buffers posted.
const RX_BUFFERS: u16 = 16;
/// Bytes per buffer: header plus a full 1514-byte frame fits.
pub const BUF_SIZE: usize = 2048;
/// Most transmit slots.
const MAX_TX: usize = 256;
/// Used when the device offers no MAC (locally administered).
const FALLBACK_MAC: [u8; 6] = [0x02, 0x56, 0x52, 0x00, 0x00, 0x01];

/// An initialized virtio-net device with one receive and one transmit queue.
pub struct Net {
    t: Transport,
    rx: Virtqueue,
    tx: Virtqueue,
    pub mac: [u8; 6],
    rx_base: usize,
    rx_count: u16,
    tx_base: usize,
    /// Free transmit slots (a stack) and which slots the device holds.
    tx_free: [u16; MAX_TX],
    tx_nfree: usize,
    tx_busy: [bool; MAX_TX],
    pub tx_frames: u64,
    pub rx_frames: u64,
}

impl Net {
    pub fn open(slot: u8, extra: u64, tx_size: u16, arena: &mut Bump) -> VResult<Self> {
        let mut t = Transport::open(slot)?;
        t.negotiate(VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS | extra)?;
        let mut rx = t.setup_queue(RX_QUEUE, RX_BUFFERS, arena)?;
        let tx = t.setup_queue(TX_QUEUE, tx_size.min(MAX_TX as u16), arena)?;
        let oom = fail("out of memory for network buffers");
        let rx_count = rx.size;
        let rx_base = arena
            .alloc_zeroed(BUF_SIZE * usize::from(rx_count), 4096)
            .ok_or(oom)?;
        let tx_base = arena
            .alloc_zeroed(BUF_SIZE * usize::from(tx.size), 4096)
            .ok_or(oom)?;
        let mac = read_mac(&t)?;
        t.driver_ok()?;
        for i in 0..rx_count {
            rx.set_chain(
                i,
                &[(rx_base + usize::from(i) * BUF_SIZE, BUF_SIZE as u32, true)],
            );
            rx.push(i);
        }
        rx.kick();
        let mut tx_free = [0u16; MAX_TX];
        for (i, f) in tx_free.iter_mut().take(usize::from(tx.size)).enumerate() {
            // Pop order: slot 0 first.
            *f = tx.size - 1 - i as u16;
        }
        Ok(Self {
            tx_nfree: usize::from(tx.size),
            t,
            rx,
            tx,
            mac: mac.unwrap_or(FALLBACK_MAC),
            rx_base,
            rx_count,
            tx_base,
            tx_free,
            tx_busy: [false; MAX_TX],
            tx_frames: 0,
            rx_frames: 0,
        })
    }

    /// Takes back transmit slots the device has finished with.
    fn reclaim_tx(&mut self) -> VResult<u64> {
        let mut n = 0;
        while let Some(done) = self.tx.pop_used()? {
            let slot = usize::from(done.id);
            if !self.tx_busy[slot] {
                return Err(fail_with(
                    "device completed a transmit slot twice, slot",
                    slot as u64,
                ));
            }
            self.tx_busy[slot] = false;
            self.tx_free[self.tx_nfree] = done.id;
            self.tx_nfree += 1;
            n += 1;
        }
        Ok(n)
    }

    /// A free transmit slot, waiting for one if all are in flight.
    fn take_tx_slot(&mut self) -> VResult<u16> {
        let deadline = Deadline::after_ms(5000);
        while self.tx_nfree == 0 {
            self.reclaim_tx()?;
            if self.tx_nfree == 0 && deadline.expired() {
                self.tx.dump_state(&self.t);
                return Err(fail("transmit queue never drained"));
            }
        }
        self.tx_nfree -= 1;
        let slot = self.tx_free[self.tx_nfree];
        self.tx_busy[usize::from(slot)] = true;
        Ok(slot)
    }

    fn tx_buf(&self, slot: u16) -> usize {
        self.tx_base + usize::from(slot) * BUF_SIZE
    }

    /// Queues `frame` (zero header in front) and notifies.
    pub fn send(&mut self, frame: &[u8]) -> VResult<()> {
        if frame.len() + NET_HDR_LEN > BUF_SIZE {
            return Err(fail("frame too large"));
        }
        self.reclaim_tx()?;
        let slot = self.take_tx_slot()?;
        let buf = mem::bytes_mut(self.tx_buf(slot), NET_HDR_LEN + frame.len());
        buf[..NET_HDR_LEN].fill(0);
        buf[NET_HDR_LEN..].copy_from_slice(frame);
        let len = (NET_HDR_LEN + frame.len()) as u32;
        self.tx.set_chain(slot, &[(self.tx_buf(slot), len, false)]);
        self.tx.push(slot);
        self.tx.kick();
        self.tx_frames += 1;
        Ok(())
    }

    /// Waits until the device has completed every queued frame.
    pub fn drain_tx(&mut self) -> VResult<()> {
        let deadline = Deadline::after_ms(5000);
        while self.tx.in_flight() != 0 {
            self.reclaim_tx()?;
            if deadline.expired() {
                self.tx.dump_state(&self.t);
                return Err(fail("transmitted frames never completed"));
            }
        }
        Ok(())
    }

    /// The next received frame (without the virtio header), copied into
    /// `out`; its buffer goes straight back to the device.
    pub fn recv(&mut self, out: &mut [u8; BUF_SIZE]) -> VResult<Option<usize>> {
        let Some(done) = self.rx.pop_used()? else {
            return Ok(None);
        };
        if done.id >= self.rx_count {
            return Err(fail_with(
                "device returned an unknown receive buffer",
                done.id.into(),
            ));
        }
        let len = done.len as usize;
        if !(NET_HDR_LEN..=BUF_SIZE).contains(&len) {
            return Err(fail_with("received length out of range", len as u64));
        }
        let buf = self.rx_base + usize::from(done.id) * BUF_SIZE;
        let frame_len = len - NET_HDR_LEN;
        out[..frame_len].copy_from_slice(mem::bytes(buf + NET_HDR_LEN, frame_len));
        self.rx.push(done.id);
        self.rx.kick();
        self.rx_frames += 1;
        Ok(Some(frame_len))
    }
}

fn read_mac(t: &Transport) -> VResult<Option<[u8; 6]>> {
    if !t.has(VIRTIO_NET_F_MAC) {
        return Ok(None);
    }
    let mac = t.read_config(|c| {
        let mut mac = [0u8; 6];
        for (i, b) in mac.iter_mut().enumerate() {
            *b = c.u8(config::MAC + i)?;
        }
        Some(mac)
    })?;
    mac.map(Some)
        .ok_or(fail("virtio-net configuration lacks the MAC"))
}

/// Link state from the config `status` field; up when STATUS is not offered.
fn link_up(t: &Transport) -> VResult<bool> {
    if !t.has(VIRTIO_NET_F_STATUS) {
        return Ok(true);
    }
    let s = t.read_config(|c| c.u16(config::STATUS))?;
    let s = s.ok_or(fail("virtio-net configuration lacks the status field"))?;
    Ok(s & VIRTIO_NET_S_LINK_UP != 0)
}

/// The `net …` line of `virtio-list` for the device at `slot`.
pub fn list_one(slot: u8) -> VResult<()> {
    let mut t = Transport::open(slot)?;
    t.negotiate(VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS)?;
    let mac = read_mac(&t)?;
    let up = link_up(&t)?;
    puts("net mac=");
    match mac {
        Some(mac) => put_mac(&mac),
        None => puts("none"),
    }
    puts(" link=");
    puts(if up { "up" } else { "down" });
    putc(b'\n');
    t.reset()
}

// ------------------------------------------------------------- protocols

const ETH_HLEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const BROADCAST: [u8; 6] = [0xff; 6];
/// Shortest Ethernet frame without FCS.
const ETH_MIN: usize = 60;

const ARP_LEN: usize = 28;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

const IPV4_HLEN: usize = 20;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_UDP: u8 = 17;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_HLEN: usize = 8;
const PING_ID: u16 = 0x5652;
const PING_PAYLOAD: usize = 56;
const UDP_HLEN: usize = 8;
const UDP_SRC_PORT: u16 = 40000;
const UDP_DISCARD_PORT: u16 = 9;

fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

fn set_be16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_be_bytes());
}

/// The Internet checksum (RFC 1071) of `data`.
fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn eth_header(f: &mut [u8], dst: &[u8; 6], src: &[u8; 6], ethertype: u16) {
    f[0..6].copy_from_slice(dst);
    f[6..12].copy_from_slice(src);
    set_be16(f, 12, ethertype);
}

/// An ARP packet in a minimum-size frame; returns its length.
fn arp_frame(
    f: &mut [u8],
    op: u16,
    eth_dst: &[u8; 6],
    sha: &[u8; 6],
    spa: &[u8; 4],
    tha: &[u8; 6],
    tpa: &[u8; 4],
) -> usize {
    f[..ETH_MIN].fill(0);
    eth_header(f, eth_dst, sha, ETHERTYPE_ARP);
    let a = &mut f[ETH_HLEN..ETH_HLEN + ARP_LEN];
    set_be16(a, 0, 1); // Ethernet
    set_be16(a, 2, ETHERTYPE_IPV4);
    a[4] = 6;
    a[5] = 4;
    set_be16(a, 6, op);
    a[8..14].copy_from_slice(sha);
    a[14..18].copy_from_slice(spa);
    a[18..24].copy_from_slice(tha);
    a[24..28].copy_from_slice(tpa);
    ETH_MIN
}

/// An IPv4 header (no options, DF) with its checksum, at `f[ETH_HLEN..]`.
fn ipv4_header(f: &mut [u8], proto: u8, total_len: u16, id: u16, src: &[u8; 4], dst: &[u8; 4]) {
    let ip = &mut f[ETH_HLEN..ETH_HLEN + IPV4_HLEN];
    ip[0] = 0x45;
    ip[1] = 0;
    set_be16(ip, 2, total_len);
    set_be16(ip, 4, id);
    set_be16(ip, 6, 0x4000); // don't fragment
    ip[8] = 64;
    ip[9] = proto;
    set_be16(ip, 10, 0);
    ip[12..16].copy_from_slice(src);
    ip[16..20].copy_from_slice(dst);
    let sum = inet_checksum(ip);
    set_be16(ip, 10, sum);
}

fn ping_payload(seq: u16, k: usize) -> u8 {
    (k as u8).wrapping_add(seq as u8).wrapping_mul(3)
}

/// An ICMP echo request; returns the frame length.
fn echo_request(f: &mut [u8], env: &Endpoints, dst_mac: &[u8; 6], seq: u16) -> usize {
    let icmp_len = ICMP_HLEN + PING_PAYLOAD;
    let total = ETH_HLEN + IPV4_HLEN + icmp_len;
    eth_header(f, dst_mac, &env.mac, ETHERTYPE_IPV4);
    ipv4_header(
        f,
        IPPROTO_ICMP,
        (IPV4_HLEN + icmp_len) as u16,
        seq,
        &env.guest_ip,
        &env.host_ip,
    );
    let icmp = &mut f[ETH_HLEN + IPV4_HLEN..total];
    icmp[0] = ICMP_ECHO_REQUEST;
    icmp[1] = 0;
    set_be16(icmp, 2, 0);
    set_be16(icmp, 4, PING_ID);
    set_be16(icmp, 6, seq);
    for (k, b) in icmp[ICMP_HLEN..].iter_mut().enumerate() {
        *b = ping_payload(seq, k);
    }
    let sum = inet_checksum(icmp);
    set_be16(icmp, 2, sum);
    total
}

/// A UDP datagram to the discard port filling a `len`-byte frame.
fn udp_frame(f: &mut [u8], env: &Endpoints, dst_mac: &[u8; 6], len: usize) {
    f[..len].fill(0);
    eth_header(f, dst_mac, &env.mac, ETHERTYPE_IPV4);
    let ip_len = len - ETH_HLEN;
    ipv4_header(
        f,
        IPPROTO_UDP,
        ip_len as u16,
        1,
        &env.guest_ip,
        &env.host_ip,
    );
    let udp = &mut f[ETH_HLEN + IPV4_HLEN..len];
    set_be16(udp, 0, UDP_SRC_PORT);
    set_be16(udp, 2, UDP_DISCARD_PORT);
    set_be16(udp, 4, (ip_len - IPV4_HLEN) as u16);
    set_be16(udp, 6, 0); // no checksum (allowed over IPv4)
    for (k, b) in udp[UDP_HLEN..].iter_mut().enumerate() {
        *b = k as u8;
    }
}

/// Who we are and whom we talk to.
struct Endpoints {
    mac: [u8; 6],
    guest_ip: [u8; 4],
    host_ip: [u8; 4],
}

/// What a received frame was, as far as these scenarios care.
enum Incoming {
    ArpReply {
        sha: [u8; 6],
    },
    EchoReply {
        seq: u16,
        payload_ok: bool,
        payload_len: usize,
    },
    Other,
}

/// Classifies a frame; answers ARP requests for the guest's address (the
/// host checks its neighbour entry for us while we ping).
fn handle(net: &mut Net, env: &Endpoints, f: &[u8]) -> VResult<Incoming> {
    if f.len() < ETH_HLEN {
        return Ok(Incoming::Other);
    }
    let ethertype = be16(f, 12);
    let body = &f[ETH_HLEN..];
    if ethertype == ETHERTYPE_ARP && body.len() >= ARP_LEN {
        let op = be16(body, 6);
        let mut sha = [0u8; 6];
        sha.copy_from_slice(&body[8..14]);
        let spa = &body[14..18];
        let tpa = &body[24..28];
        if op == ARP_REPLY && spa == env.host_ip {
            return Ok(Incoming::ArpReply { sha });
        }
        if op == ARP_REQUEST && tpa == env.guest_ip {
            let mut spa4 = [0u8; 4];
            spa4.copy_from_slice(spa);
            let mut reply = [0u8; ETH_MIN];
            let n = arp_frame(
                &mut reply,
                ARP_REPLY,
                &sha,
                &env.mac,
                &env.guest_ip,
                &sha,
                &spa4,
            );
            net.send(&reply[..n])?;
        }
        return Ok(Incoming::Other);
    }
    if ethertype != ETHERTYPE_IPV4 || body.len() < IPV4_HLEN || body[0] >> 4 != 4 {
        return Ok(Incoming::Other);
    }
    let ihl = usize::from(body[0] & 0xf) * 4;
    let total = usize::from(be16(body, 2));
    if ihl < IPV4_HLEN || total < ihl + ICMP_HLEN || total > body.len() {
        return Ok(Incoming::Other);
    }
    if body[9] != IPPROTO_ICMP || body[12..16] != env.host_ip || body[16..20] != env.guest_ip {
        return Ok(Incoming::Other);
    }
    let icmp = &body[ihl..total];
    if icmp[0] != ICMP_ECHO_REPLY || be16(icmp, 4) != PING_ID {
        return Ok(Incoming::Other);
    }
    let seq = be16(icmp, 6);
    let payload = &icmp[ICMP_HLEN..];
    let payload_ok = inet_checksum(icmp) == 0
        && payload.len() == PING_PAYLOAD
        && payload
            .iter()
            .enumerate()
            .all(|(k, &b)| b == ping_payload(seq, k));
    Ok(Incoming::EchoReply {
        seq,
        payload_ok,
        payload_len: payload.len(),
    })
}

/// Waits for the next received frame until `deadline`; `None` on timeout.
fn wait_frame(
    net: &mut Net,
    frame: &mut [u8; BUF_SIZE],
    deadline: &Deadline,
) -> VResult<Option<usize>> {
    let mut idle = IdlePolls::new();
    loop {
        if let Some(len) = net.recv(frame)? {
            return Ok(Some(len));
        }
        if deadline.expired() {
            return Ok(None);
        }
        if idle.check_due() {
            net.t.check_health()?;
        }
        core::hint::spin_loop();
    }
}

/// Learns the host's MAC: ARP requests once a second for up to 5 s.
fn resolve(net: &mut Net, env: &Endpoints, frame: &mut [u8; BUF_SIZE]) -> VResult<[u8; 6]> {
    for _attempt in 0..5 {
        let mut req = [0u8; ETH_MIN];
        let n = arp_frame(
            &mut req,
            ARP_REQUEST,
            &BROADCAST,
            &env.mac,
            &env.guest_ip,
            &[0; 6],
            &env.host_ip,
        );
        net.send(&req[..n])?;
        let retry = Deadline::after_ms(1000);
        while let Some(len) = wait_frame(net, frame, &retry)? {
            if let Incoming::ArpReply { sha } = handle(net, env, &frame[..len])? {
                return Ok(sha);
            }
        }
    }
    net.rx.dump_state(&net.t);
    Err(fail("no ARP reply from the host"))
}

fn parse_ipv4(word: Option<&[u8]>) -> Option<[u8; 4]> {
    let mut ip = [0u8; 4];
    let mut parts = word?.split(|&b| b == b'.');
    for octet in ip.iter_mut() {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let v = p.iter().fold(0u32, |v, &d| v * 10 + u32::from(d - b'0'));
        *octet = u8::try_from(v).ok()?;
    }
    parts.next().is_none().then_some(ip)
}

fn endpoints(args: &mut Args<'_>, net: &Net) -> VResult<Endpoints> {
    let guest_ip = parse_ipv4(args.next()).ok_or(fail("bad guest IPv4 address"))?;
    let host_ip = parse_ipv4(args.next()).ok_or(fail("bad host IPv4 address"))?;
    Ok(Endpoints {
        mac: net.mac,
        guest_ip,
        host_ip,
    })
}

/// `net-ping <guest-ip> <host-ip>`.
pub fn scenario_ping(args: &mut Args<'_>) -> VResult<()> {
    let mut arena = Bump::arena();
    let slot = find_nth(Kind::Net, 0)?;
    let mut net = Net::open(slot, 0, 16, &mut arena)?;
    let env = endpoints(args, &net)?;
    let mut frame = [0u8; BUF_SIZE];

    let host_mac = resolve(&mut net, &env, &mut frame)?;
    puts("net arp-reply mac=");
    put_mac(&host_mac);
    putc(b'\n');

    for seq in 1..=3u16 {
        let mut req = [0u8; 128];
        let n = echo_request(&mut req, &env, &host_mac, seq);
        net.send(&req[..n])?;
        let deadline = Deadline::after_ms(5000);
        loop {
            let Some(len) = wait_frame(&mut net, &mut frame, &deadline)? else {
                net.rx.dump_state(&net.t);
                return Err(fail_with("no echo reply, seq", seq.into()));
            };
            let Incoming::EchoReply {
                seq: got,
                payload_ok,
                payload_len,
            } = handle(&mut net, &env, &frame[..len])?
            else {
                continue;
            };
            if got != seq {
                continue;
            }
            if !payload_ok {
                return Err(fail_with("echo reply corrupted, seq", seq.into()));
            }
            puts("net icmp-reply seq=");
            put_dec(seq.into());
            puts(" bytes=");
            put_dec(payload_len as u64);
            putc(b'\n');
            break;
        }
    }
    net.drain_tx()?;
    net.t.check_health()?;
    puts("net ok tx=");
    put_dec(net.tx_frames);
    puts(" rx=");
    put_dec(net.rx_frames);
    putc(b'\n');
    Ok(())
}

/// `net-bench <guest-ip> <host-ip> <frames> <frame-bytes>`: UDP frames to
/// the host's discard port, the transmit queue kept full.
pub fn scenario_bench(args: &mut Args<'_>) -> VResult<()> {
    let mut arena = Bump::arena();
    let slot = find_nth(Kind::Net, 0)?;
    let mut net = Net::open(slot, VIRTIO_F_RING_EVENT_IDX, MAX_TX as u16, &mut arena)?;
    let env = endpoints(args, &net)?;
    let frames = parse_u64(args.next(), 10_000);
    let frame_bytes = parse_u64(args.next(), 1514) as usize;
    if !(ETH_HLEN + IPV4_HLEN + UDP_HLEN..=1514).contains(&frame_bytes) {
        return Err(fail_with(
            "frame-bytes must be 42..=1514, got",
            frame_bytes as u64,
        ));
    }
    let mut frame = [0u8; BUF_SIZE];
    let host_mac = resolve(&mut net, &env, &mut frame)?;
    net.drain_tx()?;

    // Every slot carries the same frame; only descriptors are recycled.
    let mut udp = [0u8; BUF_SIZE];
    udp_frame(&mut udp, &env, &host_mac, frame_bytes);
    let len = (NET_HDR_LEN + frame_bytes) as u32;
    for s in 0..net.tx.size {
        let buf = mem::bytes_mut(net.tx_buf(s), NET_HDR_LEN + frame_bytes);
        buf[..NET_HDR_LEN].fill(0);
        buf[NET_HDR_LEN..].copy_from_slice(&udp[..frame_bytes]);
        let addr = net.tx_buf(s);
        net.tx.set_chain(s, &[(addr, len, false)]);
    }

    let tx_before = net.tx_frames;
    let mut sent = 0u64;
    let mut completed = 0u64;
    let mut deadline = Deadline::after_ms(10_000);
    let mut idle = IdlePolls::new();
    puts("bench-start\n");
    let t0 = rdtsc();
    while completed < frames {
        let done = net.reclaim_tx()?;
        completed += done;
        let mut queued = false;
        while net.tx_nfree > 0 && sent < frames {
            net.tx_nfree -= 1;
            let s = net.tx_free[net.tx_nfree];
            net.tx_busy[usize::from(s)] = true;
            net.tx.push(s);
            sent += 1;
            queued = true;
        }
        if queued {
            net.tx.kick();
        }
        // Keep receive buffers flowing (the host may answer, e.g. ICMP
        // port unreachable); contents are ignored.
        while net.recv(&mut frame)?.is_some() {}
        if done > 0 || queued {
            deadline = Deadline::after_ms(10_000);
        } else {
            if idle.check_due() {
                net.t.check_health()?;
                if deadline.expired() {
                    net.tx.dump_state(&net.t);
                    return Err(fail_with("net bench stalled, completed", completed));
                }
            }
            core::hint::spin_loop();
        }
    }
    let cycles = rdtsc().wrapping_sub(t0);
    net.tx_frames = tx_before + sent;
    puts("bench-done frames=");
    put_dec(completed);
    puts(" bytes=");
    put_dec(completed * frame_bytes as u64);
    putc(b'\n');
    puts("bench-info tsc-cycles=");
    put_dec(cycles);
    puts(" tsc-hz=");
    put_dec(tsc_hz());
    puts(" notifications=");
    put_dec(net.tx.notifications);
    puts(" event-idx=");
    putc(if net.t.has(VIRTIO_F_RING_EVENT_IDX) {
        b'1'
    } else {
        b'0'
    });
    putc(b'\n');
    Ok(())
}
