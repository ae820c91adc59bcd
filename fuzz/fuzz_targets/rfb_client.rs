//! Fuzzes the RFB (VNC) server's protocol code, `vireo_devices::rfb::protocol`: the handshake
//! state machine (`Handshake`) and the client message parser (`ClientMessage::parse`), fed a
//! viewer's byte stream the way the server's reader thread feeds them, without sockets or threads.
//!
//! Input: byte 0 picks the setup — bit 0: VNC authentication with password `fuzz` and a fixed
//! challenge of sixteen `0x5a` bytes (else security type None); bits 1..=7: the size of the
//! pieces the stream arrives in (1 + value), so partial reads are exercised. The rest is what
//! the viewer sends: ProtocolVersion, security type, auth response, ClientInit, then messages.
//!
//! Properties: nothing panics; a step consumes only what it was given and never zero bytes;
//! after an error the handshake consumes nothing more; VNC authentication succeeds only with
//! the DES response to the challenge; a parsed message needs exactly the bytes it took (each
//! shorter prefix asks for more), never more than `MAX_MESSAGE_LEN`; "need more bytes" is only
//! said with less than `MAX_MESSAGE_LEN` buffered; cut text is within `MAX_CUT_TEXT`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vireo_devices::rfb::auth;
use vireo_devices::rfb::protocol::{
    ClientMessage, Handshake, Security, ServerInit, MAX_CUT_TEXT, MAX_MESSAGE_LEN,
};

const PASSWORD: &[u8] = b"fuzz";
const CHALLENGE: [u8; 16] = [0x5a; 16];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let vnc_auth = mode & 1 == 1;
    let piece = 1 + usize::from(mode >> 1);
    let security = if vnc_auth {
        Security::VncAuth {
            password: PASSWORD.to_vec(),
            challenge: CHALLENGE,
        }
    } else {
        Security::None
    };
    let init = ServerInit {
        width: 1024,
        height: 768,
        name: "fuzz".into(),
    };
    let mut hs = Handshake::new(security, init);

    // The handshake, fed in pieces as reads would deliver them.
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let mut fed = 0;
    let mut pos = 0;
    let mut auth_answer: Option<Vec<u8>> = None;
    while !hs.is_done() {
        match hs.step(&buf[pos..], &mut out) {
            Ok(Some(n)) => {
                assert!(
                    n > 0 && pos + n <= buf.len(),
                    "step took {n} of {}",
                    buf.len() - pos
                );
                if vnc_auth && n == 16 {
                    auth_answer = Some(buf[pos..pos + n].to_vec());
                }
                pos += n;
            }
            Ok(None) => {
                if fed == stream.len() {
                    return;
                }
                let end = (fed + piece).min(stream.len());
                buf.extend_from_slice(&stream[fed..end]);
                fed = end;
            }
            Err(_) => {
                assert!(!hs.is_done());
                assert_eq!(hs.step(stream, &mut out), Ok(None));
                return;
            }
        }
    }
    if vnc_auth {
        let answer = auth_answer.expect("VNC auth done without a response");
        assert_eq!(answer, auth::response(PASSWORD, &CHALLENGE));
    }

    // The messages: what the handshake left, then the rest of the stream.
    let mut rest = buf[pos..].to_vec();
    rest.extend_from_slice(&stream[fed..]);
    let mut at = 0;
    while at < rest.len() {
        match ClientMessage::parse(&rest[at..]) {
            Ok(Some((msg, n))) => {
                assert!(n > 0 && n <= MAX_MESSAGE_LEN && at + n <= rest.len());
                assert_eq!(
                    ClientMessage::parse(&rest[at..at + n]),
                    Ok(Some((msg.clone(), n)))
                );
                assert_eq!(ClientMessage::parse(&rest[at..at + n - 1]), Ok(None));
                at += n;
                if let ClientMessage::ClientCutText { len } = msg {
                    assert!(len <= MAX_CUT_TEXT);
                    at = at.saturating_add(len as usize).min(rest.len());
                }
            }
            Ok(None) => {
                assert!(rest.len() - at < MAX_MESSAGE_LEN);
                break;
            }
            Err(_) => break,
        }
    }
});
