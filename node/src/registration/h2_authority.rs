//! A byte-level HTTP/2 shim that makes kubelet's registration calls acceptable to h2.
//!
//! kubelet's plugin manager dials the registration socket with
//! `grpc.DialContext(ctx, "/var/lib/kubelet/plugins_registry/<x>-reg.sock", ...)` and a
//! unix dialer, so grpc-go sends that PATH as the HTTP/2 `:authority`. h2 (under
//! tonic) parses `:authority` as a URI authority, fails on the path, and resets the
//! stream with PROTOCOL_ERROR, so GetInfo never reaches our service
//! (kubernetes/kubernetes#108254, hyperium/h2#487). h2 has no switch for this.
//!
//! The shim sits between the socket and the in-process tonic server. The
//! server→client bytes pass untouched. In the client→server direction it reads
//! frames; header blocks (HEADERS + CONTINUATION) are HPACK-decoded with one decoder
//! per connection (the client's encoder keeps a dynamic table across requests), a
//! `:authority` that is not a valid authority becomes `localhost`, and the block is
//! re-encoded with one encoder per connection (h2's decoder keeps the matching table)
//! into one HEADERS frame, split into CONTINUATIONs past the default frame size. All
//! other frames pass byte for byte. [`Rewriter`] is the pure logic; [`pipe`] the I/O.

use loona_hpack::{Decoder, Encoder};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The client connection preface, passed through as it is (h2 checks it).
pub const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// SETTINGS_MAX_FRAME_SIZE's initial value: h2 (tonic) does not raise it, so frames we
/// emit stay within it whatever the client's SETTINGS say.
pub const MAX_EMITTED_PAYLOAD: usize = 16_384;
/// A header block (all fragments of one HEADERS + CONTINUATIONs) larger than this
/// closes the connection: kubelet's are a few hundred bytes.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// The decoded header list (RFC 7540 6.5.2 size: name + value + 32 each) larger than
/// this closes the connection, as small blocks can expand through the dynamic table.
pub const MAX_DECODED_LIST: usize = 256 * 1024;
/// SETTINGS_HEADER_TABLE_SIZE's initial value: h2 does not change it, so the client's
/// encoder may not use a larger dynamic table, and neither does our encoder.
const HEADER_TABLE_SIZE: usize = 4096;
/// What a `:authority` that h2 would reject is replaced with.
pub const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ShimError {
    #[error("a header block of more than {MAX_HEADER_BLOCK} bytes")]
    HeaderBlockTooLarge,
    #[error("a decoded header list of more than {MAX_DECODED_LIST} bytes")]
    HeaderListTooLarge,
    #[error("HPACK decoding failed: {0}")]
    Hpack(String),
    #[error(
        "frame type {frame_type:#x} on stream {stream} inside the header block of stream {open}"
    )]
    InterleavedFrame {
        frame_type: u8,
        stream: u32,
        open: u32,
    },
    #[error("HEADERS frame of stream {0} with bad padding or priority fields")]
    MalformedHeaders(u32),
}

/// A header block being collected until END_HEADERS.
#[derive(Debug)]
struct OpenBlock {
    stream: u32,
    end_stream: bool,
    fragment: Vec<u8>,
}

enum State {
    /// Bytes of the client preface still to pass.
    Preface(usize),
    /// Between frames: collecting the next 9-byte frame header.
    Header,
    /// Inside a frame that passes through: bytes of its payload still to copy.
    Passing(usize),
    /// Inside a HEADERS/CONTINUATION frame: collecting its payload.
    Collecting {
        frame_type: u8,
        flags: u8,
        stream: u32,
        remaining: usize,
    },
}

/// The client→server rewriting of one connection. Feed it bytes as they arrive; it
/// appends what to send on to the server.
pub struct Rewriter {
    state: State,
    /// Bytes of the current frame header, or of the current header frame's payload.
    pending: Vec<u8>,
    open: Option<OpenBlock>,
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
    /// How many `:authority` values were replaced (for logs and tests).
    pub replaced: u64,
}

