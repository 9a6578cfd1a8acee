//! qemu-img's command-line conventions: GNU getopt_long parsing (options mixed
//! with operands, clustered short options, unambiguous long-option prefixes) with
//! getopt's exact messages, size suffixes, and `-o key=value,...` lists.
//!
//! qemu-img's scripts depend on getopt's behaviour and wording, which a
//! declarative parser such as clap does not reproduce (it rejects operands
//! before options in places, words errors differently and cannot abbreviate
//! long options the way getopt does), so this small parser implements getopt_long
//! directly.

use crate::error::CmdError;
use std::collections::BTreeMap;
use std::sync::OnceLock;

static PROGRAM: OnceLock<String> = OnceLock::new();

/// Records the program name from `argv[0]` (its base name), which prefixes every
/// message as qemu-img's does.
pub fn set_program_name(argv0: &str) {
    let base = argv0.rsplit('/').next().unwrap_or(argv0);
    let _ = PROGRAM.set(if base.is_empty() {
        "qimg".to_string()
    } else {
        base.to_string()
    });
}

/// The program name for messages.
pub fn program() -> String {
    PROGRAM.get().cloned().unwrap_or_else(|| "qimg".to_string())
}

/// One option a command accepts.
#[derive(Clone, Copy, Debug)]
pub struct Opt {
    /// Short letter, if any.
    pub short: Option<char>,
    /// Long name, if any.
    pub long: Option<&'static str>,
    /// Whether it takes an argument.
    pub arg: bool,
    /// The name the command looks the option up by, where it is not the
    /// long name (qemu-img's tables name some options differently from
    /// their help, or give them no long name at all).
    pub key: Option<&'static str>,
}

impl Opt {
    /// The same option, looked up by `key`.
    pub const fn keyed(self, key: &'static str) -> Opt {
        Opt {
            key: Some(key),
            ..self
        }
    }
}

/// Shorthand constructors for [`Opt`].
pub const fn flag(short: char, long: &'static str) -> Opt {
    Opt {
        short: Some(short),
        long: if long.is_empty() { None } else { Some(long) },
        arg: false,
        key: None,
    }
}
/// A short-and-long option with an argument (`long` may be empty).
pub const fn with_arg(short: char, long: &'static str) -> Opt {
    Opt {
        short: Some(short),
        long: if long.is_empty() { None } else { Some(long) },
        arg: true,
        key: None,
    }
}
/// A long-only flag.
pub const fn long_flag(long: &'static str) -> Opt {
    Opt {
        short: None,
        long: Some(long),
        arg: false,
        key: None,
    }
}
/// A long-only option with an argument.
pub const fn long_arg(long: &'static str) -> Opt {
    Opt {
        short: None,
        long: Some(long),
        arg: true,
        key: None,
    }
}

/// Parsed command line: options in order, and operands.
#[derive(Debug, Default)]
pub struct Parsed {
    /// (option key, argument) in command-line order; the key is the long name,
    /// or the short letter as a string for short-only options.
    pub opts: Vec<(String, Option<String>)>,
    /// Operands (non-options), in order.
    pub operands: Vec<String>,
}

impl Parsed {
    /// True if the option appeared.
    pub fn has(&self, key: &str) -> bool {
        self.opts.iter().any(|(k, _)| k == key)
    }
    /// The last argument given to the option.
    pub fn last(&self, key: &str) -> Option<&str> {
        self.opts
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }
    /// Every argument given to the option, in order.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.opts
            .iter()
            .filter(|(k, _)| k == key)
            .filter_map(|(_, v)| v.as_deref())
            .collect()
    }
}

fn key_of(opt: &Opt) -> String {
    match (opt.key.or(opt.long), opt.short) {
        (Some(l), _) => l.to_string(),
        (None, Some(s)) => s.to_string(),
        (None, None) => String::new(),
    }
}

