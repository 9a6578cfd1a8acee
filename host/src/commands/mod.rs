//! One module per qemu-img subcommand, registered with `inventory`. A command
//! parses its options (qemu-img syntax), calls the engine and prints results.

mod amend;
mod bench;
mod bitmap;
mod check;
mod commit;
pub mod common;
mod compare;
mod convert;
mod create;
mod dd;
mod info;
mod map;
mod measure;
mod rebase;
mod resize;
mod snapshot;

use crate::cli::program;
use crate::error::{fail, CmdError, CmdResult};
use crate::plugins::Registry;
use std::path::PathBuf;
use std::sync::OnceLock;

/// A subcommand.
pub struct Command {
    /// Its name (`info`).
    pub name: &'static str,
    /// One line for `qimg --help`.
    pub summary: &'static str,
    /// Runs it with the arguments after its name; returns the exit status.
    pub run: fn(&[String]) -> CmdResult,
}

inventory::collect!(Command);

static REGISTRY: OnceLock<Registry> = OnceLock::new();
static PLUGINS: OnceLock<Option<PathBuf>> = OnceLock::new();

/// The drivers of this process, found on first use (so `-V` loads nothing).
pub fn registry() -> &'static Registry {
    REGISTRY.get_or_init(|| {
        let explicit = PLUGINS.get().cloned().flatten();
        Registry::new(explicit.as_deref()).unwrap_or_else(|message| {
            errln!("{}: {message}", program());
            std::process::exit(1)
        })
    })
}

/// The version banner of `-V` and `--help`.
fn version_text() -> String {
    format!(
        "{} version {} (qimg; command line of qemu-img 10.0.2)\nCopyright (c) 2026 the qimg developers\n",
        program(),
        env!("CARGO_PKG_VERSION")
    )
}

fn commands() -> Vec<&'static Command> {
    let mut list: Vec<&Command> = inventory::iter::<Command>.into_iter().collect();
    list.sort_by_key(|c| c.name);
    list
}

fn help_text() -> String {
    let mut text = version_text();
    text.push_str(&format!(
        "QEMU disk image utility, as qimg.  Usage:\n\n  {p} [standard options] COMMAND [--help | command options]\n\n\
Standard options:\n  -h, --help\n     display this help and exit\n  -V, --version\n     display version info and exit\n  \
-T,--trace TRACE\n     accepted for compatibility; qimg has no trace points\n  --plugins FILE\n     read the driver manifest from FILE\n  \
--list-drivers[=json]\n     list every driver: library, versions, capabilities, status\n  \
--conformance FORMAT\n     run the driver conformance check on FORMAT's driver\n  \
--confine\n     for untrusted images: refuse images that name other files, and confine\n     the process to the files the command names (Landlock, seccomp)\n\n\
Recognized commands (run {p} COMMAND --help for command-specific help):\n\n",
        p = program()
    ));
    for c in commands() {
        text.push_str(&format!("  {} - {}\n", c.name, c.summary));
    }
    text.push_str("\nSupported image formats:\n\n");
    // Formats and protocols in one list, as qemu-img lists its drivers.
    let mut names: Vec<String> = registry().all().iter().map(|d| d.name.clone()).collect();
    names.extend(registry().all_protocols().iter().map(|p| p.name.clone()));
    names.sort();
    let mut line = String::from(" ");
    for name in names {
        if line.len() + 1 + name.len() > 76 {
            text.push_str(&line);
            text.push('\n');
            line = String::from(" ");
        }
        line.push(' ');
        line.push_str(&name);
    }
    text.push_str(&line);
    text.push('\n');
    text
}

/// Fixes the manifest for an option that acts at once (`--help`,
/// `--list-drivers`, `--conformance`): the `--plugins` seen before it, else
/// one among the standard options still to come (`rest`).
fn settle_plugins(seen: Option<PathBuf>, rest: &[String]) {
    let _ = PLUGINS.set(seen.or_else(|| plugins_option(rest)));
}

/// The manifest named by a `--plugins` among the standard options `args`.
fn plugins_option(args: &[String]) -> Option<PathBuf> {
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "--plugins" {
            return rest.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--plugins=") {
            return Some(PathBuf::from(path));
        }
        if !arg.starts_with('-') || arg == "--" {
            break;
        }
    }
    None
}

/// Parses the standard options before the command name and runs the command.
pub fn dispatch(args: &[String]) -> CmdResult {
    let mut i = 0;
    let usage = |message: String| CmdError::Usage {
        message,
        command: String::new(),
        getopt: false,
    };
    let getopt_err = |message: String| CmdError::Usage {
        message,
        command: String::new(),
        getopt: true,
    };
    let mut plugins = None;
    while i < args.len() && args[i].starts_with('-') && args[i] != "-" {
        let arg = args[i].as_str();
        i += 1;
        match arg {
            "-h" | "--help" => {
                // The help lists the drivers of the manifest a later
                // `--plugins` names, so look ahead for it.
                settle_plugins(plugins.take(), &args[i..]);
                out!("{}", help_text());
                return Ok(0);
            }
            "--conformance" => {
                let Some(format) = args.get(i) else {
                    return Err(getopt_err(
                        "option '--conformance' requires an argument".to_string(),
                    ));
                };
                settle_plugins(plugins.take(), &args[i + 1..]);
                return crate::plugins::conformance::run(format);
            }
            "--list-drivers" | "--list-drivers=json" => {
                settle_plugins(plugins.take(), &args[i..]);
                let json = arg.ends_with("=json");
                return Ok(crate::plugins::listing::print(registry(), json));
            }
            "-V" | "--version" => {
                out!("{}", version_text());
                return Ok(0);
            }
            "-T" | "--trace" => {
                if i >= args.len() {
                    return Err(getopt_err(if arg == "-T" {
                        "option requires an argument -- 'T'".to_string()
                    } else {
                        "option '--trace' requires an argument".to_string()
                    }));
                }
                crate::trace::check_option(&args[i])?;
                i += 1;
            }
            "--plugins" => {
                let Some(path) = args.get(i) else {
                    return Err(getopt_err(
                        "option '--plugins' requires an argument".to_string(),
                    ));
                };
                plugins = Some(PathBuf::from(path));
                i += 1;
            }
            "--confine" => crate::confine::request(),
            "--" => break,
            _ if arg.starts_with("--trace=") => {
                crate::trace::check_option(&arg["--trace=".len()..])?
            }
            _ if arg.starts_with("--plugins=") => {
                plugins = Some(PathBuf::from(&arg["--plugins=".len()..]))
            }
            _ if arg.starts_with("-T") => crate::trace::check_option(&arg[2..])?,
            _ if arg.starts_with("--") => {
                return Err(getopt_err(format!("unrecognized option '{arg}'")))
            }
            _ => return Err(getopt_err(format!("invalid option -- '{}'", &arg[1..2]))),
        }
    }
    let _ = PLUGINS.set(plugins);
    let Some(name) = args.get(i) else {
        return Err(usage("Not enough arguments".to_string()));
    };
    if crate::confine::requested() && !crate::confine::COMMANDS.contains(&name.as_str()) {
        return Err(fail(format!(
            "--confine is not supported by '{name}' (only by {})",
            crate::confine::COMMANDS.join(", ")
        )));
    }
    match commands().into_iter().find(|c| c.name == name) {
        Some(command) => (command.run)(&args[i + 1..]),
        None => Err(usage(format!("Command not found: {name}"))),
    }
}
