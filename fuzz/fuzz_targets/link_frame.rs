//! Fuzz target: the link frame decoder (`tether_proto::link::LinkFrame::decode`), which the
//! agent runs on every frame from the hub. It must never panic; what it accepts must encode
//! to a frame it accepts again; every error must say something.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_proto::link::{LinkDecodeError, LinkFrame, MAX_LINK_FRAME_BYTES};

fuzz_target!(|data: &[u8]| {
    // Frames arrive as WebSocket text, i.e. UTF-8; non-UTF-8 input is mapped the way a
    // lossy reader would see it, so every input exercises the decoder.
    let text = String::from_utf8_lossy(data);
    match LinkFrame::decode(&text) {
        Ok(frame) => {
            let again = LinkFrame::decode(&frame.encode())
                .unwrap_or_else(|e| panic!("re-encoded frame does not decode: {e}"));
            assert_eq!(again.message.kind(), frame.message.kind());
            assert_eq!(again.id, frame.id);
            assert_eq!(again.ref_id, frame.ref_id);
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            if text.len() > MAX_LINK_FRAME_BYTES {
                assert!(matches!(e, LinkDecodeError::TooLarge { .. }));
            }
        }
    }
});
