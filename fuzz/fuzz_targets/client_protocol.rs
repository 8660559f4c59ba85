//! The client protocol, as a server reads a request and a client reads a response.
//!
//! Checks, for any frame body: `raft_server::proto::decode` as a `Request` and as a
//! `Response` never panics, and whatever decodes goes through `proto::encode` (length
//! prefix, version byte, postcard) to a frame whose prefix is its body's length and
//! whose body decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raft_server::proto::{self, Request, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(body: &[u8]) {
    let Ok(value) = proto::decode::<T>(body) else {
        return;
    };
    let frame = proto::encode(&value).expect("a decoded message encodes");
    let (prefix, again) = frame.split_first_chunk::<4>().expect("a length prefix");
    assert_eq!(
        u32::from_le_bytes(*prefix) as usize,
        again.len(),
        "length prefix"
    );
    let back = proto::decode::<T>(again).expect("an encoded message decodes");
    assert_eq!(back, value, "round trip changed the message");
}

fuzz_target!(|data: &[u8]| {
    round_trip::<Request>(data);
    round_trip::<Response>(data);
});