impl std::fmt::Debug for Rewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewriter")
            .field("replaced", &self.replaced)
            .finish_non_exhaustive()
    }
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Rewriter {
    pub fn new() -> Self {
        let mut decoder = Decoder::new();
        // A size update above what the server allows is a COMPRESSION_ERROR.
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        let mut encoder = Encoder::new();
        encoder.set_max_table_size(HEADER_TABLE_SIZE);
        Self {
            state: State::Preface(PREFACE_LEN),
            pending: Vec::new(),
            open: None,
            decoder,
            encoder,
            replaced: 0,
        }
    }

    /// Consumes `input` (any split of the stream), appending the bytes for the server
    /// to `out`. An error means the connection must be closed.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), ShimError> {
        while !input.is_empty() {
            match self.state {
                State::Preface(left) => {
                    let n = left.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = if n == left {
                        State::Header
                    } else {
                        State::Preface(left - n)
                    };
                }
                State::Passing(left) => {
                    let n = left.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = if n == left {
                        State::Header
                    } else {
                        State::Passing(left - n)
                    };
                }
                State::Header => {
                    let n = (FRAME_HEADER_LEN - self.pending.len()).min(input.len());
                    self.pending.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if self.pending.len() == FRAME_HEADER_LEN {
                        let header: [u8; FRAME_HEADER_LEN] = std::mem::take(&mut self.pending)
                            .try_into()
                            .unwrap_or([0; 9]);
                        self.start_frame(header, out)?;
                    }
                }
                State::Collecting {
                    frame_type,
                    flags,
                    stream,
                    remaining,
                } => {
                    let n = remaining.min(input.len());
                    self.pending.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if n == remaining {
                        let payload = std::mem::take(&mut self.pending);
                        self.state = State::Header;
                        self.header_frame(frame_type, flags, stream, &payload, out)?;
                    } else {
                        self.state = State::Collecting {
                            frame_type,
                            flags,
                            stream,
                            remaining: remaining - n,
                        };
                    }
                }
            }
        }
        Ok(())
    }

    fn start_frame(
        &mut self,
        header: [u8; FRAME_HEADER_LEN],
        out: &mut Vec<u8>,
    ) -> Result<(), ShimError> {
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let frame_type = header[3];
        let flags = header[4];
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        let is_header_frame =
            frame_type == TYPE_HEADERS || (frame_type == TYPE_CONTINUATION && self.open.is_some());
        if let Some(open) = &self.open
            && (frame_type != TYPE_CONTINUATION || stream != open.stream)
        {
            // RFC 7540 6.10: nothing may come between a block's frames. h2 would fail
            // the connection too; a block we hold back must not be half-sent.
            return Err(ShimError::InterleavedFrame {
                frame_type,
                stream,
                open: open.stream,
            });
        }
        if !is_header_frame {
            // Anything else (a stray CONTINUATION included) is h2's to judge.
            out.extend_from_slice(&header);
            self.state = if len == 0 {
                State::Header
            } else {
                State::Passing(len)
            };
            return Ok(());
        }
        let held = self.open.as_ref().map_or(0, |b| b.fragment.len());
        if held + len > MAX_HEADER_BLOCK {
            return Err(ShimError::HeaderBlockTooLarge);
        }
        if len == 0 {
            return self.header_frame(frame_type, flags, stream, &[], out);
        }
        self.pending.reserve(len);
        self.state = State::Collecting {
            frame_type,
            flags,
            stream,
            remaining: len,
        };
        Ok(())
    }

    fn header_frame(
        &mut self,
        frame_type: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ShimError> {
        let fragment = if frame_type == TYPE_HEADERS {
            let fragment =
                strip_headers_payload(flags, payload).ok_or(ShimError::MalformedHeaders(stream))?;
            self.open = Some(OpenBlock {
                stream,
                end_stream: flags & FLAG_END_STREAM != 0,
                fragment: Vec::new(),
            });
            fragment
        } else {
            payload
        };
        let Some(open) = self.open.as_mut() else {
            return Ok(());
        };
        open.fragment.extend_from_slice(fragment);
        if flags & FLAG_END_HEADERS == 0 {
            return Ok(());
        }
        let Some(block) = self.open.take() else {
            return Ok(());
        };
        let encoded = self.rewrite_block(&block.fragment)?;
        emit_block(block.stream, block.end_stream, &encoded, out);
        Ok(())
    }

    /// Decodes one complete header block and re-encodes it with a valid `:authority`.
    fn rewrite_block(&mut self, block: &[u8]) -> Result<Vec<u8>, ShimError> {
        let mut headers: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut list_size = 0usize;
        self.decoder
            .decode_with_cb(block, |name, value| {
                list_size = list_size.saturating_add(name.len() + value.len() + 32);
                // The decoder must still see every field (its table depends on them),
                // but past the bound nothing more is kept.
                if list_size <= MAX_DECODED_LIST {
                    headers.push((name.into_owned(), value.into_owned()));
                }
            })
            .map_err(|err| ShimError::Hpack(err.to_string()))?;
        if list_size > MAX_DECODED_LIST {
            return Err(ShimError::HeaderListTooLarge);
        }
        for (name, value) in &mut headers {
            if name == b":authority" && !valid_authority(value) {
                *value = REPLACEMENT_AUTHORITY.to_vec();
                self.replaced += 1;
            }
        }
        Ok(self
            .encoder
            .encode(headers.iter().map(|(n, v)| (&n[..], &v[..]))))
    }
}

