//! The requests in flight on one connection, up to [`MAX_IN_FLIGHT`] at a
//! time, each in a slot under its cookie. A request is sent whole under a
//! lock; replies come in whatever order the server sends them (chunks of
//! different requests may interleave) and are read by one waiting
//! requester at a time, the leader: it reads until its own reply is
//! complete, handing every other message to the request it belongs to (a
//! read's data goes straight into that requester's buffer), then wakes a
//! waiting requester to read on.
//!
//! A failure that breaks the connection (transport, protocol, a reply
//! whose cookie is not in flight) shuts the socket down and fails every
//! request in flight and every later one. A requester never leaves while
//! the leader may be writing into its buffer, and never waits on a leader
//! that is gone: the leader's socket reads time out, and however it stops
//! it either hands over or reports the failure to everyone.

use crate::error::{NbdError, Result};
use crate::pending::{Answer, Pending, Step};
use crate::reply;
use crate::socket::{Link, ReadHalf, WriteHalf};
use crate::wire::{cmd, Request};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// Most requests in flight on one connection (qemu-nbd serves 16 at a
/// time per client; more would only wait in its socket).
pub const MAX_IN_FLIGHT: usize = 16;

/// One connection's requests in flight, and its two directions.
pub struct Inflight {
    table: Mutex<Table>,
    /// One per slot: its requester waits there.
    wake: Vec<Condvar>,
    /// Signalled when a slot is freed or the connection breaks.
    room: Condvar,
    /// Read by the leader only.
    rx: Mutex<ReadHalf>,
    /// Sends under `sending`; shut down by anyone.
    tx: WriteHalf,
    sending: Mutex<()>,
    structured: bool,
}

struct Table {
    slots: Vec<Option<Slot>>,
    next_cookie: u64,
    /// A leader is reading replies.
    reading: bool,
    /// What broke the connection; every request after it fails.
    broken: Option<NbdError>,
    /// A write or write zeroes was issued since the last flush began.
    dirty: bool,
}

struct Slot {
    cookie: u64,
    /// A write or write zeroes: a later flush waits for it.
    writes: bool,
    state: State,
    /// Its requester waits on the slot's condition variable.
    parked: bool,
}

enum State {
    /// The reply has not (all) come.
    Waiting(Pending),
    /// The leader is reading a message of the reply into the request.
    Filling,
    /// The reply is complete.
    Done(Result<Answer>),
}

/// A slot held by one request; freed on drop.
struct Ticket<'a> {
    owner: &'a Inflight,
    index: usize,
    cookie: u64,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.owner.release(self.index, self.cookie);
    }
}

/// The leader's turn; handed over on drop, however the leader stops.
struct Turn<'a> {
    owner: &'a Inflight,
    clean: bool,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.owner.hand_over(self.clean);
    }
}

