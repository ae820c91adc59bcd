//! The VNC console with the test guest under real KVM and a real VNC client (vncdotool,
//! `pip install vncdotool`): what the guest draws in its framebuffer reaches several viewers
//! pixel-exact, also while a viewer that never reads is connected; and the screen survives a
//! snapshot and restore.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{build_vm, guest_config, PATIENCE};
use vireo_spec::VncConfig;
use vireo_testguest::fb_colors::pattern;

const W: u32 = 320;
const H: u32 = 200;

/// A config running the test guest with `cmdline` and a VNC console on a free loopback port.
fn vnc_config(dir: &Path, cmdline: &str) -> vireo_vmm::VmConfig {
    let mut config = guest_config(dir, cmdline, 64);
    let mut vnc = VncConfig::new("127.0.0.1:0".parse().expect("address"));
    (vnc.width, vnc.height) = (W, H);
    config.vnc = Some(vnc);
    config
}

/// Runs `vncdo -s HOST::PORT ARGS…` (vncdotool's spelling of a port number).
fn vncdo(address: &str, args: &[&str]) -> Output {
    let (host, port) = address.rsplit_once(':').expect("HOST:PORT");
    Command::new("vncdo")
        .arg("-s")
        .arg(format!("{host}::{port}"))
        .args(args)
        .output()
        .expect("run vncdo: install vncdotool (pip install vncdotool); .ci/run does")
}

/// Decodes a PNG that vncdo captured into 0x00rrggbb pixels.
fn read_png(path: &Path) -> (u32, u32, Vec<u32>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(path).expect("open capture"),
    ));
    let mut reader = decoder.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("png frame");
    let channels = info.color_type.samples();
    assert!(channels >= 3, "colour capture, got {:?}", info.color_type);
    let pixels = buf[..info.buffer_size()]
        .chunks(channels)
        .map(|p| (u32::from(p[0]) << 16) | (u32::from(p[1]) << 8) | u32::from(p[2]))
        .collect();
    (info.width, info.height, pixels)
}

/// Waits until the console's shadow holds what the guest drew (the refresher runs every 33 ms).
fn wait_for_screen(vm: &vireo_vmm::Vm, want: impl Fn(u32, u32) -> u32) {
    let display = vm.vnc().expect("VNC console").display().clone();
    let start = Instant::now();
    loop {
        let px = display.pixels();
        let matches = (0..H).all(|y| {
            (0..W).all(|x| {
                let i = ((y * W + x) * 4) as usize;
                u32::from_le_bytes([px[i], px[i + 1], px[i + 2], 0]) == want(x, y)
            })
        });
        if matches {
            return;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "the screen never showed the picture"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn assert_capture(path: &Path, want: impl Fn(u32, u32) -> u32) {
    let (w, h, pixels) = read_png(path);
    assert_eq!((w, h), (W, H), "capture size");
    let mut wrong = 0;
    for y in 0..H {
        for x in 0..W {
            if pixels[(y * W + x) as usize] != want(x, y) {
                wrong += 1;
            }
        }
    }
    assert_eq!(
        wrong,
        0,
        "{} pixels of {} differ in {}",
        wrong,
        W * H,
        path.display()
    );
}

/// Two captures at once, while a third viewer that never reads what it asked for is connected.
fn capture_twice(address: &str, dir: &Path, want: &(impl Fn(u32, u32) -> u32 + Sync)) {
    std::thread::scope(|s| {
        let shots: Vec<_> = (0..2)
            .map(|i| {
                let path = dir.join(format!("viewer{i}.png"));
                s.spawn(move || {
                    let out = vncdo(address, &["capture", path.to_str().expect("utf-8")]);
                    assert!(
                        out.status.success(),
                        "vncdo capture: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    path
                })
            })
            .collect();
        for shot in shots {
            let path = shot.join().expect("viewer thread");
            assert_capture(&path, want);
        }
    });
}

/// A viewer that shakes hands (RFB 3.8, no security), asks for full updates again and again
/// and never reads one: its socket buffers fill and the server's writer for it blocks.
fn stuck_viewer(address: &str) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(address).expect("connect");
    s.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut version = [0u8; 12];
    s.read_exact(&mut version).expect("server version");
    s.write_all(b"RFB 003.008\n").expect("version");
    let mut n = [0u8; 1];
    s.read_exact(&mut n).expect("security type count");
    let mut types = vec![0u8; usize::from(n[0])];
    s.read_exact(&mut types).expect("security types");
    assert!(types.contains(&1), "security None offered");
    s.write_all(&[1]).expect("choose None");
    let mut result = [0u8; 4];
    s.read_exact(&mut result).expect("security result");
    assert_eq!(result, [0; 4]);
    s.write_all(&[1]).expect("shared ClientInit");
    let mut init = [0u8; 24];
    s.read_exact(&mut init).expect("ServerInit");
    let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]);
    let mut name = vec![0u8; name_len as usize];
    s.read_exact(&mut name).expect("name");
    // Many non-incremental full-screen requests: far more than its buffers hold.
    let mut req = Vec::new();
    for _ in 0..64 {
        req.extend_from_slice(&[3, 0, 0, 0, 0, 0]);
        req.extend_from_slice(&(W as u16).to_be_bytes());
        req.extend_from_slice(&(H as u16).to_be_bytes());
    }
    s.write_all(&req).expect("update requests");
    s
}

#[test]
fn two_viewers_capture_the_guest_pattern_pixel_exact_beside_a_stuck_viewer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (vm, out) = build_vm(vnc_config(dir.path(), &format!("fb-pattern {W} {H} 7")));
    vm.start().expect("start");
    out.wait_for("fb drawn", PATIENCE);
    let address = vm.vnc_address().expect("VNC address");
    let want = |x, y| pattern(x, y, 7);
    wait_for_screen(&vm, want);
    let _stuck = stuck_viewer(&address);
    // Let the server fill the stuck viewer's buffers first.
    std::thread::sleep(Duration::from_millis(500));
    capture_twice(&address, dir.path(), &want);
    vm.shutdown();
}