/// The header block fragment of a HEADERS payload, without padding and priority.
fn strip_headers_payload(flags: u8, payload: &[u8]) -> Option<&[u8]> {
    let mut rest = payload;
    let mut pad = 0usize;
    if flags & FLAG_PADDED != 0 {
        let (&len, tail) = rest.split_first()?;
        pad = usize::from(len);
        rest = tail;
    }
    if flags & FLAG_PRIORITY != 0 {
        rest = rest.get(5..)?;
    }
    // RFC 7540 6.2: padding longer than what is left is a PROTOCOL_ERROR.
    rest.get(..rest.len().checked_sub(pad)?)
}

/// Is `value` what h2 accepts as `:authority` (it parses it with the same function)?
fn valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

fn frame_header(len: usize, frame_type: u8, flags: u8, stream: u32) -> [u8; FRAME_HEADER_LEN] {
    let len = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    let stream = stream.to_be_bytes();
    [
        len[1], len[2], len[3], frame_type, flags, stream[0], stream[1], stream[2], stream[3],
    ]
}

/// One HEADERS frame (END_STREAM as the client set it), then CONTINUATIONs as needed;
/// END_HEADERS on the last.
fn emit_block(stream: u32, end_stream: bool, block: &[u8], out: &mut Vec<u8>) {
    let mut chunks = block.chunks(MAX_EMITTED_PAYLOAD).peekable();
    let mut first = true;
    loop {
        let chunk = chunks.next().unwrap_or(&[]);
        let last = chunks.peek().is_none();
        let (frame_type, mut flags) = if first {
            (TYPE_HEADERS, if end_stream { FLAG_END_STREAM } else { 0 })
        } else {
            (TYPE_CONTINUATION, 0)
        };
        if last {
            flags |= FLAG_END_HEADERS;
        }
        out.extend_from_slice(&frame_header(chunk.len(), frame_type, flags, stream));
        out.extend_from_slice(chunk);
        first = false;
        if last {
            return;
        }
    }
}

/// Pipes one connection: `client`'s bytes through a [`Rewriter`] to `server`, and
/// `server`'s back untouched. Returns when both directions are done; a rewrite error
/// closes both (the error is returned for the log).
pub async fn pipe<C, S>(client: C, server: S) -> Result<u64, PipeError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let (mut server_rd, mut server_wr) = tokio::io::split(server);
    let upstream = async {
        let mut rewriter = Rewriter::new();
        let mut buf = vec![0u8; 16 * 1024];
        let mut out = Vec::with_capacity(16 * 1024);
        loop {
            let n = client_rd.read(&mut buf).await.map_err(PipeError::Io)?;
            if n == 0 {
                // The client is done sending; the server may still answer.
                server_wr.shutdown().await.map_err(PipeError::Io)?;
                return Ok(rewriter.replaced);
            }
            out.clear();
            rewriter
                .feed(&buf[..n], &mut out)
                .map_err(PipeError::Shim)?;
            server_wr.write_all(&out).await.map_err(PipeError::Io)?;
        }
    };
    let downstream = async {
        tokio::io::copy(&mut server_rd, &mut client_wr)
            .await
            .map_err(PipeError::Io)?;
        client_wr.shutdown().await.map_err(PipeError::Io)
    };
    // try_join: a failure in one direction drops the other, closing the connection.
    let (replaced, ()) = tokio::try_join!(upstream, downstream)?;
    Ok(replaced)
}

