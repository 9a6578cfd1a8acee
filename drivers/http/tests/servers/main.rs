//! The driver against real servers (nginx with http and https, python's
//! http.server without ranges) and against a scripted mock server that
//! misbehaves in the ways an untrusted server may.

mod common;
mod mock;
mod nginx;
mod python;