#[test]
fn the_screen_survives_snapshot_and_restore() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (vm, out) = build_vm(vnc_config(dir.path(), &format!("fb-pattern {W} {H} 3")));
    vm.start().expect("start");
    out.wait_for("fb drawn", PATIENCE);
    let want = |x, y| pattern(x, y, 3);
    wait_for_screen(&vm, want);
    let snap = dir.path().join("snap");
    vm.pause().expect("pause");
    vm.snapshot(&snap).expect("snapshot");
    vm.shutdown();
    drop(vm);
    // A restore onto another address (a unix socket) first, then one on the saved address
    // (loopback, a free port) for the viewers.
    let sock = dir.path().join("vnc.sock");
    let opts = vireo_vmm::snapshot::RestoreOptions {
        serial_writer: Some(Box::new(common::Capture::default())),
        vnc: Some(format!("unix:{}", sock.display()).parse().expect("address")),
        ..Default::default()
    };
    let on_unix = vireo_vmm::snapshot::restore(&snap, opts).expect("restore");
    assert_eq!(
        on_unix.vnc_address(),
        Some(format!("unix:{}", sock.display()))
    );
    assert!(std::os::unix::fs::FileTypeExt::is_socket(
        &std::fs::metadata(&sock).expect("socket").file_type()
    ));
    wait_for_screen(&on_unix, want);
    drop(on_unix);
    let opts = vireo_vmm::snapshot::RestoreOptions {
        serial_writer: Some(Box::new(common::Capture::default())),
        ..Default::default()
    };
    let restored = vireo_vmm::snapshot::restore(&snap, opts).expect("restore");
    // The restored screen is there before the guest runs again.
    wait_for_screen(&restored, want);
    let address = restored.vnc_address().expect("VNC address");
    capture_twice(&address, dir.path(), &want);
    restored.shutdown();
}

