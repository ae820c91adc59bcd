//! virtio-net through the harness on a real tap in a private network namespace. The host side of
//! the tap has `HOST_IP`, so the kernel answers an ARP request the driver transmits, and the
//! reply comes back through the receive queue. Needs root (fails otherwise).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vireo_devices::virtio::net::{feature, NetCounters, VirtioNet, MAX_TX_LEN, RX_QUEUE, TX_QUEUE};
use vireo_devices::virtio::{features, status};
use vireo_net::VNET_HDR_LEN;

use vireo_devices::persist::PersistError;
use vireo_devices::virtio::persist::{VirtioDeviceState, VirtioPciState};
use vireo_devices::virtio::VirtioPciDevice;

use crate::driver::{
    assert_bytes, linked, unique_index, Driver, MsiRecorder, Seg, Used, BAR_ADDR, MEM_SIZE, TIMEOUT,
};
use crate::netcommon::{
    arp_request, guest_mac, in_netns, ip, is_arp_reply, link_mac, require_root, tap_with_address,
    GUEST_IP, HOST_IP,
};

const TAP: &str = "vtap0";
const RX_BUF: usize = 2048;
const UNTOUCHED: u8 = 0xee;

/// A virtio-net device on a fresh tap, initialised with every offered feature.
struct Net {
    drv: Driver,
    counters: Arc<NetCounters>,
    /// Posted receive chains by head: their writable segments.
    rx: HashMap<u16, Vec<Seg>>,
}

impl Net {
    fn new() -> Self {
        let tap = tap_with_address(TAP);
        let dev = VirtioNet::new(tap, guest_mac(), unique_index());
        let counters = dev.counters();
        let mut drv = Driver::new(Box::new(dev));
        drv.init_all();
        Self {
            drv,
            counters,
            rx: HashMap::new(),
        }
    }

    fn count(&self, f: impl Fn(&NetCounters) -> &std::sync::atomic::AtomicU64) -> u64 {
        f(&self.counters).load(Ordering::Relaxed)
    }

    /// Posts `n` receive chains (a 12-byte header descriptor and a data descriptor each, every
    /// third through an indirect table) and notifies the receive queue.
    fn post_rx(&mut self, n: usize) {
        for i in 0..n {
            let segs = vec![
                self.drv.wbuf(VNET_HDR_LEN, UNTOUCHED),
                self.drv.wbuf(RX_BUF, UNTOUCHED),
            ];
            let head = if i % 3 == 2 {
                self.drv.write_indirect(RX_QUEUE, &linked(&segs, 0))
            } else {
                self.drv.write_chain(RX_QUEUE, &segs)
            };
            self.drv.publish(RX_QUEUE, head);
            self.rx.insert(head, segs);
        }
        self.drv.kick(RX_QUEUE);
    }

    /// Waits for a received frame; returns the used element, the virtio-net header and the frame.
    fn recv(&mut self) -> (Used, Vec<u8>, Vec<u8>) {
        let used = self.drv.wait_used(RX_QUEUE);
        let segs = self
            .rx
            .remove(&(used.id as u16))
            .unwrap_or_else(|| panic!("used id {} was never posted", used.id));
        let bytes: Vec<u8> = segs.iter().flat_map(|s| self.drv.seg_bytes(*s)).collect();
        let n = used.len as usize;
        assert!(n >= VNET_HDR_LEN && n <= bytes.len(), "used len {n}");
        (
            used,
            bytes[..VNET_HDR_LEN].to_vec(),
            bytes[VNET_HDR_LEN..n].to_vec(),
        )
    }

