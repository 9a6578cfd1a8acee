//! The handshake ("Fixed newstyle negotiation" in the NBD specification):
//! structured replies, the `base:allocation` metadata context, then
//! `NBD_OPT_GO` with a block size request, falling back to
//! `NBD_OPT_EXPORT_NAME` for servers without GO. Oldstyle servers are
//! understood for the default export.
//!
//! Refusals are reported in qemu-img 10.0.2's words (found by pointing it
//! at a scripted server answering each error): "Requested export not
//! available", "Denied by server for option 7 (go)", ... followed by
//! "server reported: MESSAGE" when the server sent a message.

use crate::error::{NbdError, Result};
use crate::socket::Link;
use crate::tls::Tls;
use crate::wire::{self, client_flags, handshake_flags, info, opt, rep, tx_flags, Cursor};
use std::io;

/// Largest option reply payload accepted (a reply is read whole).
pub const MAX_OPTION_REPLY: u32 = 64 * 1024;
/// Largest minimum block size the specification allows.
const MAX_MIN_BLOCK: u32 = 64 * 1024;

/// What the handshake settled for one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Export {
    /// The export's size in bytes.
    pub size: u64,
    /// Transmission flags ([`tx_flags`]).
    pub flags: u16,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// The id of `base:allocation`, if the server selected it.
    pub allocation: Option<u32>,
    /// The server's block size constraints.
    pub block: BlockSizes,
}

impl Export {
    /// True if the server advertises `flag` ([`tx_flags`]).
    pub fn has(&self, flag: u16) -> bool {
        self.flags & tx_flags::HAS_FLAGS != 0 && self.flags & flag != 0
    }
}

/// Block size constraints ("Block size constraints"); defaults when the
/// server sends none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSizes {
    /// Every offset and length must be a multiple of this (a power of two).
    pub minimum: u32,
    /// Requests of this alignment are efficient.
    pub preferred: u32,
    /// Largest request length the server takes, if it said.
    pub maximum: Option<u32>,
}

impl Default for BlockSizes {
    fn default() -> Self {
        BlockSizes {
            minimum: 1,
            preferred: 4096,
            maximum: None,
        }
    }
}

/// Negotiates `export` on a fresh connection. When the server refuses,
/// the client says goodbye with `NBD_OPT_ABORT` (a soft disconnect, as
/// the specification asks) before reporting why.
pub fn negotiate(link: &mut Link, export: &str, tls: Option<&Tls>) -> Result<Export> {
    let result = haggle(link, export, tls);
    if let Err(NbdError::Refused { .. }) = &result {
        let _ = link.write_all(&[&wire::option_request(opt::ABORT, &[])]);
    }
    result
}

fn haggle(link: &mut Link, export: &str, tls: Option<&Tls>) -> Result<Export> {
    let magic = read(link, "initial magic", Link::read_u64)?;
    if magic != wire::INIT_MAGIC {
        return Err(refused(format!(
            "Bad initial magic received: 0x{magic:016x}"
        )));
    }
    let magic = read(link, "server magic", Link::read_u64)?;
    match magic {
        wire::OPTS_MAGIC => {}
        wire::OLDSTYLE_MAGIC if tls.is_some() => return Err(no_starttls()),
        wire::OLDSTYLE_MAGIC => return oldstyle(link, export),
        _ => {
            return Err(refused(format!(
                "Bad server magic received: 0x{magic:016x}"
            )))
        }
    }
    let server = read(link, "server flags", Link::read_u16)?;
    let mut client = 0;
    if server & handshake_flags::FIXED_NEWSTYLE != 0 {
        client |= client_flags::FIXED_NEWSTYLE;
    }
    if server & handshake_flags::NO_ZEROES != 0 {
        client |= client_flags::NO_ZEROES;
    }
    send(link, "client flags", &[&client.to_be_bytes()])?;
    let no_zeroes = client & client_flags::NO_ZEROES != 0;
    if let Some(tls) = tls {
        if client & client_flags::FIXED_NEWSTYLE == 0 {
            return Err(no_starttls());
        }
        start_tls(link, tls)?;
    }
    if client & client_flags::FIXED_NEWSTYLE == 0 {
        // Plain newstyle: the export name is the only option there is.
        return export_name(link, export, no_zeroes, false);
    }
    let structured = simple_option(link, opt::STRUCTURED_REPLY)?;
    let allocation = if structured {
        set_meta_context(link, export)?
    } else {
        None
    };
    match go(link, export)? {
        Some((size, flags, block)) => Ok(Export {
            size,
            flags,
            structured,
            allocation,
            block,
        }),
        None => export_name(link, export, no_zeroes, structured),
    }
}