/// The lines of the guest's output that start with `prefix`.
fn lines_with(text: &str, prefix: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

#[test]
fn keys_typed_in_a_viewer_reach_the_guest_as_set1_scancodes() {
    let dir = tempfile::tempdir().expect("tempdir");
    // `A` and `!` need Shift, which vncdotool does not send: the VMM presses it around them.
    let want = [
        0x2a, 0x1e, 0xaa, 0x9e, // A: Shift make, a make, Shift break, a break
        0x2a, 0x02, 0xaa, 0x82, // !
        0x1c, 0x9c, // Return
        0xe0, 0x48, 0xe0, 0xc8, // Up (0xe0-prefixed)
    ];
    let (vm, out) = build_vm(vnc_config(dir.path(), &format!("kbd {}", want.len())));
    vm.start().expect("start");
    out.wait_for("kbd ready", PATIENCE);
    let address = vm.vnc_address().expect("VNC address");
    let typed = vncdo(&address, &["type", "A!", "key", "enter", "key", "up"]);
    assert!(
        typed.status.success(),
        "vncdo: {}",
        String::from_utf8_lossy(&typed.stderr)
    );
    assert_eq!(
        vm.wait(),
        vireo_vmm::ExitReason::DebugExit { status: 0 },
        "{}",
        out.text()
    );
    let got: Vec<String> = lines_with(&out.text(), "kbd scancode=");
    let want: Vec<String> = want
        .iter()
        .map(|b| format!("kbd scancode=0x{b:02x}"))
        .collect();
    assert_eq!(got, want, "{}", out.text());
}

#[test]
fn pointer_moves_and_clicks_in_a_viewer_reach_the_guest_as_tablet_events() {
    use vireo_devices::virtio::input::to_abs;
    let dir = tempfile::tempdir().expect("tempdir");
    let (vm, out) = build_vm(vnc_config(dir.path(), "input-events 11"));
    vm.start().expect("start");
    out.wait_for("input ready", PATIENCE);
    let address = vm.vnc_address().expect("VNC address");
    let moved = vncdo(&address, &["move", "100", "50", "click", "1"]);
    assert!(
        moved.status.success(),
        "vncdo: {}",
        String::from_utf8_lossy(&moved.stderr)
    );
    assert_eq!(
        vm.wait(),
        vireo_vmm::ExitReason::DebugExit { status: 0 },
        "{}",
        out.text()
    );
    let (x, y) = (to_abs(100, W as u16), to_abs(50, H as u16));
    let abs = [
        format!("input type=3 code=0 value={x}"),
        format!("input type=3 code=1 value={y}"),
    ];
    let syn = "input type=0 code=0 value=0".to_owned();
    let mut want = Vec::new();
    want.extend(abs.clone());
    want.push(syn.clone());
    want.extend(abs.clone());
    want.push("input type=1 code=272 value=1".into()); // BTN_LEFT down
    want.push(syn.clone());
    want.extend(abs);
    want.push("input type=1 code=272 value=0".into());
    want.push(syn);
    assert_eq!(
        lines_with(&out.text(), "input type="),
        want,
        "{}",
        out.text()
    );
}

#[test]
fn the_screen_moves_with_a_live_migration() {
    use vireo_vmm::migration::{self, transport, ReceiveOptions, SendMigrationConfig};
    let dir = tempfile::tempdir().expect("tempdir");
    let (vm, out) = build_vm(vnc_config(dir.path(), &format!("fb-pattern {W} {H} 11")));
    vm.start().expect("start");
    out.wait_for("fb drawn", PATIENCE);
    let want = |x, y| pattern(x, y, 11);
    wait_for_screen(&vm, want);
    let url = format!("unix:{}", dir.path().join("mig.sock").display());
    let listener = transport::listen(&url.parse().expect("url"), None).expect("listen");
    let target = std::thread::spawn(move || {
        let conn = listener.accept()?;
        let mut opts = ReceiveOptions::default();
        opts.host.serial_writer = Some(Box::new(common::Capture::default()));
        migration::receive(conn, opts)
    });
    vm.migrate(&SendMigrationConfig::to(&url)).expect("migrate");
    assert_eq!(vm.wait(), vireo_vmm::ExitReason::Migrated);
    let moved = target.join().expect("target thread").expect("received");
    // The target serves the same screen on its own (new) port.
    wait_for_screen(&moved, want);
    let address = moved.vnc_address().expect("VNC address");
    capture_twice(&address, dir.path(), &want);
    moved.shutdown();
}
