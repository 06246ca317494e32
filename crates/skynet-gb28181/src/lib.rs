//! GB/T 28181 upper platform, sans-I/O (parsing and state machines without sockets, so
//! each part is testable and fuzzable alone):
//! - [`sip`]: SIP messages, parsed with hard limits and built;
//! - [`digest`] and [`registrar`]: REGISTER with digest authentication, expiry, keepalives;
//! - [`manscdp`]: the MANSCDP XML bodies (GB2312/GBK/UTF-8), catalogs assembled by SN;
//! - [`invite`]: the INVITE with the GB SDP, its answer, ACK and BYE;
//! - [`rtp`]: RTP, reordering, SSRC checks, RFC 4571 framing and MPEG-PS reassembly.
//! - [`server`]: the SIP endpoint: a sans-I/O `Core` driving all of the above, and a tokio
//!   UDP+TCP `Server` moving its bytes.

pub mod digest;
pub mod invite;
pub mod manscdp;
pub mod registrar;
pub mod rtp;
pub mod server;
pub mod sip;