/// Reads with `f`, naming `what` if it fails.
fn read<T>(
    link: &mut Link,
    what: &'static str,
    f: impl FnOnce(&mut Link) -> io::Result<T>,
) -> Result<T> {
    f(link).map_err(|source| NbdError::HandshakeRead { what, source })
}

/// Sends `parts`, naming `what` if it fails.
fn send(link: &mut Link, what: &'static str, parts: &[&[u8]]) -> Result<()> {
    link.write_all(parts)
        .map_err(|source| NbdError::HandshakeWrite { what, source })
}

/// A negotiation failure worded for the user.
fn refused(message: String) -> NbdError {
    NbdError::Refused {
        message,
        errno: libc::EIO,
    }
}

/// The server broke the handshake's rules.
fn broken(message: impl Into<String>) -> NbdError {
    refused(message.into())
}

/// Sends option `option` with `data`.
fn send_option(link: &mut Link, option: u32, data: &[u8]) -> Result<()> {
    let request = wire::option_request(option, data);
    send(link, "option request header", &[&request])
}

/// One option reply ("Fixed newstyle negotiation"): its type and payload.
struct Reply {
    kind: u32,
    payload: Vec<u8>,
}

fn read_reply(link: &mut Link, option: u32) -> Result<Reply> {
    let header: [u8; 20] = read(link, "option reply", Link::read_array)?;
    let mut c = Cursor::new(&header);
    let (magic, echoed, kind, length) = (
        c.u64().unwrap_or_default(),
        c.u32().unwrap_or_default(),
        c.u32().unwrap_or_default(),
        c.u32().unwrap_or_default(),
    );
    if magic != wire::REP_MAGIC {
        return Err(broken("Unexpected option reply magic"));
    }
    if echoed != option {
        return Err(broken(format!(
            "Unexpected option type {echoed} in reply, expected {}",
            opt::describe(option)
        )));
    }
    if length > MAX_OPTION_REPLY {
        return Err(broken(format!(
            "server's reply to option {} is too long ({length} bytes)",
            opt::describe(option)
        )));
    }
    let mut payload = vec![0u8; length as usize];
    read(link, "option reply", |l| l.read_exact(&mut payload))?;
    Ok(Reply { kind, payload })
}

/// The reply type's name, for messages.
fn reply_name(kind: u32) -> &'static str {
    match kind {
        rep::ACK => "ack",
        2 => "server",
        rep::INFO => "info",
        rep::META_CONTEXT => "meta context",
        _ => "<unknown>",
    }
}

/// The message for an error reply to `option`, in qemu's words.
fn refusal(option: u32, reply: &Reply) -> NbdError {
    let name = opt::describe(option);
    let (text, errno) = match reply.kind {
        rep::ERR_UNKNOWN => ("Requested export not available".to_string(), libc::ENOENT),
        rep::ERR_TLS_REQD => (
            format!(
                "TLS negotiation required before option {name}\nDid you forget a valid tls-creds?"
            ),
            libc::EACCES,
        ),
        rep::ERR_POLICY => (format!("Denied by server for option {name}"), libc::EPERM),
        rep::ERR_INVALID => (
            format!("Invalid parameters for option {name}"),
            libc::EINVAL,
        ),
        rep::ERR_PLATFORM => (
            format!("Server lacks support for option {name}"),
            libc::ENOTSUP,
        ),
        rep::ERR_SHUTDOWN => (
            format!("Server shutting down before option {name}"),
            libc::ESHUTDOWN,
        ),
        rep::ERR_BLOCK_SIZE_REQD => (
            format!("Server requires INFO_BLOCK_SIZE for option {name}"),
            libc::EINVAL,
        ),
        rep::ERR_UNSUP => (format!("Unsupported option {name}"), libc::ENOTSUP),
        _ => (
            format!("Unknown error code when asking for option {name}"),
            libc::EIO,
        ),
    };
    let said = String::from_utf8_lossy(&reply.payload);
    let message = if said.is_empty() {
        text
    } else {
        format!("{text}\nserver reported: {said}")
    };
    NbdError::Refused { message, errno }
}