    /// Receives until an ARP reply to the guest arrives.
    fn recv_arp_reply(&mut self) -> (Used, Vec<u8>, Vec<u8>) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            assert!(Instant::now() < deadline, "no ARP reply");
            let (used, hdr, frame) = self.recv();
            if is_arp_reply(&frame) {
                return (used, hdr, frame);
            }
            self.post_rx(1);
        }
    }

    /// Transmits `segs` and waits for the chain to be used.
    fn send(&mut self, segs: &[Seg]) -> Used {
        let head = self.drv.submit(TX_QUEUE, segs);
        let used = self.drv.wait_used(TX_QUEUE);
        assert_eq!(used.id, u32::from(head));
        used
    }

    /// Transmits an ARP request for `HOST_IP` as header + frame split in two.
    fn send_arp(&mut self) -> usize {
        let frame = arp_request(guest_mac(), GUEST_IP, HOST_IP);
        let segs = [
            self.drv.rbuf(&[0; VNET_HDR_LEN]),
            self.drv.rbuf(&frame[..20]),
            self.drv.rbuf(&frame[20..]),
        ];
        assert_eq!(self.send(&segs).len, 0, "TX used length");
        frame.len()
    }

    /// Sends an ARP request and checks the reply arrives (the device works).
    fn assert_arp_round_trip(&mut self) {
        if self.rx.is_empty() {
            self.post_rx(2);
        }
        self.send_arp();
        let (used, hdr, frame) = self.recv_arp_reply();
        assert_eq!(used.len as usize, VNET_HDR_LEN + frame.len());
        assert_eq!(&hdr[10..12], &[1, 0], "num_buffers");
        assert_eq!(&frame[0..6], &guest_mac().bytes(), "to the guest");
        let s = self.drv.status();
        assert_eq!(s & status::DEVICE_NEEDS_RESET, 0, "status {s:#x}");
    }
}

/// Packet counters of the tap as the kernel sees them: (rx, tx) from the kernel's side, i.e.
/// frames the guest sent and frames the kernel sent to the guest.
fn tap_packets() -> (u64, u64) {
    let out = ip(&["-s", "link", "show", "dev", TAP]);
    let lines: Vec<&str> = out.lines().collect();
    let field = |tag: &str| -> u64 {
        let i = lines
            .iter()
            .position(|l| l.trim_start().starts_with(tag))
            .unwrap_or_else(|| panic!("{tag} in ip -s output:\n{out}"));
        lines[i + 1]
            .split_whitespace()
            .nth(1)
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("packets after {tag}:\n{out}"))
    };
    (field("RX:"), field("TX:"))
}

