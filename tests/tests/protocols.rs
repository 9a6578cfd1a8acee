//! Protocol nodes as qemu-img opens them: `driver=file` and the null device
//! (`null-co://`, `driver=null-co`) as images by themselves or under a
//! format, and raw's `offset=`/`size=` window into its file. Every answer is
//! compared with the real qemu-img's.

use qimg_tests::Fixture;

#[test]
fn protocol_nodes_open_and_describe_themselves_as_in_qemu_img() {
    let fx = Fixture::with_images("protocol_nodes");
    fx.oracle(&["create", "-q", "-f", "qcow2", "top.qcow2", "4M"]);
    let cases: &[&[&str]] = &[
        // The file protocol as the image.
        &["info", "--image-opts", "driver=file,filename=mid.raw"],
        &[
            "info",
            "--output=json",
            "--image-opts",
            "driver=file,filename=mid.raw,locking=off",
        ],
        &["info", "--output=json", "-f", "file", "mid.raw"],
        &["map", "--output=json", "-f", "file", "mid.raw"],
        &["check", "-f", "file", "mid.raw"],
        &["compare", "-f", "file", "-F", "raw", "mid.raw", "mid2.raw"],
        &[
            "info",
            "--image-opts",
            "driver=file,filename=mid.raw,bogus=1",
        ],
        // The null device, under raw and by itself.
        &["info", "null-co://"],
        &["info", "--output=json", "null-co://"],
        &["info", "null-co://x"],
        &["info", "-f", "null-co", "mid.raw"],
        &[
            "info",
            "--output=json",
            "--image-opts",
            "driver=null-co,size=1G",
        ],
        &[
            "info",
            "--image-opts",
            "driver=null-co,size=1000,read-zeroes=on,latency-ns=5",
        ],
        &["info", "--image-opts", "driver=null-co"],
        &["info", "--image-opts", "driver=null-co,filename=null-co://"],
        &[
            "info",
            "--output=json",
            "--image-opts",
            "driver=raw,file.driver=null-co,file.size=4M",
        ],
        &["info", "--image-opts", "file.driver=null-co,file.size=8M"],
        &["info", "--image-opts", "driver=raw,file.driver=null-co"],
        &[
            "info",
            "--image-opts",
            "driver=raw,file.driver=null-co,file.bogus=1",
        ],
        &[
            "info",
            "json:{\"driver\":\"raw\",\"file\":{\"driver\":\"null-co\"}}",
        ],
        &[
            "info",
            "json:{'file':{'driver':'null-co','size':'4M','read-zeroes':true}}",
        ],
        &["info", "json:{\"driver\":\"null-co\",\"size\":4096}"],
        &["info", "--image-opts", "driver=qcow2,file.driver=null-co"],
        &[
            "info",
            "--image-opts",
            "driver=raw,file.driver=nosuch,file.filename=mid.raw",
        ],
        // `file=NAME` names a node of a running QEMU.
        &["info", "json:{\"file\":\"mid.raw\"}"],
        &["info", "--image-opts", "mid.raw,driver=raw"],
        &[
            "info",
            "--image-opts",
            "driver=raw,file.filename=mid.raw,file=x",
        ],
        // What the null device's blocks are, with and without read-zeroes.
        &["map", "--output=json", "null-co://"],
        &["map", "null-co://"],
        &[
            "map",
            "--output=json",
            "--image-opts",
            "driver=null-co,size=1G,read-zeroes=on",
        ],
        &["compare", "-f", "raw", "null-co://", "mid.raw"],
        &["compare", "-F", "raw", "sparse.raw", "null-co://"],
        &["check", "--image-opts", "driver=null-co"],
        &[
            "measure",
            "-O",
            "qcow2",
            "--image-opts",
            "driver=null-co,size=4M",
        ],
        &["snapshot", "-l", "--image-opts", "driver=null-co"],
        &["resize", "-f", "null-co", "null-co://", "2G"],
        // -F with --image-opts is refused when the second image opens.
        &[
            "compare",
            "-F",
            "raw",
            "--image-opts",
            "driver=raw,file.filename=mid.raw",
            "driver=raw,file.filename=mid2.raw",
        ],
        &[
            "convert",
            "-n",
            "mid.raw",
            "--target-image-opts",
            "driver=raw,file.driver=null-co,file.size=4M",
        ],
    ];
    for args in cases {
        fx.same(args);
    }
    // A format driver as another format's file: qemu-img stacks them;
    // qimg says it does not (it said the library "provides no driver").
    let out = fx.qimg(&[
        "info",
        "--image-opts",
        "driver=raw,file.driver=raw,file.file.filename=mid.raw",
    ]);
    assert_eq!(out.status, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("'raw' is a format driver: qimg cannot open one format over another"),
        "{}",
        out.stderr
    );
    // A convert from the null device writes nothing; a file target takes
    // the data.
    fx.same_effect(&["convert", "-O", "raw", "null-co://", "{}"], "n.raw");
    fx.same_effect(
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            "mid.raw",
            "--target-image-opts",
            "driver=file,filename={}",
        ],
        "sparse.raw",
    );
    fx.same_effect(
        &[
            "dd",
            "-f",
            "null-co",
            "if=null-co://",
            "of={}",
            "bs=1M",
            "count=2",
        ],
        "d.raw",
    );
}