#[derive(Debug, Error)]
pub enum PipeError {
    #[error("{0}")]
    Io(std::io::Error),
    #[error("closing the connection: {0}")]
    Shim(ShimError),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const SOCKET: &[u8] = b"/var/lib/kubelet/plugins_registry/hanfs.csi.io-reg.sock";

    /// (type, flags, stream, payload)
    type Frame = (u8, u8, u32, Vec<u8>);
    type HeaderList = Vec<(Vec<u8>, Vec<u8>)>;

    fn frame(frame_type: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = frame_header(payload.len(), frame_type, flags, stream).to_vec();
        f.extend_from_slice(payload);
        f
    }

    /// Parses frames out of `bytes` (after the preface): (type, flags, stream, payload).
    fn frames(mut bytes: &[u8]) -> Vec<Frame> {
        let mut list = Vec::new();
        while !bytes.is_empty() {
            let len =
                usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
            let stream = u32::from_be_bytes(bytes[5..9].try_into().unwrap());
            list.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
            bytes = &bytes[9 + len..];
        }
        list
    }

    /// What the server's decoder makes of the rewritten stream's header blocks.
    fn server_view(out: &[u8]) -> (Vec<Frame>, Vec<HeaderList>) {
        assert_eq!(&out[..24], PREFACE);
        let list = frames(&out[24..]);
        let mut decoder = Decoder::new();
        let mut blocks = Vec::new();
        let mut block = Vec::new();
        for (t, flags, _, payload) in &list {
            if *t == TYPE_HEADERS || *t == TYPE_CONTINUATION {
                assert_eq!(flags & (FLAG_PADDED | FLAG_PRIORITY), 0);
                block.extend_from_slice(payload);
                if flags & FLAG_END_HEADERS != 0 {
                    blocks.push(decoder.decode(&block).unwrap());
                    block.clear();
                }
            }
        }
        (list, blocks)
    }