/// Transmits an ARP request and returns once the kernel has answered it into the tap. The
/// kernel records the guest as a neighbour and sends its reply in the same pass (the tap has no
/// qdisc), so the neighbour entry appearing means the reply is on its way; a short grace period
/// covers the rest.
fn send_arp_and_wait_for_reply_queued(n: &mut Net) {
    ip(&["neigh", "flush", "dev", TAP]);
    n.send_arp();
    let deadline = Instant::now() + TIMEOUT;
    while !ip(&["neigh", "show", "dev", TAP]).contains(&GUEST_IP.to_string()) {
        assert!(
            Instant::now() < deadline,
            "the kernel never saw the ARP request"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
}

/// Runs `f` in a fresh network namespace; fails unless root.
fn net_test(name: &str, f: impl FnOnce() + Send + 'static) {
    require_root(name);
    in_netns(f);
}

#[test]
fn net_features_and_config_space() {
    net_test("net_features_and_config_space", || {
        let mut n = Net::new();
        let f = n.drv.device_features();
        for bit in [
            features::VERSION_1,
            feature::MAC,
            feature::STATUS,
            feature::CSUM,
            feature::GUEST_CSUM,
        ] {
            assert_ne!(f & bit, 0, "feature {bit:#x} offered");
        }
        let mac: Vec<u8> = (0..6).map(|i| n.drv.device_cfg(i, 1) as u8).collect();
        assert_eq!(mac, guest_mac().bytes());
        assert_eq!(n.drv.device_cfg(6, 2), 1, "link up");
        assert_eq!(n.drv.device_cfg(8, 2), 1, "max_virtqueue_pairs");
        assert_eq!(n.drv.common(crate::driver::reg::NUM_QUEUES, 2), 2);
        assert_eq!(n.drv.cfg16(2), 0x1041, "modern virtio-net device id");
    });
}

#[test]
fn net_tx_arp_request_gets_kernel_reply_on_rx() {
    net_test("net_tx_arp_request_gets_kernel_reply_on_rx", || {
        let mut n = Net::new();
        let host_mac = link_mac(TAP);
        n.post_rx(4);
        let (rx_fired, tx_fired) = (n.drv.msi.fired(1), n.drv.msi.fired(2));
        let (kernel_rx, _) = tap_packets();
        let len = n.send_arp();
        assert!(
            n.drv.msi.wait_fired(2, tx_fired, TIMEOUT),
            "TX vector fired"
        );
        let (used, hdr, frame) = n.recv_arp_reply();
        assert!(
            n.drv.msi.wait_fired(1, rx_fired, TIMEOUT),
            "RX vector fired"
        );
        assert_eq!(used.len as usize, VNET_HDR_LEN + frame.len());
        assert_eq!(hdr[0], 0, "flags");
        assert_eq!(hdr[1], 0, "gso_type");
        assert_eq!(&hdr[10..12], &[1, 0], "num_buffers == 1");
        assert!(frame.len() >= 42);
        assert_eq!(&frame[0..6], &guest_mac().bytes(), "Ethernet destination");
        assert_eq!(&frame[6..12], &host_mac.bytes(), "Ethernet source");
        assert_eq!(&frame[28..32], &HOST_IP.octets(), "sender IP");
        assert_eq!(&frame[38..42], &GUEST_IP.octets(), "target IP");
        assert_eq!(tap_packets().0, kernel_rx + 1, "the kernel got one frame");
        assert_eq!(n.count(|c| &c.tx_frames), 1);
        assert_eq!(n.count(|c| &c.tx_bytes), len as u64);
        assert_eq!(n.count(|c| &c.tx_errors), 0);
        assert!(n.count(|c| &c.rx_frames) >= 1);
        assert!(n.count(|c| &c.rx_bytes) >= frame.len() as u64);
        assert_eq!(n.count(|c| &c.malformed), 0);
        assert!(n.count(|c| &c.interrupts) >= 2);
        // More round trips, some through the indirect receive buffers.
        for _ in 0..5 {
            n.assert_arp_round_trip();
        }
        assert_eq!(n.count(|c| &c.tx_frames), 6);
        assert_eq!(n.count(|c| &c.tx_bytes), 6 * len as u64);
    });
}

#[test]
fn net_malformed_tx_chains_are_dropped() {
    net_test("net_malformed_tx_chains_are_dropped", || {
        let mut n = Net::new();
        let frame = arp_request(guest_mac(), GUEST_IP, HOST_IP);
        let (kernel_rx, _) = tap_packets();
        let mut cases: Vec<(&str, Vec<Seg>)> = Vec::new();
        // A writable descriptor in a transmit chain.
        let hdr = n.drv.rbuf(&[0; VNET_HDR_LEN]);
        let body = n.drv.rbuf(&frame);
        let w = n.drv.wbuf(64, UNTOUCHED);
        cases.push(("writable descriptor", vec![hdr, body, w]));
        // Shorter than the virtio-net header.
        cases.push(("11 bytes", vec![n.drv.rbuf(&[0; 11])]));
        // Longer than MAX_TX_LEN.
        let big = vec![0u8; MAX_TX_LEN as usize + 1 - VNET_HDR_LEN];
        let big = n.drv.rbuf(&big);
        cases.push(("MAX_TX_LEN + 1", vec![hdr, big]));
        // Outside guest memory.
        cases.push(("outside memory", vec![hdr, Seg::r(MEM_SIZE - 8, 64)]));
        // No descriptor at all reachable (zero-length only).
        cases.push(("zero length", vec![Seg::r(body.addr, 0)]));
        for (i, (what, segs)) in cases.iter().enumerate() {
            let used = n.send(segs);
            assert_eq!(used.len, 0, "{what}");
            assert_eq!(n.count(|c| &c.malformed), i as u64 + 1, "{what}");
            assert_eq!(n.count(|c| &c.tx_frames), 0, "{what}");
        }
        assert_bytes(&n.drv.seg_bytes(w), &[UNTOUCHED; 64], "nothing written");
        assert_eq!(tap_packets().0, kernel_rx, "no frame reached the kernel");
        // The device still works; a frame of exactly MAX_TX_LEN is accepted (the tap may refuse
        // it as oversized, which only counts a TX error).
        n.assert_arp_round_trip();
        let max = vec![0u8; MAX_TX_LEN as usize - VNET_HDR_LEN];
        let max = n.drv.rbuf(&max);
        assert_eq!(n.send(&[hdr, max]).len, 0);
        assert_eq!(
            n.count(|c| &c.tx_frames) + n.count(|c| &c.tx_errors),
            2,
            "both frames went to the tap"
        );
        assert_eq!(n.count(|c| &c.malformed), cases.len() as u64);
    });
}

#[test]
fn net_malformed_rx_chains_complete_with_zero_length() {
    net_test("net_malformed_rx_chains_complete_with_zero_length", || {
        let mut n = Net::new();
        let cases: Vec<(&str, Vec<Seg>)> = vec![
            (
                "readable descriptor",
                vec![n.drv.rbuf(&[0; 16]), n.drv.wbuf(RX_BUF, UNTOUCHED)],
            ),
            ("shorter than the header", vec![n.drv.wbuf(11, UNTOUCHED)]),
            (
                "outside memory",
                vec![n.drv.wbuf(12, UNTOUCHED), Seg::w(MEM_SIZE - 100, 2048)],
            ),
        ];
        for (i, (what, segs)) in cases.iter().enumerate() {
            let head = n.drv.submit(RX_QUEUE, segs);
            let used = n.drv.wait_used(RX_QUEUE);
            assert_eq!((used.id, used.len), (u32::from(head), 0), "{what}");
            assert_eq!(n.count(|c| &c.malformed), i as u64 + 1, "{what}");
            for s in segs
                .iter()
                .filter(|s| s.write && s.addr + u64::from(s.len) <= MEM_SIZE)
            {
                assert!(
                    n.drv.seg_bytes(*s).iter().all(|&b| b == UNTOUCHED),
                    "{what}: buffer untouched"
                );
            }
        }
        assert_eq!(n.count(|c| &c.rx_frames), 0);
        n.assert_arp_round_trip();
    });
}

#[test]
fn net_rx_buffers_exhausted_then_reposted() {
    net_test("net_rx_buffers_exhausted_then_reposted", || {
        let mut n = Net::new();
        send_arp_and_wait_for_reply_queued(&mut n);
        // No receive buffers: nothing is delivered.
        assert!(n
            .drv
            .try_wait_used(RX_QUEUE, Duration::from_millis(200))
            .is_none());
        assert_eq!(n.count(|c| &c.rx_frames), 0);
        // Posting buffers (and notifying) delivers the pending reply.
        n.post_rx(1);
        let (used, hdr, frame) = n.recv_arp_reply();
        assert_eq!(used.len as usize, VNET_HDR_LEN + frame.len());
        assert_eq!(&hdr[10..12], &[1, 0]);
        assert_eq!(n.count(|c| &c.rx_frames), 1);
        // Exhaust again with one buffer per frame, twice over.
        for _ in 0..2 {
            send_arp_and_wait_for_reply_queued(&mut n);
            n.post_rx(1);
            n.recv_arp_reply();
        }
    });
}

#[test]
fn net_tx_ring_corruption_sets_needs_reset() {
    net_test("net_tx_ring_corruption_sets_needs_reset", || {
        let mut n = Net::new();
        let cfg = n.drv.msi.fired(0);
        let used = n.drv.used_idx(TX_QUEUE);
        n.drv.set_avail_idx(TX_QUEUE, used.wrapping_add(1000));
        n.drv.kick(TX_QUEUE);
        n.drv
            .wait_status("NEEDS_RESET", |s| s & status::DEVICE_NEEDS_RESET != 0);
        assert!(n.drv.msi.wait_fired(0, cfg, TIMEOUT), "config vector fired");
        // Reset and re-initialise: the device works again.
        n.drv.init_all();
        n.rx.clear();
        n.assert_arp_round_trip();
    });
}

/// Sends `count` UDP datagrams from the host side to the guest, each carrying `tag` and its
/// number. The guest's address has a permanent neighbour entry and the tap has no qdisc, so
/// each datagram goes straight into the tap's queue; a short grace period covers the rest (the
/// tap's counters count frames only once read, so they cannot tell).
fn inject_udp(tag: &str, count: usize) {
    let mac = guest_mac().to_string();
    let guest = GUEST_IP.to_string();
    ip(&[
        "neigh",
        "replace",
        &guest,
        "lladdr",
        &mac,
        "dev",
        TAP,
        "nud",
        "permanent",
    ]);
    let sock = std::net::UdpSocket::bind((HOST_IP, 0)).expect("bind UDP");
    for i in 0..count {
        sock.send_to(format!("{tag}-{i};").as_bytes(), (GUEST_IP, 9999))
            .expect("send UDP");
    }
    std::thread::sleep(Duration::from_millis(50));
}

/// The numbers of the `tag` datagrams among `frames`, in arrival order.
fn udp_numbers(tag: &str, frames: &[Vec<u8>]) -> Vec<usize> {
    let pat = format!("{tag}-");
    frames
        .iter()
        .filter_map(|f| {
            let s = String::from_utf8_lossy(f);
            let at = s.find(&pat)? + pat.len();
            let end = at + s[at..].find(';')?;
            s[at..end].parse().ok()
        })
        .collect()
}

#[test]
fn net_paused_device_leaves_frames_in_the_tap_until_resumed() {
    net_test(
        "net_paused_device_leaves_frames_in_the_tap_until_resumed",
        || {
            const FRAMES: usize = 6;
            let mut n = Net::new();
            n.assert_arp_round_trip();
            n.post_rx(2 * FRAMES);
            let used_before = n.drv.used_idx(RX_QUEUE);
            let rx_before = n.count(|c| &c.rx_frames);
            let t = Instant::now();
            n.drv.dev.pause();
            eprintln!("net pause took {:?}", t.elapsed());
            n.drv.take_dirty();

            inject_udp("paused", FRAMES);
            n.drv.assert_still_while_paused(RX_QUEUE, used_before);
            assert_eq!(
                n.count(|c| &c.rx_frames),
                rx_before,
                "frames received while paused"
            );

            n.drv.dev.resume();
            let mut frames = Vec::new();
            while udp_numbers("paused", &frames).len() < FRAMES {
                let (_, _, frame) = n.recv();
                frames.push(frame);
            }
            // None lost, none duplicated, in order; and nothing more arrives.
            assert_eq!(
                udp_numbers("paused", &frames),
                (0..FRAMES).collect::<Vec<_>>()
            );
            while let Some(used) = n.drv.try_wait_used(RX_QUEUE, Duration::from_millis(200)) {
                let segs = &n.rx[&(used.id as u16)];
                let bytes: Vec<u8> = segs.iter().flat_map(|s| n.drv.seg_bytes(*s)).collect();
                assert!(
                    udp_numbers("paused", &[bytes]).is_empty(),
                    "a frame was delivered twice"
                );
            }
            n.assert_arp_round_trip();
        },
    );
}

#[test]
fn net_stop_while_paused_returns_promptly() {
    net_test("net_stop_while_paused_returns_promptly", || {
        let mut n = Net::new();
        n.post_rx(4);
        n.drv.dev.pause();
        inject_udp("stopped", 2);
        // On another thread, so a worker that stays parked through the stop fails the test
        // instead of hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let t = Instant::now();
            n.drv.reset();
            let _ = tx.send((t.elapsed(), n));
        });
        let (took, mut n) = rx
            .recv_timeout(Duration::from_secs(1))
            .expect("reset while paused did not return");
        eprintln!("net reset while paused took {took:?}");
        assert_eq!(n.count(|c| &c.rx_frames), 0, "frames received while paused");
        // Back to work after the reset.
        n.drv.init_all();
        n.rx.clear();
        n.assert_arp_round_trip();
        n.drv.dev.pause();
        let t = Instant::now();
        drop(n);
        assert!(t.elapsed() < Duration::from_secs(1), "drop while paused");
    });
}

