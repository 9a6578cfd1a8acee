//! `create`: make a new image file.

use super::common::{objects, option_lists, print_help};
use crate::block::image::driver_for;
use crate::block::image::inner_open_message;
use crate::block::spec::relative_to;
use crate::block::{create_image, open_image, options, LockSpec, OpenRequest};
use crate::cli::{
    flag, getopt, long_arg, merge_opts, parse_size, wants_help, with_arg, Opt, SizeError,
};
use crate::error::{fail, CmdError, CmdResult};
use crate::store::CacheMode;
use qimg_driver_api::{caps, schema::CreateRequest, DriverError};

const OPTS: &[Opt] = &[
    flag('h', "help"),
    flag('q', "quiet"),
    with_arg('f', "format"),
    long_arg("object"),
    with_arg('o', "options"),
    with_arg('b', "backing"),
    with_arg('F', "backing-format"),
    flag('u', "backing-unsafe"),
];

const HELP: &str = "Usage:\nCreate and format new image file.  Usage:\n\n  {prog} create [-f FMT] [-o FMT_OPTS] [-b BACKING_FILENAME [-F BACKING_FMT]]\n        [--object OBJDEF] [-u] FILENAME [SIZE[bkKMGTPE]]\n\nArguments:\n  -h, --help\n     print this help and exit\n  -q, --quiet\n     do not print the Formatting line\n  -f, --format FMT\n     format of the new image (default raw)\n  -o, --options FMT_OPTS\n     format options ('-o help' lists them)\n  -b, --backing BACKING_FILENAME\n     make the new image an overlay of BACKING_FILENAME\n  -F, --backing-format BACKING_FMT\n     format of BACKING_FILENAME\n  -u, --backing-unsafe\n     do not open BACKING_FILENAME\n  --object OBJDEF\n     a secret (secret,id=ID,data=...|file=...)\n  FILENAME\n     the image to create (an existing file is overwritten)\n  SIZE\n     size with an optional suffix (powers of 1024); taken from\n     BACKING_FILENAME when omitted\n\n";

inventory::submit! { super::Command { name: "create", summary: "Create and format new image file", run } }

/// qemu's message for a positional size that does not parse.
pub fn image_size_error(text: &str, e: SizeError) -> CmdError {
    match e {
        SizeError::Invalid if !text.trim_start().starts_with('-') => {
            fail(format!("Invalid image size specified: '{text}'."))
        }
        _ => fail("Invalid image size specified. Must be between 0 and 9223372036854775807."),
    }
}