/// An option whose success is a bare ACK; false if the server refused it
/// (the option is then simply not in use).
fn simple_option(link: &mut Link, option: u32) -> Result<bool> {
    send_option(link, option, &[])?;
    let reply = read_reply(link, option)?;
    match reply.kind {
        rep::ACK => Ok(true),
        kind if kind & rep::ERROR_BIT != 0 => Ok(false),
        kind => Err(broken(format!(
            "unexpected reply type {kind} ({}), expected 1 (ack)",
            reply_name(kind)
        ))),
    }
}

/// A server that cannot be asked for TLS (no fixed newstyle), in qemu's
/// words.
fn no_starttls() -> NbdError {
    refused("Server does not support STARTTLS".into())
}

/// `NBD_OPT_STARTTLS`, then the TLS handshake: the rest of the
/// negotiation and the transmission go through TLS.
fn start_tls(link: &mut Link, tls: &Tls) -> Result<()> {
    send_option(link, opt::STARTTLS, &[])?;
    let reply = read_reply(link, opt::STARTTLS)?;
    let name = opt::describe(opt::STARTTLS);
    match reply.kind {
        rep::ACK if reply.payload.is_empty() => {}
        rep::ACK => {
            return Err(broken(format!(
                "Option 5 ('starttls') response length is {} (it should be zero)",
                reply.payload.len()
            )))
        }
        rep::ERR_UNSUP => return Err(refused("Server don't support STARTTLS option".into())),
        kind if kind & rep::ERROR_BIT != 0 => return Err(refusal(opt::STARTTLS, &reply)),
        kind => {
            return Err(broken(format!(
                "Server answered option {name} with unexpected reply {kind} ({})",
                reply_name(kind)
            )))
        }
    }
    link.start_tls(tls)
}

/// Selects `base:allocation` for `export`; its id if the server has it.
fn set_meta_context(link: &mut Link, export: &str) -> Result<Option<u32>> {
    let mut data = Vec::new();
    wire::put_string(&mut data, export.as_bytes());
    data.extend_from_slice(&1u32.to_be_bytes());
    wire::put_string(&mut data, wire::BASE_ALLOCATION.as_bytes());
    send_option(link, opt::SET_META_CONTEXT, &data)?;
    let mut found = None;
    loop {
        let reply = read_reply(link, opt::SET_META_CONTEXT)?;
        match reply.kind {
            rep::ACK => return Ok(found),
            rep::META_CONTEXT => {
                let mut c = Cursor::new(&reply.payload);
                let id = c
                    .u32()
                    .ok_or_else(|| broken("meta context reply too short"))?;
                if c.rest() != wire::BASE_ALLOCATION.as_bytes() {
                    return Err(broken(format!(
                        "server selected unexpected meta context '{}'",
                        String::from_utf8_lossy(c.rest())
                    )));
                }
                if found.replace(id).is_some() {
                    return Err(broken("server selected base:allocation twice"));
                }
            }
            // Without the context there is no block status; not fatal.
            kind if kind & rep::ERROR_BIT != 0 => return Ok(None),
            kind => {
                return Err(broken(format!(
                    "unexpected reply type {kind} ({}), expected 4 (meta context)",
                    reply_name(kind)
                )))
            }
        }
    }
}