/// Saves the paused device, sends the state through JSON, closes the old device (and its
/// tap), opens the tap again by name as a VMM restoring the VM would, builds a new virtio-net
/// and transport on the same guest memory, restores onto it (`paused` as given) and puts it in
/// place. Returns the saved state.
fn snapshot_and_restore(n: &mut Net, paused: bool) -> VirtioPciState {
    let state = n.drv.save_through_json();

    // The tap is not persistent: it goes away with the old device's descriptor. A stand-in
    // device holds the driver's place meanwhile.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("standin.raw");
    vireo_block::create_raw(&path, 1 << 20).expect("create_raw");
    let opts = vireo_block::OpenOptions {
        format: Some(vireo_block::Format::Raw),
        ..vireo_block::OpenOptions::default()
    };
    let disk = Arc::from(vireo_block::open_disk(&path, &opts).expect("open_disk"));
    let standin = VirtioPciDevice::new(
        Box::new(vireo_devices::virtio::block::VirtioBlock::new(
            disk,
            unique_index(),
        )),
        n.drv.mem.clone(),
        BAR_ADDR,
        MsiRecorder::new(2),
    )
    .expect("stand-in transport");
    drop(std::mem::replace(&mut n.drv.dev, standin));

    let dev = VirtioNet::new(tap_with_address(TAP), guest_mac(), unique_index());
    let counters = dev.counters();
    n.drv.restore_onto(Box::new(dev), 3, &state, paused);
    n.counters = counters;
    state
}

