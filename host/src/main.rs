//! `qimg`: qemu-img's command line over format driver plugins.

#[macro_use]
mod output;
mod block;
mod cli;
mod commands;
mod confine;
mod engine;
mod error;
mod interrupt;
mod plugins;
mod store;
mod sync;
mod trace;

use std::process::ExitCode;

fn main() -> ExitCode {
    interrupt::watch();
    let args: Vec<String> = std::env::args().collect();
    cli::set_program_name(args.first().map(String::as_str).unwrap_or("qimg"));
    let code = match commands::dispatch(&args[1..]) {
        Ok(code) => code,
        Err(err) => err.report(),
    };
    ExitCode::from(code as u8)
}