/// `NBD_OPT_GO` with an `NBD_INFO_BLOCK_SIZE` request: the size, flags
/// and block sizes; `None` if the server lacks GO.
fn go(link: &mut Link, export: &str) -> Result<Option<(u64, u16, BlockSizes)>> {
    let mut data = Vec::new();
    wire::put_string(&mut data, export.as_bytes());
    data.extend_from_slice(&1u16.to_be_bytes());
    data.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
    send_option(link, opt::GO, &data)?;
    let mut export_info = None;
    let mut block = BlockSizes::default();
    loop {
        let reply = read_reply(link, opt::GO)?;
        match reply.kind {
            rep::ACK => {
                let (size, flags) =
                    export_info.ok_or_else(|| broken("broken server omitted NBD_INFO_EXPORT"))?;
                return Ok(Some((size, flags, block)));
            }
            rep::INFO => {
                let mut c = Cursor::new(&reply.payload);
                let kind = c
                    .u16()
                    .ok_or_else(|| broken("server sent an empty info reply"))?;
                let remaining = c.rest().len();
                match kind {
                    info::EXPORT => {
                        let (Some(size), Some(flags), true) = (c.u64(), c.u16(), remaining == 10)
                        else {
                            return Err(broken(format!(
                                "remaining export info len {remaining} is unexpected size"
                            )));
                        };
                        export_info = Some((checked_size(size)?, flags));
                    }
                    info::BLOCK_SIZE => {
                        let (Some(min), Some(pref), Some(max), true) =
                            (c.u32(), c.u32(), c.u32(), remaining == 12)
                        else {
                            return Err(broken(format!(
                                "remaining block size info len {remaining} is unexpected size"
                            )));
                        };
                        block = block_sizes(min, pref, max)?;
                    }
                    // "The client MUST ignore information replies it does
                    // not understand."
                    _ => {}
                }
            }
            rep::ERR_UNSUP => return Ok(None),
            kind if kind & rep::ERROR_BIT != 0 => return Err(refusal(opt::GO, &reply)),
            kind => {
                return Err(broken(format!(
                    "unexpected reply type {kind} ({}), expected 3 (info)",
                    reply_name(kind)
                )))
            }
        }
    }
}

/// The constraints of `NBD_INFO_BLOCK_SIZE`, checked against the rules of
/// "Block size constraints". A preferred size that breaks them is only a
/// hint and is replaced; a bad minimum or maximum is refused.
fn block_sizes(minimum: u32, preferred: u32, maximum: u32) -> Result<BlockSizes> {
    if minimum == 0 || !minimum.is_power_of_two() || minimum > MAX_MIN_BLOCK {
        return Err(broken(format!(
            "server minimum block size {minimum} is not a power of two up to 64 KiB"
        )));
    }
    let maximum = match maximum {
        u32::MAX => None,
        max if max < minimum || max % minimum != 0 => {
            return Err(broken(format!(
                "server maximum block size {max} is not a multiple of the minimum {minimum}"
            )))
        }
        max => Some(max),
    };
    let preferred = if preferred.is_power_of_two() && preferred >= minimum {
        preferred
    } else {
        minimum.max(4096)
    };
    Ok(BlockSizes {
        minimum,
        preferred,
        maximum,
    })
}

/// An export size the rest of the driver can use as an offset.
fn checked_size(size: u64) -> Result<u64> {
    if size > i64::MAX as u64 {
        return Err(broken(format!(
            "server sent an export size {size} too large"
        )));
    }
    Ok(size)
}

/// `NBD_OPT_EXPORT_NAME`: the server answers with the size and flags, or
/// drops the connection if it has no such export.
fn export_name(link: &mut Link, export: &str, no_zeroes: bool, structured: bool) -> Result<Export> {
    send_option(link, opt::EXPORT_NAME, export.as_bytes())?;
    let size = read(link, "export length", Link::read_u64)?;
    let flags = read(link, "export flags", Link::read_u16)?;
    if !no_zeroes {
        read(link, "export padding", |l| l.skip(124))?;
    }
    Ok(Export {
        size: checked_size(size)?,
        flags,
        structured,
        // Contexts are tied to GO's export choice; EXPORT_NAME servers
        // predate them anyway.
        allocation: None,
        block: BlockSizes::default(),
    })
}