#[test]
fn net_snapshot_restore_keeps_posted_buffers_and_positions() {
    net_test(
        "net_snapshot_restore_keeps_posted_buffers_and_positions",
        || {
            let mut n = Net::new();
            n.post_rx(4);
            n.assert_arp_round_trip();
            let rx_used = n.drv.used_idx(RX_QUEUE);
            let tx_used = n.drv.used_idx(TX_QUEUE);
            assert!(rx_used >= 1 && tx_used == 1);

            let state = snapshot_and_restore(&mut n, true);
            assert_eq!(state.queues[usize::from(RX_QUEUE)].next_used, rx_used);
            assert_eq!(state.queues[usize::from(TX_QUEUE)].next_used, tx_used);
            assert_eq!(
                state.queues[usize::from(RX_QUEUE)].next_avail,
                rx_used,
                "receive chains taken without a frame were given back"
            );

            // Paused: a transmit is not processed.
            let frame = arp_request(guest_mac(), GUEST_IP, HOST_IP);
            let segs = [n.drv.rbuf(&[0; VNET_HDR_LEN]), n.drv.rbuf(&frame)];
            let head = n.drv.submit(TX_QUEUE, &segs);
            let deadline = Instant::now() + Duration::from_millis(200);
            while Instant::now() < deadline {
                assert_eq!(n.drv.used_idx(TX_QUEUE), tx_used, "TX while paused");
                assert_eq!(n.drv.used_idx(RX_QUEUE), rx_used, "RX while paused");
                std::thread::sleep(Duration::from_millis(10));
            }
            assert_eq!(n.count(|c| &c.tx_frames), 0);

            // One resume: the transmit completes once and its reply lands in a buffer posted
            // before the snapshot.
            n.drv.dev.resume();
            assert_eq!(n.drv.wait_used(TX_QUEUE).id, u32::from(head));
            let (used, _, reply) = n.recv_arp_reply();
            assert_eq!(&reply[0..6], &guest_mac().bytes(), "to the guest");
            assert!(used.len as usize > VNET_HDR_LEN);
            assert_eq!(n.drv.used_idx(TX_QUEUE), tx_used.wrapping_add(1));
            assert!(
                n.drv
                    .try_wait_used(TX_QUEUE, Duration::from_millis(200))
                    .is_none(),
                "a transmit completed twice"
            );
            assert_eq!(n.count(|c| &c.tx_frames), 1);
            n.assert_arp_round_trip();
        },
    );
}