/// The index of the first operand of `args` as [`getopt`] would read them
/// (skipping options and their arguments), if there is one.
pub fn first_operand(args: &[String], opts: &[Opt]) -> Option<usize> {
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            return (i < args.len()).then_some(i);
        }
        if let Some(body) = arg.strip_prefix("--") {
            let name = body.split_once('=').map_or(body, |(n, _)| n);
            let matches: Vec<&Opt> = opts
                .iter()
                .filter(|o| o.long.is_some_and(|l| l.starts_with(name)))
                .collect();
            let opt = opts
                .iter()
                .find(|o| o.long == Some(name))
                .or(match matches[..] {
                    [one] => Some(one),
                    _ => None,
                });
            if opt.is_some_and(|o| o.arg) && !body.contains('=') {
                i += 1;
            }
        } else if arg.len() > 1 && arg.starts_with('-') {
            let letters: Vec<char> = arg[1..].chars().collect();
            let with_arg = letters
                .iter()
                .position(|&c| opts.iter().any(|o| o.short == Some(c) && o.arg));
            if with_arg == Some(letters.len() - 1) {
                i += 1;
            }
        } else {
            return Some(i - 1);
        }
    }
    None
}

/// Parses `args` as getopt_long would for subcommand `command` with `opts`.
/// Errors carry getopt's message, prefixed `prog command:`.
pub fn getopt(command: &str, args: &[String], opts: &[Opt]) -> Result<Parsed, CmdError> {
    let err = |message: String| CmdError::Usage {
        message,
        command: command.to_string(),
        getopt: true,
    };
    let mut parsed = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            parsed.operands.extend(args[i..].iter().cloned());
            break;
        }
        if let Some(body) = arg.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let exact = opts.iter().find(|o| o.long == Some(name));
            let opt = match exact {
                Some(o) => o,
                None => {
                    // As glibc: candidates in table order; two names for
                    // the same option are not an ambiguity.
                    let candidates: Vec<&Opt> = opts
                        .iter()
                        .filter(|o| o.long.is_some_and(|l| l.starts_with(name)))
                        .collect();
                    let Some(&first) = candidates.first() else {
                        return Err(err(format!("unrecognized option '{arg}'")));
                    };
                    let same = |o: &&Opt| key_of(o) == key_of(first) && o.arg == first.arg;
                    if !candidates.iter().all(same) {
                        let list: Vec<String> = candidates
                            .iter()
                            .map(|o| format!("'--{}'", o.long.unwrap_or("")))
                            .collect();
                        return Err(err(format!(
                            "option '--{body}' is ambiguous; possibilities: {}",
                            list.join(" ")
                        )));
                    }
                    first
                }
            };
            let long = opt.long.unwrap_or(name);
            if opt.arg {
                let value = match inline {
                    Some(v) => v,
                    None if i < args.len() => {
                        i += 1;
                        args[i - 1].clone()
                    }
                    None => return Err(err(format!("option '--{long}' requires an argument"))),
                };
                parsed.opts.push((key_of(opt), Some(value)));
            } else {
                if inline.is_some() {
                    return Err(err(format!("option '--{long}' doesn't allow an argument")));
                }
                parsed.opts.push((key_of(opt), None));
            }
            continue;
        }
        if arg.len() > 1 && arg.starts_with('-') {
            let letters: Vec<char> = arg[1..].chars().collect();
            let mut j = 0;
            while j < letters.len() {
                let c = letters[j];
                j += 1;
                let Some(opt) = opts.iter().find(|o| o.short == Some(c)) else {
                    return Err(err(format!("invalid option -- '{c}'")));
                };
                if opt.arg {
                    let value = if j < letters.len() {
                        letters[j..].iter().collect()
                    } else if i < args.len() {
                        i += 1;
                        args[i - 1].clone()
                    } else {
                        return Err(err(format!("option requires an argument -- '{c}'")));
                    };
                    parsed.opts.push((key_of(opt), Some(value)));
                    break;
                }
                parsed.opts.push((key_of(opt), None));
            }
            continue;
        }
        parsed.operands.push(arg.clone());
    }
    Ok(parsed)
}

