//! Against python's http.server, which serves no byte ranges.

use crate::common::*;

#[test]
fn no_ranges_is_refused_as_qemu_refuses_it() {
    let Some(python) = Python::start() else {
        return;
    };
    let url = format!("http://127.0.0.1:{}/data.bin", python.port);
    let message = open_error(&url, &[]);
    assert_eq!(
        message,
        "CURL: Error opening file: Server does not support 'range' (byte ranges)."
    );
    if have("qemu-img") {
        let out = std::process::Command::new("qemu-img")
            .args(["info", &url])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        match stderr
            .trim_end()
            .strip_prefix(&format!("qemu-img: Could not open '{url}': "))
        {
            Some(tail) => assert_eq!(tail, message),
            None => eprintln!("skipped: qemu-img without curl support? {stderr}"),
        }
    }
}