impl Inflight {
    /// Takes over a negotiated link; `structured` if structured replies
    /// were negotiated.
    pub fn new(link: Link, structured: bool) -> Inflight {
        let (rx, tx) = link.split();
        Inflight {
            table: Mutex::new(Table {
                slots: (0..MAX_IN_FLIGHT).map(|_| None).collect(),
                next_cookie: 1,
                reading: false,
                broken: None,
                dirty: false,
            }),
            wake: (0..MAX_IN_FLIGHT).map(|_| Condvar::new()).collect(),
            room: Condvar::new(),
            rx: Mutex::new(rx),
            tx,
            sending: Mutex::new(()),
            structured,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Nothing panics while the table is held: it is consistent at
        // every unlock.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// True once a failure made the connection unusable.
    pub fn is_broken(&self) -> bool {
        self.lock().broken.is_some()
    }

    /// True if a write was issued since the last flush began.
    pub fn is_dirty(&self) -> bool {
        self.lock().dirty
    }

    /// How many requests are in flight.
    pub fn in_flight(&self) -> usize {
        self.lock().slots.iter().flatten().count()
    }

    /// Sends `request` (its cookie filled in) with `payload`, and waits
    /// for its reply, read as `pending` expects it.
    pub fn call(&self, mut request: Request, payload: &[u8], pending: Pending) -> Result<Answer> {
        let writes = matches!(request.kind, cmd::WRITE | cmd::WRITE_ZEROES);
        let ticket = self.register(pending, writes)?;
        request.cookie = ticket.cookie;
        let sent = {
            let _whole = self.sending.lock().unwrap_or_else(PoisonError::into_inner);
            self.tx.write_all(&[&request.encode(), payload])
        };
        if let Err(e) = sent {
            let e = NbdError::Transport(e);
            self.fail(e.duplicate());
            return Err(e);
        }
        self.wait(&ticket)
    }

    /// Waits until every write issued so far has had its reply, so that
    /// a flush sent next covers them.
    pub fn settle_writes(&self) -> Result<()> {
        let mut table = self.lock();
        table.dirty = false;
        let barrier = table.next_cookie;
        loop {
            if table.broken.is_some() {
                return Err(NbdError::Closed);
            }
            let earlier = |s: &Slot| s.writes && s.cookie < barrier;
            if !table.slots.iter().flatten().any(earlier) {
                return Ok(());
            }
            table = self
                .room
                .wait(table)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Sends `NBD_CMD_DISC` unless the connection is broken, then shuts
    /// the socket down; errors are ignored, the connection is going away.
    pub fn close(&self) {
        let table = self.lock();
        if table.broken.is_none() {
            let request = Request {
                flags: 0,
                kind: cmd::DISC,
                cookie: table.next_cookie,
                offset: 0,
                length: 0,
            };
            drop(table);
            let _whole = self.sending.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = self.tx.write_all(&[&request.encode()]);
        }
        self.tx.shutdown();
    }

    /// Records what broke the connection (the first failure is kept),
    /// shuts the socket down and wakes everyone.
    fn fail(&self, e: NbdError) {
        let mut table = self.lock();
        table.broken.get_or_insert(e);
        drop(table);
        self.tx.shutdown();
        self.wake_all();
    }

    fn wake_all(&self) {
        for wake in &self.wake {
            wake.notify_all();
        }
        self.room.notify_all();
    }

    /// A free slot for `pending`, under a new cookie; waits for one while
    /// all are taken.
    fn register(&self, pending: Pending, writes: bool) -> Result<Ticket<'_>> {
        let mut table = self.lock();
        let index = loop {
            if table.broken.is_some() {
                return Err(NbdError::Closed);
            }
            if let Some(index) = table.slots.iter().position(Option::is_none) {
                break index;
            }
            table = self
                .room
                .wait(table)
                .unwrap_or_else(PoisonError::into_inner);
        };
        let cookie = table.next_cookie;
        table.next_cookie = cookie.wrapping_add(1);
        table.dirty |= writes;
        table.slots[index] = Some(Slot {
            cookie,
            writes,
            state: State::Waiting(pending),
            parked: false,
        });
        Ok(Ticket {
            owner: self,
            index,
            cookie,
        })
    }

    /// The result of the request in `ticket`'s slot, reading replies
    /// while no one else does.
    fn wait(&self, ticket: &Ticket<'_>) -> Result<Answer> {
        let index = ticket.index;
        let mut table = self.lock();
        loop {
            if let Some(result) = take_done(&mut table.slots[index]) {
                drop(table);
                self.room.notify_all();
                if let Err(e) = &result {
                    // ESHUTDOWN: the server is going away.
                    if e.breaks_connection() {
                        self.fail(e.duplicate());
                    }
                }
                return result;
            }
            if !table.reading {
                if let Some(e) = &table.broken {
                    let e = e.duplicate();
                    table.slots[index] = None;
                    drop(table);
                    self.room.notify_all();
                    return Err(e);
                }
                table.reading = true;
                drop(table);
                self.lead(index);
                table = self.lock();
                continue;
            }
            table = self.park(table, index);
        }
    }

    /// Waits on slot `index`'s condition variable.
    fn park<'t>(&self, mut table: MutexGuard<'t, Table>, index: usize) -> MutexGuard<'t, Table> {
        if let Some(slot) = table.slots[index].as_mut() {
            slot.parked = true;
        }
        table = self.wake[index]
            .wait(table)
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = table.slots[index].as_mut() {
            slot.parked = false;
        }
        table
    }

    /// Frees slot `index` if it still holds the request with `cookie`
    /// (which left without its result: a send failed), not before the
    /// leader is done with its buffer.
    fn release(&self, index: usize, cookie: u64) {
        let mut table = self.lock();
        let mine = |slot: &Option<Slot>| matches!(slot, Some(s) if s.cookie == cookie);
        if !mine(&table.slots[index]) {
            return;
        }
        while table.reading
            && matches!(
                table.slots[index],
                Some(Slot {
                    state: State::Filling,
                    ..
                })
            )
        {
            table = self.park(table, index);
        }
        if mine(&table.slots[index]) {
            table.slots[index] = None;
            drop(table);
            self.room.notify_all();
        }
    }

    /// Reads replies as the leader until slot `me`'s is complete.
    fn lead(&self, me: usize) {
        let mut turn = Turn {
            owner: self,
            clean: false,
        };
        let result = {
            let mut rx = self.rx.lock().unwrap_or_else(PoisonError::into_inner);
            self.read_until(me, &mut rx)
        };
        match result {
            Ok(()) => turn.clean = true,
            Err(e) => self.fail(e),
        }
    }

    /// Ends the leader's turn: wakes a waiting requester to take over, or
    /// everyone if the connection broke (or the leader stopped short).
    fn hand_over(&self, clean: bool) {
        let mut table = self.lock();
        table.reading = false;
        if !clean && table.broken.is_none() {
            table.broken = Some(NbdError::Closed);
            drop(table);
            self.tx.shutdown();
            self.wake_all();
            return;
        }
        if table.broken.is_some() {
            drop(table);
            self.wake_all();
            return;
        }
        let next = table.slots.iter().position(|slot| {
            matches!(
                slot,
                Some(Slot {
                    parked: true,
                    state: State::Waiting(_),
                    ..
                })
            )
        });
        drop(table);
        if let Some(next) = next {
            self.wake[next].notify_one();
        }
    }

    /// Reads reply messages, each into the request it belongs to, until
    /// slot `me`'s reply is complete.
    fn read_until(&self, me: usize, rx: &mut ReadHalf) -> Result<()> {
        loop {
            let header = reply::read_header(rx, self.structured)?;
            let cookie = header.cookie();
            let (index, mut pending) = self.claim(cookie)?;
            let step = pending.apply(header, rx, self.structured);
            let mut table = self.lock();
            let Some(slot) = table.slots[index].as_mut().filter(|s| s.cookie == cookie) else {
                // Only a requester's release frees a slot, and not while
                // it is being filled.
                return Err(NbdError::Closed);
            };
            let finished = match step {
                Ok(Step::Finished(result)) => {
                    slot.state = State::Done(result);
                    true
                }
                Ok(Step::More) => {
                    slot.state = State::Waiting(pending);
                    false
                }
                Err(e) => {
                    slot.state = State::Waiting(pending);
                    return Err(e);
                }
            };
            let parked = slot.parked;
            drop(table);
            if finished && index == me {
                return Ok(());
            }
            if finished || parked {
                self.wake[index].notify_one();
            }
        }
    }

    /// The slot and reply state of the request with `cookie`, marked as
    /// being filled.
    fn claim(&self, cookie: u64) -> Result<(usize, Pending)> {
        let mut table = self.lock();
        let found = table
            .slots
            .iter()
            .position(|slot| matches!(slot, Some(s) if s.cookie == cookie));
        let Some(slot) = found.and_then(|index| Some((index, table.slots[index].as_mut()?))) else {
            return Err(NbdError::Protocol(format!(
                "reply with cookie {cookie}, which no request in flight has"
            )));
        };
        let (index, slot) = slot;
        match std::mem::replace(&mut slot.state, State::Filling) {
            State::Waiting(pending) => Ok((index, pending)),
            other => {
                slot.state = other;
                Err(NbdError::Protocol(format!(
                    "reply with cookie {cookie}, whose request has its reply"
                )))
            }
        }
    }
}

/// The result in `slot` if its reply is complete; the slot is freed.
fn take_done(slot: &mut Option<Slot>) -> Option<Result<Answer>> {
    if !matches!(
        slot,
        Some(Slot {
            state: State::Done(_),
            ..
        })
    ) {
        return None;
    }
    match slot.take()?.state {
        State::Done(result) => Some(result),
        _ => None,
    }
}