    fn request(authority: &[u8], path: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (b":path".to_vec(), path.to_vec()),
            (b":authority".to_vec(), authority.to_vec()),
            (b"content-type".to_vec(), b"application/grpc".to_vec()),
            (b"te".to_vec(), b"trailers".to_vec()),
        ]
    }

    fn encode(encoder: &mut Encoder, headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])))
    }

    fn value<'a>(headers: &'a [(Vec<u8>, Vec<u8>)], name: &[u8]) -> &'a [u8] {
        &headers.iter().find(|(n, _)| n == name).unwrap().1
    }

    fn run(input: &[u8], split: usize) -> (Result<(), ShimError>, Vec<u8>, u64) {
        let mut rewriter = Rewriter::new();
        let mut out = Vec::new();
        for chunk in input.chunks(split) {
            if let Err(err) = rewriter.feed(chunk, &mut out) {
                return (Err(err), out, rewriter.replaced);
            }
        }
        (Ok(()), out, rewriter.replaced)
    }

    #[test]
    fn a_socket_path_authority_becomes_localhost_and_other_frames_pass() {
        let mut client = Encoder::new();
        let block = encode(
            &mut client,
            &request(SOCKET, b"/pluginregistration.Registration/GetInfo"),
        );
        let settings = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        let window = frame(0x8, 0, 0, &[0, 0, 0x10, 0]);
        let data = frame(0x0, FLAG_END_STREAM, 1, &[0, 0, 0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(&settings);
        input.extend(&window);
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block));
        input.extend(&data);
        // Any split of the byte stream gives the same result.
        for split in [1, 2, 7, 9, 10, 64] {
            let (result, out, replaced) = run(&input, split);
            result.unwrap();
            assert_eq!(replaced, 1);
            let (list, blocks) = server_view(&out);
            assert_eq!(list[0], (0x4, 0, 0, settings[9..].to_vec()));
            assert_eq!(list[1], (0x8, 0, 0, window[9..].to_vec()));
            assert_eq!(
                (list[2].0, list[2].1, list[2].2),
                (TYPE_HEADERS, FLAG_END_HEADERS, 1)
            );
            assert_eq!(list[3], (0x0, FLAG_END_STREAM, 1, data[9..].to_vec()));
            assert_eq!(blocks.len(), 1);
            assert_eq!(
                blocks[0],
                request(b"localhost", b"/pluginregistration.Registration/GetInfo")
            );
        }
    }

    #[test]
    fn a_valid_authority_is_kept() {
        for authority in [
            &b"localhost"[..],
            b"127.0.0.1:50051",
            b"[::1]:8080",
            b"hanfs.csi.io",
        ] {
            let block = encode(&mut Encoder::new(), &request(authority, b"/x"));
            let mut input = PREFACE.to_vec();
            input.extend(frame(
                TYPE_HEADERS,
                FLAG_END_HEADERS | FLAG_END_STREAM,
                3,
                &block,
            ));
            let (result, out, replaced) = run(&input, 5);
            result.unwrap();
            assert_eq!(replaced, 0, "{}", String::from_utf8_lossy(authority));
            let (list, blocks) = server_view(&out);
            assert_eq!(
                list[0].1,
                FLAG_END_HEADERS | FLAG_END_STREAM,
                "END_STREAM kept"
            );
            assert_eq!(value(&blocks[0], b":authority"), authority);
        }
        for invalid in [&b""[..], SOCKET, b"a b", b"x/y"] {
            assert!(
                !valid_authority(invalid),
                "{}",
                String::from_utf8_lossy(invalid)
            );
        }
    }

    #[test]
    fn padding_priority_and_continuation_are_folded_into_one_headers_frame() {
        let block = encode(&mut Encoder::new(), &request(SOCKET, b"/p"));
        let (a, rest) = block.split_at(5);
        let (b, c) = rest.split_at(rest.len() / 2);
        let mut payload = vec![4u8]; // pad length
        payload.extend([0x80, 0, 0, 1, 15]); // exclusive dependency on stream 1, weight 15
        payload.extend(a);
        payload.extend([0u8; 4]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            5,
            &payload,
        ));
        input.extend(frame(TYPE_CONTINUATION, 0, 5, b));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 5, c));
        input.extend(frame(0x6, 0, 0, &[1, 2, 3, 4, 5, 6, 7, 8])); // PING
        let (result, out, replaced) = run(&input, 3);
        result.unwrap();
        assert_eq!(replaced, 1);
        let (list, blocks) = server_view(&out);
        assert_eq!(list.len(), 2, "one HEADERS frame, then the PING: {list:?}");
        assert_eq!(list[0].1, FLAG_END_HEADERS | FLAG_END_STREAM);
        assert_eq!(list[0].2, 5);
        assert_eq!(list[1], (0x6, 0, 0, vec![1, 2, 3, 4, 5, 6, 7, 8]));
        assert_eq!(blocks[0], request(b"localhost", b"/p"));
    }

    /// HPACK by hand, as grpc-go's encoder does it: `:authority` as a literal with
    /// incremental indexing (so it enters the dynamic table at index 62), or, once
    /// there, as the index alone.
    fn hand_block(path: &[u8], authority_indexed: bool) -> Vec<u8> {
        let mut block = vec![0x83, 0x86]; // :method POST, :scheme http (static)
        block.push(0x04); // literal without indexing, name :path (static 4)
        block.push(u8::try_from(path.len()).unwrap());
        block.extend(path);
        if authority_indexed {
            block.push(0x80 | 62);
        } else {
            block.push(0x41); // literal with incremental indexing, name :authority
            block.push(u8::try_from(SOCKET.len()).unwrap());
            block.extend(SOCKET);
        }
        block
    }

    fn pseudo(path: &[u8], authority: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (b":path".to_vec(), path.to_vec()),
            (b":authority".to_vec(), authority.to_vec()),
        ]
    }

    #[test]
    fn a_second_request_referencing_the_dynamic_table_decodes() {
        let get_info = b"/pluginregistration.Registration/GetInfo";
        let notify = b"/pluginregistration.Registration/NotifyRegistrationStatus";
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &hand_block(get_info, false),
        ));
        // The second names the socket path only by its dynamic-table index.
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            3,
            &hand_block(notify, true),
        ));
        // A third starts with a dynamic table size update (to 4096, which keeps
        // every entry) and refers to the table again.
        let mut third = vec![0x20 | 0x1f, 0xe1, 0x1f];
        third.extend(hand_block(notify, true));
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 5, &third));
        let (result, out, replaced) = run(&input, 11);
        result.unwrap();
        assert_eq!(replaced, 3);
        let (_, blocks) = server_view(&out);
        assert_eq!(blocks[0], pseudo(get_info, b"localhost"));
        assert_eq!(blocks[1], pseudo(notify, b"localhost"));
        assert_eq!(blocks[2], blocks[1]);

        // Without the first block the index means nothing: the decoder really did
        // keep the table across blocks.
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            3,
            &hand_block(notify, true),
        ));
        assert!(matches!(run(&input, 100).0, Err(ShimError::Hpack(_))));
    }

    #[test]
    fn a_huffman_coded_block_decodes() {
        // RFC 7541 C.4.1: :method GET, :scheme http, :path /, :authority www.example.com
        // with Huffman-coded strings.
        let block = [
            0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
            0x90, 0xf4, 0xff,
        ];
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block));
        let (result, out, replaced) = run(&input, 100);
        result.unwrap();
        assert_eq!(replaced, 0);
        let (_, blocks) = server_view(&out);
        assert_eq!(value(&blocks[0], b":authority"), b"www.example.com");
    }

    #[test]
    fn a_long_block_is_split_into_continuations() {
        let mut headers = request(SOCKET, b"/p");
        for i in 0..6 {
            headers.push((format!("x-big-{i}").into_bytes(), vec![b'a' + i; 9000]));
        }
        let block = encode(&mut Encoder::new(), &headers);
        let mut input = PREFACE.to_vec();
        for (i, chunk) in block.chunks(10_000).enumerate() {
            let (t, flags) = if i == 0 {
                (TYPE_HEADERS, 0)
            } else {
                (TYPE_CONTINUATION, 0)
            };
            let last = (i + 1) * 10_000 >= block.len();
            input.extend(frame(
                t,
                flags | if last { FLAG_END_HEADERS } else { 0 },
                1,
                chunk,
            ));
        }
        let (result, out, _) = run(&input, 4096);
        result.unwrap();
        let (list, blocks) = server_view(&out);
        assert!(list.len() >= 4, "{} frames", list.len());
        assert_eq!(list[0].0, TYPE_HEADERS);
        for (i, (t, flags, stream, payload)) in list.iter().enumerate() {
            assert!(payload.len() <= MAX_EMITTED_PAYLOAD);
            assert_eq!(*stream, 1);
            if i > 0 {
                assert_eq!(*t, TYPE_CONTINUATION);
            }
            assert_eq!(flags & FLAG_END_HEADERS != 0, i == list.len() - 1);
        }
        let mut want = headers.clone();
        want[3].1 = b"localhost".to_vec();
        assert_eq!(blocks[0], want);
    }

    #[test]
    fn bad_input_closes_the_connection() {
        let big = vec![0u8; MAX_HEADER_BLOCK / 2 + 1];
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, 0, 1, &big));
        input.extend(frame(TYPE_CONTINUATION, 0, 1, &big));
        assert_eq!(run(&input, 1000).0, Err(ShimError::HeaderBlockTooLarge));

        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, 0, 1, &[0x82]));
        input.extend(frame(0x0, 0, 1, &[0]));
        assert!(matches!(
            run(&input, 1000).0,
            Err(ShimError::InterleavedFrame { .. })
        ));

        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0x80 | 0x7e])); // index 126
        assert!(matches!(run(&input, 1000).0, Err(ShimError::Hpack(_))));

        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_PADDED,
            1,
            &[9, 0x82],
        ));
        assert_eq!(run(&input, 1000).0, Err(ShimError::MalformedHeaders(1)));

        // A size update above SETTINGS_HEADER_TABLE_SIZE is a compression error.
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[0x3f, 0xe2, 0x3f, 0x82],
        ));
        assert!(matches!(run(&input, 1000).0, Err(ShimError::Hpack(_))));

        // Many references to one large table entry expand past the list bound.
        let mut client = Encoder::new();
        let mut block = encode(&mut client, &[(b"x-big".to_vec(), vec![b'a'; 3000])]);
        block.extend(std::iter::repeat_n(0x80 | 62, 200));
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block));
        assert_eq!(run(&input, 1000).0, Err(ShimError::HeaderListTooLarge));
    }
}
