//! `-T, --trace [[enable=]PATTERN][,events=FILE][,file=FILE]`: qimg has no
//! trace points, but it checks the option as qemu-img does, so a script's
//! typo gets the same warning and a missing events file the same error.

use crate::cli::program;
use crate::error::{fail, CmdError};

/// True if `name` is a pattern (QEMU's `*` and `?` wildcards) rather than
/// one event's name.
fn is_pattern(name: &str) -> bool {
    name.contains(['*', '?'])
}

/// The warning for one event name or pattern (`-name` disables), if any:
/// no event has a plain name, since qimg defines none; patterns may match
/// nothing silently.
fn check_event(name: &str) -> Option<String> {
    let name = name.strip_prefix('-').unwrap_or(name);
    (!name.is_empty() && !is_pattern(name))
        .then(|| format!("warning: trace event '{name}' does not exist"))
}

/// Checks one `-T` value, printing qemu-img's warnings; fails as qemu-img
/// does on an unknown key or an unreadable events file.
pub fn check_option(value: &str) -> Result<(), CmdError> {
    for (i, item) in value.split(',').enumerate() {
        let (key, val) = match item.split_once('=') {
            Some((k, v)) => (k, v),
            None if i == 0 => ("enable", item),
            None => (item, ""),
        };
        match key {
            "enable" => {
                if let Some(warning) = check_event(val) {
                    errln!("{}: {warning}", program());
                }
            }
            "events" => check_events_file(val)?,
            "file" => {}
            _ => return Err(fail(format!("Invalid parameter '{key}'"))),
        }
    }
    Ok(())
}

/// Reads an events file: one name or pattern per line, `#` comments.
fn check_events_file(path: &str) -> Result<(), CmdError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        errln!(
            "{}:{path}: {}",
            program(),
            qimg_driver_api::error::io_message(&e)
        );
        CmdError::Exit(1)
    })?;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(warning) = check_event(line) {
            errln!("{}:{path}:{}: {warning}", program(), number + 1);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_warn_and_patterns_do_not() {
        assert_eq!(
            check_event("qcow2_writev").as_deref(),
            Some("warning: trace event 'qcow2_writev' does not exist")
        );
        assert_eq!(
            check_event("-gone").as_deref(),
            Some("warning: trace event 'gone' does not exist")
        );
        assert_eq!(check_event("qcow2*"), None);
        assert_eq!(check_event("a?c"), None);
    }
}
