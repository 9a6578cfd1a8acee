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

/// Whether a standard option takes an argument.
#[derive(Clone, Copy, PartialEq)]
enum TopArg {
    No,
    Required,
    /// Only as `--name=value`.
    Optional,
}

/// The standard options' long names, in qemu-img's order (its `help`,
/// `version`, `trace`) and then qimg's own.
const TOP_LONG: &[(&str, TopArg)] = &[
    ("help", TopArg::No),
    ("version", TopArg::No),
    ("trace", TopArg::Required),
    ("plugins", TopArg::Required),
    ("confine", TopArg::No),
    ("conformance", TopArg::Required),
    ("list-drivers", TopArg::Optional),
];

/// The standard option `name` names, exactly or as the one it abbreviates;
/// `None` if none. An ambiguous abbreviation is getopt's message, with `{}`
/// for the argument as given.
fn top_long(name: &str) -> Result<Option<(&'static str, TopArg)>, String> {
    if let Some(&exact) = TOP_LONG.iter().find(|(long, _)| *long == name) {
        return Ok(Some(exact));
    }
    let candidates: Vec<&(&str, TopArg)> = TOP_LONG
        .iter()
        .filter(|(long, _)| long.starts_with(name))
        .collect();
    match candidates[..] {
        [] => Ok(None),
        [&one] => Ok(Some(one)),
        _ => Err(format!(
            "option '--{{}}' is ambiguous; possibilities: {}",
            candidates
                .iter()
                .map(|(long, _)| format!("'--{long}'"))
                .collect::<Vec<_>>()
                .join(" ")
        )),
    }
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
        if arg == "--" {
            break;
        }
        // getopt_long's rules: long names may be abbreviated, short
        // letters bundled (`-Vh`), and an option acts when it is read.
        let mut found = Vec::new();
        if let Some(body) = arg.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let opt = top_long(name).map_err(|m| getopt_err(m.replace("{}", body)))?;
            let Some((long, takes)) = opt else {
                return Err(getopt_err(format!("unrecognized option '{arg}'")));
            };
            let value = match (takes, inline) {
                (TopArg::Required, None) => {
                    let Some(next) = args.get(i) else {
                        return Err(getopt_err(format!(
                            "option '--{long}' requires an argument"
                        )));
                    };
                    i += 1;
                    Some(next.clone())
                }
                (TopArg::No, Some(_)) => {
                    return Err(getopt_err(format!(
                        "option '--{long}' doesn't allow an argument"
                    )))
                }
                (_, value) => value,
            };
            found.push((long, value));
        } else {
            let letters: Vec<char> = arg[1..].chars().collect();
            for (j, &c) in letters.iter().enumerate() {
                let long = match c {
                    'h' => "help",
                    'V' => "version",
                    'T' => "trace",
                    _ => return Err(getopt_err(format!("invalid option -- '{c}'"))),
                };
                if c == 'T' {
                    let value = if j + 1 < letters.len() {
                        letters[j + 1..].iter().collect()
                    } else if let Some(next) = args.get(i) {
                        i += 1;
                        next.clone()
                    } else {
                        return Err(getopt_err("option requires an argument -- 'T'".into()));
                    };
                    found.push((long, Some(value)));
                    break;
                }
                found.push((long, None));
            }
        }
        for (long, value) in found {
            match long {
                "help" => {
                    // The help lists the drivers of the manifest a later
                    // `--plugins` names, so look ahead for it.
                    settle_plugins(plugins.take(), &args[i..]);
                    out!("{}", help_text());
                    return Ok(0);
                }
                "conformance" => {
                    settle_plugins(plugins.take(), &args[i..]);
                    return crate::plugins::conformance::run(&value.unwrap_or_default());
                }
                "list-drivers" => {
                    settle_plugins(plugins.take(), &args[i..]);
                    let json = match value.as_deref() {
                        None => false,
                        Some("json") => true,
                        Some(other) => {
                            return Err(usage(format!("Unknown --list-drivers format '{other}'")))
                        }
                    };
                    return Ok(crate::plugins::listing::print(registry(), json));
                }
                "version" => {
                    out!("{}", version_text());
                    return Ok(0);
                }
                "trace" => crate::trace::check_option(&value.unwrap_or_default())?,
                "plugins" => plugins = Some(PathBuf::from(value.unwrap_or_default())),
                _ => crate::confine::request(),
            }
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
