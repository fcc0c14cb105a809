//! HTTP/2 sizes of every internal link, the same at both ends: a server
//! takes them in `kiln-service`, a client in `endpoint.rs`.

/// Flow-control window of each call, in the direction it receives. Room
/// for a few 1 MiB asset messages: with hyper's defaults (1 MiB at a
/// server, 2 MiB at a client) the sender of a large transfer waits after
/// each message until the receiver has decoded it, so the two never work
/// at once.
pub const STREAM_WINDOW_BYTES: u32 = 4 * 1024 * 1024;
/// ...and of each connection, shared by its calls.
pub const CONNECTION_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
/// Largest frame each end accepts. HTTP/2's default, 16 KiB, cut an asset
/// transfer's 1 MiB messages into 64 frames, each a wake-up of the
/// receiving connection and call and a few syscalls; with frames this
/// large a message is one frame. A frame holds its connection while it is
/// written, about a millisecond at 10 Gbit/s, which calls sharing the
/// connection wait for.
pub const MAX_FRAME_BYTES: u32 = 1024 * 1024 + 64 * 1024;
