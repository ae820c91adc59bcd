//! The RFB server against hostile raw TCP clients, a stuck viewer, and a
//! real VNC client (vncdotool's `vncdo`, `pip install vncdotool`), over
//! 127.0.0.1 with a synthetic display and a recording input sink.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vireo_devices::display::{Display, Geometry, InputSink, Key};
use vireo_devices::rfb::{auth, RfbConfig, RfbListener, RfbServer};

const W: u32 = 320;
const H: u32 = 200;
const IO_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Key(Key, bool),
    Pointer(u16, u16, u8),
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Event>>);

impl InputSink for Recorder {
    fn key(&self, key: Key, down: bool) {
        self.0.lock().expect("lock").push(Event::Key(key, down));
    }
    fn pointer(&self, x: u16, y: u16, buttons: u8) {
        self.0
            .lock()
            .expect("lock")
            .push(Event::Pointer(x, y, buttons));
    }
}

impl Recorder {
    fn events(&self) -> Vec<Event> {
        self.0.lock().expect("lock").clone()
    }

    /// Waits until `pred` holds for the events (or panics after a while).
    fn wait_for(&self, what: &str, pred: impl Fn(&[Event]) -> bool) -> Vec<Event> {
        let end = Instant::now() + IO_TIMEOUT;
        loop {
            let ev = self.events();
            if pred(&ev) {
                return ev;
            }
            assert!(Instant::now() < end, "timed out waiting for {what}: {ev:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A frame where every pixel differs from its neighbours (BGRX bytes).
fn pattern(seed: u8) -> Vec<u8> {
    let mut px = Vec::with_capacity((W * H * 4) as usize);
    for y in 0..H {
        for x in 0..W {
            px.extend_from_slice(&[
                x as u8 ^ seed,
                y as u8,
                (x / 256 * 64 + y / 256) as u8 ^ (x as u8).wrapping_mul(3) ^ seed,
                0,
            ]);
        }
    }
    px
}

struct Fixture {
    server: RfbServer,
    addr: SocketAddr,
    display: Arc<Display>,
    input: Arc<Recorder>,
}

fn start(password: Option<&[u8]>, max_clients: usize) -> Fixture {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let display = Arc::new(
        Display::new(Geometry {
            width: W,
            height: H,
        })
        .expect("display"),
    );
    display.load(&pattern(0));
    let input = Arc::new(Recorder::default());
    let server = RfbServer::start(
        RfbListener::Tcp(listener),
        display.clone(),
        input.clone(),
        RfbConfig {
            password: password.map(<[u8]>::to_vec),
            name: "test-vm".into(),
            max_clients,
        },
    )
    .expect("start");
    Fixture {
        server,
        addr,
        display,
        input,
    }
}

struct Viewer {
    s: TcpStream,
}

impl Viewer {
    fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        Viewer { s }
    }

    fn read_n(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0; n];
        self.s.read_exact(&mut b).expect("read");
        b
    }

    fn u32(&mut self) -> u32 {
        let b = self.read_n(4);
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).expect("write");
    }

    /// Version exchange as 3.8; returns the offered security types.
    fn version(&mut self) -> Vec<u8> {
        assert_eq!(self.read_n(12), b"RFB 003.008\n");
        self.send(b"RFB 003.008\n");
        let n = self.read_n(1)[0];
        self.read_n(usize::from(n))
    }

    /// A complete 3.8 handshake (None, or VNC auth with `password`);
    /// returns the ServerInit geometry.
    fn handshake(&mut self, password: Option<&[u8]>) -> (u16, u16) {
        let types = self.version();
        match password {
            None => {
                assert_eq!(types, vec![1]);
                self.send(&[1]);
            }
            Some(pw) => {
                assert_eq!(types, vec![2]);
                self.send(&[2]);
                let c: [u8; 16] = self.read_n(16).try_into().expect("16");
                self.send(&auth::response(pw, &c));
            }
        }
        assert_eq!(self.u32(), 0, "SecurityResult");
        self.send(&[1]);
        let init = self.read_n(24);
        let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]);
        assert_eq!(self.read_n(name_len as usize), b"test-vm");
        assert_eq!(&init[4..8], &[32, 24, 0, 1]);
        (
            u16::from_be_bytes([init[0], init[1]]),
            u16::from_be_bytes([init[2], init[3]]),
        )
    }

    fn set_encodings(&mut self, e: &[i32]) {
        let mut m = vec![2, 0];
        m.extend_from_slice(&(e.len() as u16).to_be_bytes());
        for x in e {
            m.extend_from_slice(&x.to_be_bytes());
        }
        self.send(&m);
    }

    fn request(&mut self, incremental: bool, x: u16, y: u16, w: u16, h: u16) {
        let mut m = vec![3, u8::from(incremental)];
        for v in [x, y, w, h] {
            m.extend_from_slice(&v.to_be_bytes());
        }
        self.send(&m);
    }

    /// Reads one FramebufferUpdate of Raw rects in the server's format into
    /// `fb` (W×H×4); returns the rects (x, y, w, h, encoding).
    fn read_update(&mut self, fb: &mut [u8]) -> Vec<(u16, u16, u16, u16, i32)> {
        let h = self.read_n(4);
        assert_eq!(h[0], 0, "FramebufferUpdate");
        let n = u16::from_be_bytes([h[2], h[3]]);
        let mut rects = Vec::new();
        for _ in 0..n {
            let r = self.read_n(12);
            let v = |i: usize| u16::from_be_bytes([r[i], r[i + 1]]);
            let enc = i32::from_be_bytes([r[8], r[9], r[10], r[11]]);
            let (x, y, w, hh) = (v(0), v(2), v(4), v(6));
            if enc == 0 {
                for row in 0..hh {
                    let line = self.read_n(usize::from(w) * 4);
                    let at = ((u32::from(y + row) * W + u32::from(x)) * 4) as usize;
                    fb[at..at + line.len()].copy_from_slice(&line);
                }
            } else {
                assert!(enc < 0, "only Raw and pseudo-encodings expected, got {enc}");
            }
            rects.push((x, y, w, hh, enc));
        }
        rects
    }

    /// Reads until the server closes (EOF or reset); returns what came.
    fn expect_closed(&mut self) -> Vec<u8> {
        let mut got = Vec::new();
        let mut b = [0u8; 4096];
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&b[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
                Err(e) => panic!("server did not close the connection: {e}"),
            }
        }
    }
}