pub use qimg_driver_api::size::{parse_size, parse_size_u64, SizeError};

/// Parses a QemuOpts-style list `a=b,c=d` (`,,` is a literal comma). A bare
/// name is an error unless `implied` names the key it stands for.
pub fn parse_opts(text: &str, implied: Option<&str>) -> Result<Vec<(String, String)>, String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    let mut parts = Vec::new();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                current.push(',');
            } else {
                parts.push(std::mem::take(&mut current));
            }
        } else {
            current.push(c);
        }
    }
    parts.push(current);
    for (index, part) in parts.into_iter().enumerate() {
        if part.is_empty() {
            continue;
        }
        match part.split_once('=') {
            Some((k, v)) => items.push((k.to_string(), v.to_string())),
            None if index == 0 && implied.is_some() => {
                items.push((implied.unwrap().to_string(), part))
            }
            None => items.push((part, "on".to_string())),
        }
    }
    Ok(items)
}

/// Merges several `-o` arguments into one ordered map (later wins).
pub fn merge_opts(lists: &[&str]) -> Result<BTreeMap<String, String>, String> {
    let mut map = BTreeMap::new();
    for list in lists {
        for (k, v) in parse_opts(list, None)? {
            map.insert(k, v);
        }
    }
    Ok(map)
}

/// True if an `-o` list asks for help (`help` or `?` as an item).
pub fn wants_help(lists: &[&str]) -> bool {
    lists
        .iter()
        .any(|l| l.split(',').any(|p| p == "help" || p == "?"))
}

/// `--output` format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// Text for people.
    Human,
    /// qemu's pretty JSON.
    Json,
}

/// Parses `--output`, with qemu-img's message for a bad value.
pub fn output_format(command: &str, value: Option<&str>) -> Result<OutputFormat, CmdError> {
    match value {
        None | Some("human") => Ok(OutputFormat::Human),
        Some("json") => Ok(OutputFormat::Json),
        Some(other) => Err(CmdError::usage(
            command,
            format!("--output expects 'human' or 'json' not '{other}'"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    const OPTS: &[Opt] = &[
        flag('q', "quiet"),
        with_arg('f', "format"),
        long_arg("output"),
        long_arg("object"),
        flag('p', ""),
    ];

    #[test]
    fn getopt_permutes_and_clusters() {
        let p = getopt(
            "info",
            &s(&["a", "-qpfraw", "b", "--out=json", "--", "-c"]),
            OPTS,
        )
        .unwrap();
        assert_eq!(p.operands, s(&["a", "b", "-c"]));
        assert_eq!(p.last("format"), Some("raw"));
        assert_eq!(p.last("output"), Some("json"));
        assert!(p.has("quiet") && p.has("p"));
    }

    #[test]
    fn getopt_messages() {
        let msg = |args: &[&str]| match getopt("info", &s(args), OPTS) {
            Err(CmdError::Usage { message, .. }) => message,
            other => panic!("{other:?}"),
        };
        assert_eq!(msg(&["--foo"]), "unrecognized option '--foo'");
        assert_eq!(msg(&["-z"]), "invalid option -- 'z'");
        assert_eq!(msg(&["-f"]), "option requires an argument -- 'f'");
        assert_eq!(msg(&["--format"]), "option '--format' requires an argument");
        assert_eq!(
            msg(&["--quiet=1"]),
            "option '--quiet' doesn't allow an argument"
        );
        assert_eq!(
            msg(&["--o"]),
            "option '--o' is ambiguous; possibilities: '--output' '--object'"
        );
    }

    #[test]
    fn opts_lists() {
        assert_eq!(
            parse_opts("a=1,b=x,,y,c", None).unwrap(),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x,y".into()),
                ("c".into(), "on".into())
            ]
        );
        assert_eq!(
            parse_opts("sec0,data=x", Some("id")).unwrap()[0],
            ("id".into(), "sec0".into())
        );
        assert!(wants_help(&["cluster_size=4k,help"]) && wants_help(&["?"]));
    }
}
