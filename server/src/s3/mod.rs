//! The S3 API (issue 16), being built: so far the request authentication it needs, AWS
//! Signature Version 4 ([`sigv4`]), and the `aws-chunked` bodies and checksums current SDKs
//! send ([`chunked`]), pure and tested against AWS's documented examples. The listener, the
//! namespace and the operations come next (see the notes).

pub mod chunked;
pub mod sigv4;