/// A well-behaved viewer gets the whole screen exactly.
fn check_full_update(f: &Fixture, password: Option<&[u8]>) {
    let mut v = Viewer::connect(f.addr);
    assert_eq!(v.handshake(password), (W as u16, H as u16));
    v.set_encodings(&[0]);
    v.request(false, 0, 0, W as u16, H as u16);
    let mut fb = vec![0u8; (W * H * 4) as usize];
    let rects = v.read_update(&mut fb);
    assert!(!rects.is_empty());
    assert!(
        fb == f.display.pixels(),
        "full update differs from the display"
    );
}

#[test]
fn hostile_clients_then_a_good_one() {
    let f = start(None, 16);

    // Bad version string.
    let mut v = Viewer::connect(f.addr);
    assert_eq!(v.read_n(12), b"RFB 003.008\n");
    v.send(b"HELLO WORLD\n");
    assert_eq!(v.expect_closed(), b"");

    // Bad security type: failed + reason (3.8), closed.
    let mut v = Viewer::connect(f.addr);
    assert_eq!(v.version(), vec![1]);
    v.send(&[2]);
    assert_eq!(v.u32(), 1);
    let len = v.u32();
    assert!(!v.read_n(len as usize).is_empty());
    assert_eq!(v.expect_closed(), b"");

    // Oversized cut text (after a 1 MiB one that is accepted).
    let mut v = Viewer::connect(f.addr);
    v.handshake(None);
    let mut cut = vec![6, 0, 0, 0];
    cut.extend_from_slice(&(1u32 << 20).to_be_bytes());
    v.send(&cut);
    v.send(&vec![b'x'; 1 << 20]);
    v.send(&[4, 1, 0, 0, 0, 0, 0xbe, 0xef]);
    f.input.wait_for("key after cut text", |e| {
        e.contains(&Event::Key(Key::Keysym(0xbeef), true))
    });
    v.send(&[6, 0, 0, 0, 0, 0x10, 0, 1]);
    v.expect_closed();

    // Colour-map pixel format.
    let mut v = Viewer::connect(f.addr);
    v.handshake(None);
    v.send(&[0, 0, 0, 0, 8, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    v.expect_closed();

    // Impossible true-colour pixel format (shift outside the pixel).
    let mut v = Viewer::connect(f.addr);
    v.handshake(None);
    v.send(&[
        0, 0, 0, 0, 16, 16, 0, 1, 0, 31, 0, 63, 0, 31, 40, 5, 0, 0, 0, 0,
    ]);
    v.expect_closed();

    // Update requests outside the screen: an empty update, and the viewer
    // is still served.
    let mut v = Viewer::connect(f.addr);
    v.handshake(None);
    let mut fb = vec![0u8; (W * H * 4) as usize];
    v.request(false, 5000, 5000, 100, 100);
    assert_eq!(v.read_update(&mut fb), vec![]);
    v.request(false, 65535, 65535, 65535, 65535);
    assert_eq!(v.read_update(&mut fb), vec![]);
    v.request(false, W as u16 - 1, H as u16 - 1, 65535, 65535);
    assert_eq!(
        v.read_update(&mut fb),
        vec![(W as u16 - 1, H as u16 - 1, 1, 1, 0)]
    );
    // Pointer events are clipped to the screen.
    v.send(&[5, 4, 0xff, 0xff, 0xff, 0xff]);
    f.input.wait_for("clipped pointer", |e| {
        e.contains(&Event::Pointer(W as u16 - 1, H as u16 - 1, 4))
    });
    drop(v);

    // A flood of 100k update requests (and a few key events) is coalesced:
    // the reader keeps up and the last key arrives.
    let mut v = Viewer::connect(f.addr);
    v.handshake(None);
    let mut flood = Vec::with_capacity(100_000 * 10 + 8);
    for i in 0..100_000u32 {
        flood.extend_from_slice(&[3, u8::from(i % 2 == 0), 0, 0, 0, 0, 1, 64, 0, 200]);
    }
    flood.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xf1, 0x00]);
    let mut w = v.s.try_clone().expect("clone");
    let writer = std::thread::spawn(move || w.write_all(&flood).expect("flood"));
    // Read an update meanwhile (requests are merged, so however many the
    // server read before it answered, at least one update comes).
    assert!(!v.read_update(&mut fb).is_empty());
    writer.join().expect("flood writer");
    f.input.wait_for("key after flood", |e| {
        e.contains(&Event::Key(Key::Keysym(0xf100), true))
    });
    drop(v);

    // Unknown message type.
    let mut v = Viewer::connect(f.addr);
    v.handshake(None);
    v.send(&[42, 0, 0, 0]);
    v.expect_closed();

    // Unknown QEMU message subtype.
    let mut v = Viewer::connect(f.addr);
    v.handshake(None);
    v.send(&[255, 9, 0, 0]);
    v.expect_closed();

    // Too many encodings.
    let mut v = Viewer::connect(f.addr);
    v.handshake(None);
    v.send(&[2, 0, 0xff, 0xff]);
    v.expect_closed();

    // Closed mid-message, mid-handshake, and right after connecting.
    let mut v = Viewer::connect(f.addr);
    v.handshake(None);
    v.send(&[3, 0, 0]);
    v.s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    v.expect_closed();
    let mut v = Viewer::connect(f.addr);
    v.version();
    v.s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    v.expect_closed();
    drop(Viewer::connect(f.addr));

    // After all that: a correct full update, and the count settles.
    check_full_update(&f, None);
    let end = Instant::now() + IO_TIMEOUT;
    while f.server.clients() != 0 {
        assert!(
            Instant::now() < end,
            "clients() stays at {}",
            f.server.clients()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    f.server.stop();
}

#[test]
fn password_wrong_is_refused_slowly_right_is_served() {
    let f = start(Some(b"secret"), 16);
    let mut v = Viewer::connect(f.addr);
    assert_eq!(v.version(), vec![2]);
    v.send(&[2]);
    let c: [u8; 16] = v.read_n(16).try_into().expect("16");
    let t0 = Instant::now();
    v.send(&auth::response(b"wrong", &c));
    // While that connection waits out its delay, others are served.
    check_full_update(&f, Some(b"secret"));
    assert_eq!(v.u32(), 1, "SecurityResult failed");
    assert!(t0.elapsed() >= Duration::from_millis(900));
    let len = v.u32();
    assert!(String::from_utf8_lossy(&v.read_n(len as usize)).contains("authentication"));
    v.expect_closed();

    // A 3.3 viewer: the server picks VNC auth.
    let mut v = Viewer::connect(f.addr);
    assert_eq!(v.read_n(12), b"RFB 003.008\n");
    v.send(b"RFB 003.003\n");
    assert_eq!(v.u32(), 2);
    let c: [u8; 16] = v.read_n(16).try_into().expect("16");
    v.send(&auth::response(b"secret", &c));
    assert_eq!(v.u32(), 0);
    v.send(&[0]);
    assert_eq!(v.read_n(4), [1, 64, 0, 200]);
}

#[test]
fn silent_viewer_is_dropped_after_the_handshake_timeout() {
    let f = start(None, 16);
    let mut v = Viewer::connect(f.addr);
    let t0 = Instant::now();
    assert_eq!(v.read_n(12), b"RFB 003.008\n");
    v.send(b"RFB 003.0");
    assert_eq!(v.expect_closed(), b"");
    assert!(t0.elapsed() >= vireo_devices::rfb::HANDSHAKE_TIMEOUT - Duration::from_secs(1));
    check_full_update(&f, None);
}

#[test]
fn max_clients_refuses_with_a_reason() {
    let f = start(None, 2);
    let mut a = Viewer::connect(f.addr);
    a.handshake(None);
    let mut b = Viewer::connect(f.addr);
    b.handshake(None);
    let mut c = Viewer::connect(f.addr);
    assert_eq!(c.read_n(12), b"RFB 003.008\n");
    c.send(b"RFB 003.008\n");
    assert_eq!(c.read_n(1), [0]);
    let len = c.u32();
    assert!(String::from_utf8_lossy(&c.read_n(len as usize)).contains("too many"));
    c.expect_closed();
    assert_eq!(f.server.clients(), 2);
    drop(a);
    // A slot frees up once the first viewer is gone.
    let end = Instant::now() + IO_TIMEOUT;
    while f.server.clients() != 1 {
        assert!(Instant::now() < end);
        std::thread::sleep(Duration::from_millis(20));
    }
    check_full_update(&f, None);
}

#[test]
fn stuck_viewer_does_not_delay_others() {
    let f = start(None, 16);
    // The stuck viewer asks for many full updates and never reads.
    let mut stuck = Viewer::connect(f.addr);
    stuck.handshake(None);
    stuck.set_encodings(&[0]);
    for _ in 0..200 {
        stuck.request(false, 0, 0, W as u16, H as u16);
    }
    let mut v = Viewer::connect(f.addr);
    v.handshake(None);
    v.set_encodings(&[0, -258, -223]);
    let mut fb = vec![0u8; (W * H * 4) as usize];
    v.request(false, 0, 0, W as u16, H as u16);
    let rects = v.read_update(&mut fb);
    // QEMU's extended key event is announced once, in the first update.
    assert_eq!(rects[0], (0, 0, 0, 0, -258));
    for round in 1..=10u8 {
        for _ in 0..50 {
            stuck.request(false, 0, 0, W as u16, H as u16);
        }
        f.display.load(&pattern(round));
        // Incremental updates bring the viewer to the new frame.
        let end = Instant::now() + IO_TIMEOUT;
        while fb != f.display.pixels() {
            assert!(Instant::now() < end, "round {round}: updates stopped");
            v.request(true, 0, 0, W as u16, H as u16);
            let rects = v.read_update(&mut fb);
            assert!(rects.iter().all(|r| r.4 == 0), "{rects:?}");
        }
    }
    // QEMU extended key events reach the sink as scancodes.
    v.send(&[255, 0, 0, 1, 0, 0, 0, 0x61, 0, 0, 0, 0x1e]);
    v.send(&[255, 0, 0, 0, 0, 0, 0, 0x61, 0, 0, 0, 0]);
    f.input.wait_for("ext key events", |e| {
        e.ends_with(&[
            Event::Key(Key::Scancode(0x1e), true),
            Event::Key(Key::Keysym(0x61), false),
        ])
    });
    // Stopping with the stuck viewer still connected does not hang.
    f.server.stop();
    drop(stuck);
}

#[test]
fn unix_listener_and_partial_incremental() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("vnc.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    let display = Arc::new(
        Display::new(Geometry {
            width: W,
            height: H,
        })
        .expect("display"),
    );
    display.load(&pattern(7));
    let server = RfbServer::start(
        RfbListener::Unix(listener),
        display.clone(),
        Arc::new(Recorder::default()),
        RfbConfig::default(),
    )
    .expect("start");
    let mut s = std::os::unix::net::UnixStream::connect(&path).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let mut b = [0u8; 12];
    s.read_exact(&mut b).expect("version");
    s.write_all(b"RFB 003.007\n\x01\x01").expect("write");
    let mut b = [0u8; 2 + 24 + 5];
    s.read_exact(&mut b).expect("init");
    assert_eq!(&b[..2], &[1, 1]);
    assert_eq!(&b[26..], b"vireo");
    // An incremental request for a corner gets only that corner.
    s.write_all(&[3, 1, 0, 10, 0, 10, 0, 5, 0, 5])
        .expect("request");
    let mut h = [0u8; 16];
    s.read_exact(&mut h).expect("update");
    assert_eq!(&h[..4], &[0, 0, 0, 1]);
    assert_eq!(&h[4..16], &[0, 10, 0, 10, 0, 5, 0, 5, 0, 0, 0, 0]);
    let mut px = vec![0u8; 5 * 5 * 4];
    s.read_exact(&mut px).expect("pixels");
    let all = display.pixels();
    let at = ((10 * W + 10) * 4) as usize;
    assert_eq!(&px[..20], &all[at..at + 20]);
    assert_eq!(server.clients(), 1);
    drop(server);
}

// ---- a real VNC client: vncdotool ----

fn vncdo() -> Command {
    let found = Command::new("vncdo").arg("--help").output();
    assert!(
        matches!(&found, Ok(o) if o.status.success()),
        "vncdo (vncdotool) is needed by this test and is not on PATH: pip install vncdotool"
    );
    Command::new("vncdo")
}

fn run_vncdo(addr: SocketAddr, password: Option<&str>, args: &[&str]) -> std::process::Child {
    let mut c = vncdo();
    c.arg("-s").arg(format!("127.0.0.1::{}", addr.port()));
    if let Some(p) = password {
        c.arg("-p").arg(p);
    }
    c.args(args).spawn().expect("spawn vncdo")
}

fn wait_ok(mut child: std::process::Child, what: &str) {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            assert!(st.success(), "{what}: vncdo failed: {st}");
            return;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("{what}: vncdo did not finish");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The PNG's pixels as BGRX (the display's byte order).
fn png_as_bgrx(path: &std::path::Path) -> Vec<u8> {
    let decoder = png::Decoder::new(std::fs::File::open(path).expect("open png"));
    let mut reader = decoder.read_info().expect("png info");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("png frame");
    assert_eq!((info.width, info.height), (W, H));
    let step = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    buf[..info.buffer_size()]
        .chunks_exact(step)
        .flat_map(|p| [p[2], p[1], p[0], 0])
        .collect()
}

fn captures_match(f: &Fixture, password: Option<&str>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let shots: Vec<_> = (0..2)
        .map(|i| dir.path().join(format!("shot{i}.png")))
        .collect();
    let children: Vec<_> = shots
        .iter()
        .map(|p| run_vncdo(f.addr, password, &["capture", p.to_str().expect("utf-8")]))
        .collect();
    for c in children {
        wait_ok(c, "capture");
    }
    let want = f.display.pixels();
    for p in &shots {
        assert!(
            png_as_bgrx(p) == want,
            "{} differs from the display",
            p.display()
        );
    }
}

#[test]
fn vncdotool_captures_two_at_once() {
    let f = start(None, 16);
    captures_match(&f, None);
}

#[test]
fn vncdotool_captures_with_password() {
    let f = start(Some(b"secret"), 16);
    captures_match(&f, Some("secret"));
    // And a wrong password fails.
    let mut c = vncdo();
    let st = c
        .arg("-s")
        .arg(format!("127.0.0.1::{}", f.addr.port()))
        .arg("-p")
        .arg("nope")
        .args(["capture", "/tmp/vireo-rfb-never-written.png"])
        .output()
        .expect("run vncdo");
    let stderr = String::from_utf8_lossy(&st.stderr);
    assert!(!st.status.success(), "{stderr}");
    assert!(stderr.contains("authentication failed"), "{stderr}");
}

#[test]
fn vncdotool_keys_and_pointer() {
    let f = start(None, 16);
    wait_ok(run_vncdo(f.addr, None, &["key", "a"]), "key a");
    let down_up = |c: char| {
        [
            Event::Key(Key::Keysym(c as u32), true),
            Event::Key(Key::Keysym(c as u32), false),
        ]
    };
    f.input.wait_for("key a", |e| e == down_up('a'));
    wait_ok(run_vncdo(f.addr, None, &["type", "hello"]), "type hello");
    let mut want: Vec<Event> = down_up('a').to_vec();
    for c in "hello".chars() {
        want.extend(down_up(c));
    }
    f.input.wait_for("type hello", |e| e == want.as_slice());
    wait_ok(
        run_vncdo(f.addr, None, &["move", "10", "20", "click", "1"]),
        "move click",
    );
    let ev = f.input.wait_for("click", |e| {
        e.len() > want.len() && e.ends_with(&[Event::Pointer(10, 20, 0)])
    });
    let pointer: Vec<_> = ev[want.len()..].to_vec();
    assert!(pointer.contains(&Event::Pointer(10, 20, 1)), "{pointer:?}");
    assert!(pointer
        .iter()
        .all(|p| matches!(p, Event::Pointer(10, 20, _))));
}

/// ZRLE through a real decoder: vncdotool's client class set to ask for
/// ZRLE only, capturing the screen in a pixel format of its choice.
#[test]
fn vncdotool_zrle_capture() {
    vncdo();
    let f = start(None, 16);
    let dir = tempfile::tempdir().expect("tempdir");
    let shot = dir.path().join("zrle.png");
    let script = format!(
        "from vncdotool import api, rfb, client\n\
         client.VNCDoToolClient.encoding = rfb.Encoding.ZRLE\n\
         n = [0]\n\
         orig = rfb.RFBClient._handleDecodeZRLE\n\
         def counted(self, *a, **k):\n    n[0] += 1\n    return orig(self, *a, **k)\n\
         rfb.RFBClient._handleDecodeZRLE = counted\n\
         c = api.connect('127.0.0.1::{}')\n\
         c.captureScreen('{}')\n\
         c.disconnect()\n\
         api.shutdown()\n\
         assert n[0] > 0, 'no ZRLE rectangle decoded'\n",
        f.addr.port(),
        shot.display()
    );
    let st = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .status()
        .expect("python3");
    assert!(st.success(), "vncdotool ZRLE capture failed");
    assert!(
        png_as_bgrx(&shot) == f.display.pixels(),
        "ZRLE capture differs"
    );
}

#[test]
fn rgb565_big_endian_pixels_are_translated() {
    let f = start(None, 16);
    let mut v = Viewer::connect(f.addr);
    v.handshake(None);
    // 16 bpp, depth 16, big-endian, true colour, 31/63/31 at 11/5/0.
    v.send(&[
        0, 0, 0, 0, 16, 16, 1, 1, 0, 31, 0, 63, 0, 31, 11, 5, 0, 0, 0, 0,
    ]);
    v.set_encodings(&[0]);
    v.request(false, 3, 4, 2, 1);
    let h = v.read_n(16);
    assert_eq!(&h[..4], &[0, 0, 0, 1]);
    assert_eq!(&h[4..16], &[0, 3, 0, 4, 0, 2, 0, 1, 0, 0, 0, 0]);
    let got = v.read_n(4);
    let all = f.display.pixels();
    for (i, x) in [3u32, 4].into_iter().enumerate() {
        let at = ((4 * W + x) * 4) as usize;
        let (b, g, r) = (
            u32::from(all[at]),
            u32::from(all[at + 1]),
            u32::from(all[at + 2]),
        );
        let want = ((r * 31 / 255) << 11) | ((g * 63 / 255) << 5) | (b * 31 / 255);
        assert_eq!(
            u16::from_be_bytes([got[2 * i], got[2 * i + 1]]),
            want as u16,
            "pixel {x}"
        );
    }
}
