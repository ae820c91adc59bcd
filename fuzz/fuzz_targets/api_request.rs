//! Fuzzes the control API's request decoder, `vireo_vmm::api::http::decode`: httparse framing
//! with the API's limits plus the router, i.e. everything a client's bytes reach before a
//! handler runs.
//!
//! Input: the bytes a client sent on one connection. Properties: decoding never panics; it
//! gives a request (a typed body for `vm.snapshot` / `vm.restore`), "need more bytes" (only below the limits), or an error
//! whose reason is one line and whose answer is well-formed HTTP; a decoded request decodes
//! the same with any bytes appended (one request per connection).

#![no_main]

use libfuzzer_sys::fuzz_target;
use vireo_vmm::api::http::{decode, Response, MAX_BODY_BYTES, MAX_HEAD_BYTES};

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok(Some(request)) => {
            let mut longer = data.to_vec();
            longer.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            assert_eq!(decode(&longer), Ok(Some(request)));
        }
        Ok(None) => assert!(data.len() <= MAX_HEAD_BYTES + MAX_BODY_BYTES),
        Err(e) => {
            assert!(!e.reason.contains(['\n', '\r']), "{e:?}");
            let answer = Response::error(&e).to_bytes();
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let mut parsed = httparse::Response::new(&mut headers);
            assert!(matches!(
                parsed.parse(&answer),
                Ok(httparse::Status::Complete(_))
            ));
            assert_eq!(parsed.code, Some(e.status.code()));
        }
    }
});