#[test]
fn net_restore_refuses_another_mac() {
    net_test("net_restore_refuses_another_mac", || {
        let mut n = Net::new();
        n.drv.dev.pause();
        let mut state = n.drv.dev.save();
        n.drv.dev.resume();
        let VirtioDeviceState::Net(net) = &mut state.device else {
            panic!("a virtio-net state: {:?}", state.device);
        };
        net.mac[5] ^= 1;
        let mut other = Driver::new(Box::new(VirtioNet::new(
            vireo_net::Tap::open("vtap1").expect("tap"),
            guest_mac(),
            unique_index(),
        )));
        let built = other.dev.save();
        let err = other.dev.restore(&state, false).expect_err("MAC differs");
        assert!(
            matches!(err, PersistError::Mismatch { what: "MAC", .. }),
            "{err}"
        );
        assert_eq!(other.dev.save(), built, "left as built");
        // A blk state on a net device.
        let mut blk = state.clone();
        blk.device = VirtioDeviceState::Block(vireo_devices::virtio::persist::BlockState {
            capacity_sectors: 8,
            read_only: false,
            format: None,
        });
        blk.device_type = 2;
        assert!(matches!(
            other.dev.restore(&blk, false),
            Err(PersistError::Mismatch {
                what: "device type",
                ..
            })
        ));
        other.init_all();
        n.assert_arp_round_trip();
    });
}