/// Oldstyle negotiation: the server sends everything at once, for the
/// default export only.
fn oldstyle(link: &mut Link, export: &str) -> Result<Export> {
    if !export.is_empty() {
        return Err(refused(
            "Server does not support non-empty export names".into(),
        ));
    }
    let size = read(link, "export length", Link::read_u64)?;
    let flags = read(link, "export flags", Link::read_u32)?;
    read(link, "export padding", |l| l.skip(124))?;
    Ok(Export {
        size: checked_size(size)?,
        flags: (flags & 0xffff) as u16,
        structured: false,
        allocation: None,
        block: BlockSizes::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_follow_the_rules() {
        let b = block_sizes(512, 4096, 32 << 20).unwrap();
        assert_eq!(
            (b.minimum, b.preferred, b.maximum),
            (512, 4096, Some(32 << 20))
        );
        assert_eq!(block_sizes(1, 4096, u32::MAX).unwrap().maximum, None);
        assert!(block_sizes(0, 4096, 1 << 20).is_err());
        assert!(block_sizes(3, 4096, 1 << 20).is_err());
        assert!(block_sizes(128 << 10, 128 << 10, 1 << 20).is_err());
        assert!(block_sizes(512, 4096, 1000).is_err());
        assert!(block_sizes(4096, 4096, 512).is_err());
        // A bad preferred size is only a hint.
        assert_eq!(block_sizes(512, 3, 1 << 20).unwrap().preferred, 4096);
    }

    #[test]
    fn refusals_in_qemu_words() {
        let reply = |kind, text: &str| Reply {
            kind,
            payload: text.as_bytes().to_vec(),
        };
        let text = |kind, said| refusal(opt::GO, &reply(kind, said)).to_string();
        assert_eq!(
            text(rep::ERR_UNKNOWN, "export 'nope' not present"),
            "Requested export not available\nserver reported: export 'nope' not present"
        );
        assert_eq!(text(rep::ERR_UNKNOWN, ""), "Requested export not available");
        assert_eq!(
            text(rep::ERR_TLS_REQD, ""),
            "TLS negotiation required before option 7 (go)\nDid you forget a valid tls-creds?"
        );
        assert_eq!(
            text(rep::ERR_POLICY, "go away"),
            "Denied by server for option 7 (go)\nserver reported: go away"
        );
        assert_eq!(
            text(rep::ERR_INVALID, ""),
            "Invalid parameters for option 7 (go)"
        );
        assert_eq!(
            text(rep::ERR_PLATFORM, ""),
            "Server lacks support for option 7 (go)"
        );
        assert_eq!(
            text(rep::ERR_SHUTDOWN, "bye"),
            "Server shutting down before option 7 (go)\nserver reported: bye"
        );
        assert_eq!(
            text(rep::ERR_BLOCK_SIZE_REQD, ""),
            "Server requires INFO_BLOCK_SIZE for option 7 (go)"
        );
        assert_eq!(
            text(rep::ERROR_BIT + 9, "msg"),
            "Unknown error code when asking for option 7 (go)\nserver reported: msg"
        );
    }

    #[test]
    fn sizes_beyond_i64_are_refused() {
        assert!(checked_size(1 << 40).is_ok());
        assert!(checked_size(u64::MAX).is_err());
    }

    use crate::testing::serve;

    #[test]
    fn go_with_structured_replies_and_allocation() {
        let (mut link, server) = serve(|mut s| {
            s.accept(
                1 << 20,
                tx_flags::HAS_FLAGS | tx_flags::SEND_FLUSH,
                Some([512, 4096, 1 << 20]),
            );
            s.drain();
        });
        let export = negotiate(&mut link, "qq", None).unwrap();
        assert_eq!(export.size, 1 << 20);
        assert!(export.structured);
        assert_eq!(export.allocation, Some(7));
        assert!(export.has(tx_flags::SEND_FLUSH));
        assert!(!export.has(tx_flags::READ_ONLY));
        assert_eq!(export.block.minimum, 512);
        assert_eq!(export.block.maximum, Some(1 << 20));
        drop(link);
        server.join().unwrap();
    }

    #[test]
    fn the_options_carry_the_export_name() {
        let (mut link, server) = serve(|mut s| {
            assert_eq!(
                s.greet(),
                client_flags::FIXED_NEWSTYLE | client_flags::NO_ZEROES
            );
            let (option, _) = s.option();
            s.reply(option, rep::ACK, &[]);
            let (option, data) = s.option();
            assert_eq!(option, opt::SET_META_CONTEXT);
            let mut expect = Vec::new();
            wire::put_string(&mut expect, b"a b");
            expect.extend_from_slice(&1u32.to_be_bytes());
            wire::put_string(&mut expect, b"base:allocation");
            assert_eq!(data, expect);
            // No context selected: not an error.
            s.reply(option, rep::ACK, &[]);
            let (option, data) = s.option();
            assert_eq!(option, opt::GO);
            assert_eq!(data, b"\0\0\0\x03a b\0\x01\0\x03");
            s.reply(option, rep::ERR_UNKNOWN, b"export 'a b' not present");
            let (option, _) = s.option();
            assert_eq!(option, opt::ABORT);
        });
        let e = negotiate(&mut link, "a b", None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Requested export not available\nserver reported: export 'a b' not present"
        );
        server.join().unwrap();
    }

    #[test]
    fn servers_without_go_get_export_name() {
        let (mut link, server) = serve(|mut s| {
            s.greet();
            let (option, _) = s.option();
            s.reply(option, rep::ERR_UNSUP, &[]);
            let (option, _) = s.option();
            assert_eq!(option, opt::GO);
            s.reply(option, rep::ERR_UNSUP, &[]);
            let (option, data) = s.option();
            assert_eq!((option, data.as_slice()), (opt::EXPORT_NAME, &b"x"[..]));
            s.send(&(4u64 << 20).to_be_bytes());
            s.send(&(tx_flags::HAS_FLAGS | tx_flags::READ_ONLY).to_be_bytes());
            s.drain();
        });
        let export = negotiate(&mut link, "x", None).unwrap();
        assert_eq!(export.size, 4 << 20);
        assert!(!export.structured);
        assert_eq!(export.allocation, None);
        assert!(export.has(tx_flags::READ_ONLY));
        drop(link);
        server.join().unwrap();
    }

    #[test]
    fn a_server_that_hangs_up_instead_of_exporting() {
        let (mut link, server) = serve(|mut s| {
            s.greet();
            let (option, _) = s.option();
            s.reply(option, rep::ERR_UNSUP, &[]);
            let (option, _) = s.option();
            s.reply(option, rep::ERR_UNSUP, &[]);
            s.option();
        });
        let e = negotiate(&mut link, "x", None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Failed to read export length: Unexpected end-of-file before all data were read"
        );
        server.join().unwrap();
    }

    #[test]
    fn tls_only_servers_are_refused_in_qemu_words() {
        let (mut link, server) = serve(|mut s| {
            s.greet();
            for _ in 0..3 {
                let (option, _) = s.option();
                s.reply(option, rep::ERR_TLS_REQD, b"TLS is required by this server");
            }
            s.drain();
        });
        let e = negotiate(&mut link, "x", None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "TLS negotiation required before option 7 (go)\n\
             Did you forget a valid tls-creds?\n\
             server reported: TLS is required by this server"
        );
        drop(link);
        server.join().unwrap();
    }

    /// A TLS setup that never gets to its handshake in these tests.
    fn tls() -> Tls {
        let creds = crate::tls::Credentials {
            endpoint: "client".into(),
            verify_peer: false,
            ca_cert: String::new(),
            client: None,
        };
        let server = crate::options::Server::Unix { path: "s".into() };
        crate::tls::client(&creds, &server, None).unwrap()
    }

    #[test]
    fn starttls_refusals_are_worded_as_qemu_words_them() {
        let cases: [(u32, &[u8], &str); 4] = [
            (
                rep::ERR_UNSUP,
                b"no",
                "Server don't support STARTTLS option",
            ),
            (
                rep::ERR_POLICY,
                b"go away",
                "Denied by server for option 5 (starttls)\nserver reported: go away",
            ),
            (
                rep::ACK,
                b"abcd",
                "Option 5 ('starttls') response length is 4 (it should be zero)",
            ),
            (
                2,
                b"",
                "Server answered option 5 (starttls) with unexpected reply 2 (server)",
            ),
        ];
        for (kind, data, message) in cases {
            let (mut link, server) = serve(move |mut s| {
                s.greet();
                let (option, _) = s.option();
                assert_eq!(option, wire::opt::STARTTLS);
                s.reply(option, kind, data);
                // The client gives up politely.
                let (option, _) = s.option();
                assert_eq!(option, wire::opt::ABORT);
            });
            let e = negotiate(&mut link, "x", Some(&tls())).unwrap_err();
            assert_eq!(e.to_string(), message);
            server.join().unwrap();
        }
    }

    #[test]
    fn tls_needs_fixed_newstyle() {
        let (mut link, server) = serve(|mut s| {
            let mut hello = wire::INIT_MAGIC.to_be_bytes().to_vec();
            hello.extend_from_slice(&wire::OPTS_MAGIC.to_be_bytes());
            hello.extend_from_slice(&0u16.to_be_bytes());
            s.send(&hello);
            s.drain();
        });
        let e = negotiate(&mut link, "x", Some(&tls())).unwrap_err();
        assert_eq!(e.to_string(), "Server does not support STARTTLS");
        drop(link);
        server.join().unwrap();
    }

    #[test]
    fn hostile_handshakes_fail_cleanly() {
        // Not an NBD server.
        let (mut link, server) = serve(|mut s| s.send(b"HTTP/1.1 400 Bad Request\r\n\r\n"));
        assert_eq!(
            negotiate(&mut link, "x", None).unwrap_err().to_string(),
            "Bad initial magic received: 0x485454502f312e31"
        );
        server.join().unwrap();
        // A reply claiming 4 GiB of payload is refused before any is read.
        let (mut link, server) = serve(|mut s| {
            s.greet();
            let (option, _) = s.option();
            let mut out = wire::REP_MAGIC.to_be_bytes().to_vec();
            out.extend_from_slice(&option.to_be_bytes());
            out.extend_from_slice(&rep::ACK.to_be_bytes());
            out.extend_from_slice(&u32::MAX.to_be_bytes());
            s.send(&out);
            s.drain();
        });
        assert!(negotiate(&mut link, "x", None)
            .unwrap_err()
            .to_string()
            .contains("too long"));
        drop(link);
        server.join().unwrap();
        // An info reply of the wrong size.
        let (mut link, server) = serve(|mut s| {
            s.greet();
            let (option, _) = s.option();
            s.reply(option, rep::ERR_UNSUP, &[]);
            let (option, _) = s.option();
            s.reply(option, rep::INFO, &[0, 0]);
            s.drain();
        });
        assert_eq!(
            negotiate(&mut link, "x", None).unwrap_err().to_string(),
            "remaining export info len 0 is unexpected size"
        );
        drop(link);
        server.join().unwrap();
        // GO acknowledged without the export's size.
        let (mut link, server) = serve(|mut s| {
            s.greet();
            let (option, _) = s.option();
            s.reply(option, rep::ERR_UNSUP, &[]);
            let (option, _) = s.option();
            s.reply(option, rep::ACK, &[]);
            s.drain();
        });
        assert_eq!(
            negotiate(&mut link, "x", None).unwrap_err().to_string(),
            "broken server omitted NBD_INFO_EXPORT"
        );
        drop(link);
        server.join().unwrap();
    }

    #[test]
    fn a_silent_server_times_out() {
        // The script says nothing and waits for the client to give up.
        let (mut link, server) = serve(|s| s.drain());
        let e = negotiate(&mut link, "x", None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("Failed to read initial magic: Unable to read from socket"),
            "{e}"
        );
        drop(link);
        server.join().unwrap();
    }

    #[test]
    fn oldstyle_servers_serve_the_default_export() {
        let (mut link, server) = serve(|mut s| {
            let mut hello = wire::INIT_MAGIC.to_be_bytes().to_vec();
            hello.extend_from_slice(&wire::OLDSTYLE_MAGIC.to_be_bytes());
            hello.extend_from_slice(&(1u64 << 20).to_be_bytes());
            hello.extend_from_slice(&1u32.to_be_bytes());
            hello.extend_from_slice(&[0u8; 124]);
            s.send(&hello);
            s.drain();
        });
        assert_eq!(negotiate(&mut link, "", None).unwrap().size, 1 << 20);
        drop(link);
        server.join().unwrap();
    }
}