fn run(args: &[String]) -> CmdResult {
    let p = getopt("create", args, OPTS)?;
    if p.has("help") {
        return Ok(print_help(HELP));
    }
    objects(&p)?;
    let format = p.last("format").unwrap_or("raw");
    let lists = option_lists(&p, "options")?;
    let filename = p.operands.first().map(String::as_str);
    if wants_help(&lists) {
        let driver =
            driver_for(format).map_err(|_| fail(format!("Unknown file format '{format}'")))?;
        if !driver.can(caps::CREATE) {
            return Err(fail(no_creation(&driver.name)));
        }
        out!("{}", options::help_text(&driver, filename.is_some()));
        return Ok(0);
    }
    let Some(filename) = filename else {
        return Err(CmdError::usage("create", "Expecting image file name"));
    };
    if p.operands.len() > 2 {
        return Err(CmdError::usage(
            "create",
            "Unexpected argument: ".to_string() + &p.operands[2],
        ));
    }
    let size = match p.operands.get(1) {
        Some(text) => Some(parse_size(text, 1).map_err(|e| image_size_error(text, e))?),
        None => None,
    };
    let prefixed = |m: String| fail(format!("{filename}: {m}"));
    let driver =
        driver_for(format).map_err(|_| prefixed(format!("Unknown file format '{format}'")))?;
    crate::block::spec::creatable(filename).map_err(prefixed)?;
    // qemu-img refuses a read-only format before it looks at any option.
    if !driver.can(caps::CREATE) {
        return Err(prefixed(no_creation(&driver.name)));
    }
    let given = merge_opts(&lists).map_err(prefixed)?;
    let mut values =
        options::validate(&options::schema(&driver, true), &given).map_err(prefixed)?;
    if let Some(backing) = p.last("backing") {
        values.insert("backing_file".into(), backing.to_string());
    }
    if let Some(fmt) = p.last("backing-format") {
        values.insert("backing_fmt".into(), fmt.to_string());
    }
    let backing = values.get("backing_file").cloned();
    if !driver.can(caps::BACKING) {
        let named = if backing.is_some() {
            Some("Backing file")
        } else {
            values
                .contains_key("backing_fmt")
                .then_some("Backing file format")
        };
        if let Some(what) = named {
            return Err(prefixed(format!(
                "{what} not supported for file format '{}'",
                driver.name
            )));
        }
    }
    let given_size = match (size, values.get("size")) {
        (Some(_), Some(_)) => {
            return Err(prefixed(
                "The image size must be specified only once".into(),
            ))
        }
        (Some(s), None) => Some(s),
        (None, Some(s)) => s.parse().ok(),
        (None, None) => None,
    };
    let backing_size = match &backing {
        Some(name) if name.is_empty() => {
            return Err(prefixed(
                "Expected backing file name, got empty string".into(),
            ))
        }
        // The same name is refused even with -u (an image that is its own
        // backing file opens nowhere).
        Some(name) if name.as_str() == filename => {
            return Err(prefixed(SAME_NAME.into()));
        }
        Some(name) if !p.has("backing-unsafe") => Some(
            check_backing(
                filename,
                name,
                values.get("backing_fmt").map(String::as_str),
            )
            .map_err(prefixed)?,
        ),
        // Even unchecked, a backing file needs its format named.
        Some(_) if !values.contains_key("backing_fmt") => {
            return Err(prefixed(
                "Backing file specified without backing format".into(),
            ))
        }
        _ => None,
    };
    let Some(size) = given_size.or(backing_size) else {
        return Err(prefixed("Image creation needs a size parameter".into()));
    };
    values.insert("size".into(), size.to_string());
    if let Some(refused) = crate::block::spec::creation_refused(filename) {
        return Err(prefixed(refused));
    }
    if !p.has("quiet") {
        outln!(
            "{}",
            options::formatting_line(filename, &driver, &values, &given)
        );
    }
    values.remove("size");
    options::strip_file_prefix(&mut values);
    let request = CreateRequest {
        size,
        options: values,
    };
    // An interrupted creation (a long preallocation) leaves no file, as a
    // failed one.
    let _registered = (!crate::block::image::target_existed(filename))
        .then(|| crate::interrupt::discard_on_signal(filename));
    create_image(&driver, filename, &request, CacheMode::Writeback, false)
        .map_err(|e| prefixed(create_message(&driver.name, e)))?;
    Ok(0)
}

/// qemu-img's refusal of an image named as its own backing file.
const SAME_NAME: &str =
    "Error: Trying to create an image with the same filename as the backing file";

/// qemu-img's refusal to create an image of a read-only format.
fn no_creation(format: &str) -> String {
    format!("Format driver '{format}' does not support image creation")
}

/// Opens the backing file a new overlay will name (relative names are relative
/// to the overlay's directory) and returns its size, refusing what qemu-img
/// refuses: an unreadable backing file, a missing format.
fn check_backing(filename: &str, backing: &str, format: Option<&str>) -> Result<u64, String> {
    let resolved = relative_to(filename, backing);
    // As qemu-img: only its size is wanted, so an encrypted one needs no
    // key, and it is opened holding nothing and sharing everything.
    let request = OpenRequest {
        no_backing: true,
        no_io: true,
        lock: Some(LockSpec {
            forced: true,
            ..LockSpec::DESCRIBE
        }),
        ..OpenRequest::read(&resolved, format, false)
    };
    let image = open_image(&request).map_err(|e| {
        format!(
            "{}\nCould not open backing image.",
            inner_open_message(&resolved, &e.message)
        )
    })?;
    if format.is_none() {
        return Err(format!(
            "Backing file specified without backing format\nDetected format of {}.",
            image.format()
        ));
    }
    Ok(image.size())
}

/// qemu-img's wording for a failed creation.
pub fn create_message(format: &str, e: DriverError) -> String {
    if e.errno == libc::EFBIG {
        format!("The image size is too large for file format '{format}'")
    } else {
        e.message.to_string()
    }
}