#[test]
fn raw_offset_and_size_make_a_window_into_the_file_as_in_qemu_img() {
    let fx = Fixture::with_images("raw_window");
    let opts = |o: &str| format!("driver=raw,{o},file.filename=mid.raw");
    let cases: Vec<Vec<String>> = [
        "offset=1M,size=2M",
        "offset=1000",
        "size=3M",
        "offset=3M,size=2M",
        "offset=5M",
        "size=1000",
        "offset=xyz",
        "offset=-1",
    ]
    .iter()
    .flat_map(|o| {
        [
            vec!["info".to_string(), "--image-opts".into(), opts(o)],
            vec![
                "info".into(),
                "--output=json".into(),
                "--image-opts".into(),
                opts(o),
            ],
        ]
    })
    .chain(
        ["offset=1M,size=2M", "offset=1032192,size=2M"]
            .iter()
            .flat_map(|o| {
                [
                    vec!["map".to_string(), "--image-opts".into(), opts(o)],
                    vec![
                        "map".into(),
                        "--output=json".into(),
                        "--image-opts".into(),
                        opts(o),
                    ],
                ]
            }),
    )
    .collect();
    for args in &cases {
        fx.same(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    // The window's bytes, and only those, are the image.
    fx.same_effect(
        &[
            "convert",
            "-O",
            "raw",
            "--image-opts",
            "driver=raw,offset=1032192,size=1M,file.filename=mid.raw",
            "{}",
        ],
        "w.raw",
    );
    fx.same(&[
        "compare",
        "--image-opts",
        "driver=raw,offset=1M,size=64K,file.filename=mid.raw",
        "driver=raw,offset=1M,size=64K,file.filename=mid2.raw",
    ]);
    fx.same(&[
        "compare",
        "--image-opts",
        "driver=raw,offset=1M,size=1M,file.filename=mid.raw",
        "driver=raw,size=1M,file.filename=mid2.raw",
    ]);
    // Writes land at the window's offset; resize moves the file's end by
    // it; a fixed size cannot be resized.
    fx.same_effect(
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            "full.raw",
            "--target-image-opts",
            "driver=raw,offset=2M,size=1M,file.filename={}",
        ],
        "mid.raw",
    );
    fx.same_effect(
        &[
            "resize",
            "--image-opts",
            "driver=raw,offset=1M,file.filename={}",
            "8M",
        ],
        "mid.raw",
    );
    fx.same_effect(
        &[
            "resize",
            "--image-opts",
            "driver=raw,size=2M,file.filename={}",
            "8M",
        ],
        "mid.raw",
    );
}
