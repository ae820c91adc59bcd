//! Fuzzes the live-migration receive path without KVM: the wire framing
//! (`migration::protocol::FrameReader::read_frame`, which checks magic, kind, reserved bits and
//! each kind's size limit before reading a payload, then parses it) and the receiver's protocol
//! checks (`migration::receive::Session::on_frame`: frame order, version negotiation, the
//! config and its memory layout, pages inside guest RAM, the state against the config) — what
//! a broken or hostile migration source reaches on a `vireo receive` target.
//!
//! Input: the byte stream a source sends to a target (Hello, Config, Memory*, State,
//! Complete, as `scripts/fuzz-seeds.sh` records them from real migrations). It is read frame by
//! frame into one `Session`, as `receive` does, until a frame does not parse, the session
//! refuses one, or the input ends; after an error the session is not fed further.
//!
//! Properties: nothing panics; every frame that parses re-encodes (`write_frame`) to bytes
//! that read back as one equal frame and nothing more; the steps come in the protocol's order
//! (Accept, then Build once, then Pages*, State, then Complete once, nothing after it); every
//! `Step::Pages` is whole, page-aligned pages lying inside one memory region of the config
//! the session accepted (`Step::Build`); the state handed over with `Step::Complete` has the
//! config's memory layout and one vCPU record per configured vCPU, in order.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vireo_vmm::migration::protocol::{
    frame_name, write_frame, ConfigFrame, Frame, FrameReader, PAGE,
};
use vireo_vmm::migration::receive::{Session, Step};

/// Where the session is, as seen from the steps it returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Nothing accepted yet.
    Start,
    /// `Step::Accept` returned.
    Accepted,
    /// `Step::Build` returned; pages may come.
    Built,
    /// `Step::State` returned.
    State,
    /// `Step::Complete` returned: the migration is over.
    Complete,
}

/// A step's name, for messages (`Pages` carries up to 4 MiB: not for `{:?}`).
fn step_name(step: &Step) -> &'static str {
    match step {
        Step::Accept(_) => "Accept",
        Step::Build(_) => "Build",
        Step::Pages { .. } => "Pages",
        Step::State => "State",
        Step::Complete { .. } => "Complete",
    }
}

/// Asserts that `frame` re-encodes to bytes that read back as exactly one equal frame.
fn assert_round_trip(frame: &Frame) {
    let mut bytes = Vec::new();
    write_frame(&mut bytes, frame).expect("re-encode a parsed frame");
    let mut input = &bytes[..];
    let mut reader = FrameReader::new(&mut input);
    let again = reader.read_frame().unwrap_or_else(|e| {
        panic!(
            "a parsed {} frame re-encodes to bytes that do not parse: {e}",
            frame_name(frame)
        )
    });
    assert_eq!(&again, frame, "a re-encoded frame parses to another frame");
    assert!(
        input.is_empty(),
        "a re-encoded {} frame leaves {} bytes unread",
        frame_name(frame),
        input.len()
    );
}

/// Asserts that `len` bytes at `gpa` are whole pages inside one region of `config`'s memory.
fn assert_pages_inside(config: &ConfigFrame, gpa: u64, len: u64) {
    assert!(
        len > 0 && len % PAGE == 0 && gpa % PAGE == 0,
        "pages of {len} bytes at {gpa:#x} are not whole pages"
    );
    let end = gpa
        .checked_add(len)
        .unwrap_or_else(|| panic!("pages of {len} bytes at {gpa:#x} wrap around"));
    let inside = config.memory.iter().any(|r| {
        r.guest_addr
            .checked_add(r.len)
            .is_some_and(|r_end| r.guest_addr <= gpa && end <= r_end)
    });
    assert!(
        inside,
        "pages {gpa:#x}..{end:#x} are outside the accepted layout {:?}",
        config.memory
    );
}

fuzz_target!(|data: &[u8]| {
    let mut reader = FrameReader::new(data);
    let mut session = Session::new();
    let mut phase = Phase::Start;
    let mut config: Option<ConfigFrame> = None;
    // The real receiver stops at the first frame that does not parse (or the end of the
    // stream) and at the first refusal: so does this loop.
    while let Ok(frame) = reader.read_frame() {
        assert_round_trip(&frame);
        let Ok(step) = session.on_frame(frame) else {
            break;
        };
        phase = match (phase, step) {
            (Phase::Start, Step::Accept(_)) => Phase::Accepted,
            (Phase::Accepted, Step::Build(c)) => {
                config = Some(*c);
                Phase::Built
            }
            (Phase::Built, Step::Pages { gpa, data }) => {
                let c = config.as_ref().expect("Build came before");
                assert_pages_inside(c, gpa, data.len() as u64);
                Phase::Built
            }
            (Phase::Built, Step::State) => Phase::State,
            (Phase::State, Step::Complete { state, .. }) => {
                let c = config.as_ref().expect("Build came before");
                assert_eq!(
                    state.memory, c.memory,
                    "the state's layout is not the config's"
                );
                assert_eq!(state.vcpus.len(), usize::from(c.config.vcpus));
                for (i, v) in state.vcpus.iter().enumerate() {
                    assert_eq!(usize::from(v.index), i, "vCPU records out of order");
                }
                Phase::Complete
            }
            (phase, step) => panic!("step {} accepted in phase {phase:?}", step_name(&step)),
        };
    }
});
