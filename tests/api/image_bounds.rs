//! `MAX_IMAGE_BYTES` on the embedded backend: an upload, a download, a
//! rootfs once unpacked and a VM disk's virtual size are bounded, a bomb is
//! refused (413 `image_too_large` on upload, a failed operation on copy)
//! with nothing left on disk, and images under the limit still go in. The
//! apps here allow 64 MiB; the bombs are built at test time with real
//! `tar`, `xz` and `qemu-img`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

use crate::embedded::{
    Host, env, import_busybox, import_vm_image, nothing_stored, serve, serve_simplestreams,
    sha256_hex, upload_image,
};
use crate::helpers::*;

const LIMIT: &str = "67108864";
const UNPACKED: &str = "the image once unpacked is larger than MAX_IMAGE_BYTES allows (64 MiB)";

async fn app(host: &Host, servers: &[&str]) -> TestApp {
    host.app_allowing_with(servers, &[("MAX_IMAGE_BYTES", LIMIT)])
        .await
}

/// `nothing_stored`, and not even an empty directory in the image store
/// (a staging `.incoming-*`, an image's own) or the spool.
async fn nothing_left(host: &Host, app: &TestApp, admin: &str) {
    nothing_stored(host, app, admin).await;
    for dir in ["images", "tmp"] {
        let left: Vec<_> = std::fs::read_dir(host.data().join(dir))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "left in {dir}: {left:?}");
    }
}

fn run(cmd: &mut Command) {
    let ok = cmd.status().unwrap();
    assert!(ok.success(), "{cmd:?}");
}

/// A tar.xz of one file of `len` zero bytes, a real compression bomb (the
/// zeros are in the stream, not a sparse member): about 260 KiB for 1 GiB,
/// made by `tar | xz -0` in a few seconds.
fn zero_bomb(dir: &Path, len: u64) -> PathBuf {
    let zeros = dir.join("zeros");
    // Sparse on disk, read by tar (without -S) as `len` zero bytes.
    std::fs::File::create(&zeros).unwrap().set_len(len).unwrap();
    let out = dir.join("bomb.tar.xz");
    let mut tar = Command::new("tar")
        .arg("-cf")
        .arg("-")
        .arg("-C")
        .arg(dir)
        .arg("zeros")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    run(Command::new("xz")
        .args(["-0", "-T2", "-c"])
        .stdin(tar.stdout.take().unwrap())
        .stdout(std::fs::File::create(&out).unwrap()));
    assert!(tar.wait().unwrap().success());
    std::fs::remove_file(&zeros).unwrap();
    out
}

/// A tar.xz holding `name` as a sparse file of `len` bytes: a few hundred
/// bytes whatever `len` is.
fn sparse_bomb(dir: &Path, name: &str, len: u64) -> PathBuf {
    let sub = dir.join(format!("sparse-{name}"));
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::File::create(sub.join(name))
        .unwrap()
        .set_len(len)
        .unwrap();
    let out = dir.join(format!("{name}.tar.xz"));
    run(Command::new("tar")
        .arg("-cSJf")
        .arg(&out)
        .arg("-C")
        .arg(&sub)
        .arg(name));
    out
}

/// `POST /images/import` of `metadata` and a rootfs part (`rootfs`, or
/// `rootfs.img` for a VM), answered within `?wait=`.
async fn upload(app: &TestApp, admin: &str, metadata: &Path, part: &str, rootfs: &Path) -> Reply {
    let form = Form::new()
        .part("metadata", Part::file(metadata).await.unwrap())
        .part(part.to_owned(), Part::file(rootfs).await.unwrap());
    app.send(
        app.request(
            reqwest::Method::POST,
            "/api/v1/images/import?wait=60",
            Some(admin),
        )
        .multipart(form),
    )
    .await
}

fn assert_too_large(r: &Reply, detail: &str) {
    r.assert_problem(413, "image_too_large");
    assert_eq!(r.body["detail"], detail, "{}", r.text);
}

/// A copy that failed as an operation whose error is `err`.
fn assert_failed(r: &Reply, err: &str) {
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status_code"], 400, "{}", r.text);
    assert_eq!(r.body["err"], err, "{}", r.text);
}

async fn copy(app: &TestApp, admin: &str, server: &str, alias: &str, vm: bool) -> Reply {
    let image_type = if vm { "virtual-machine" } else { "container" };
    app.post(
        "/api/v1/images?wait=60",
        Some(admin),
        json!({"source": {"server": server, "protocol": "simplestreams", "alias": alias,
                          "image_type": image_type}}),
    )
    .await
}

/// A catalogue product `alias` for x86_64 with a metadata tarball and a
/// rootfs (`root.tar.xz`, or `disk-kvm.img` for a VM) at these paths.
fn product(alias: &str, meta: (&str, &[u8]), rootfs: (&str, &[u8]), vm: bool) -> Value {
    let (ftype, combined_key) = if vm {
        ("disk-kvm.img", "combined_disk-kvm-img_sha256")
    } else {
        ("root.tar.xz", "combined_rootxz_sha256")
    };
    json!({"aliases": alias, "arch": "amd64", "os": "test", "release": alias,
    "versions": {"20261130_00:00": {"items": {
        "lxd.tar.xz": {"ftype": "lxd.tar.xz", "path": meta.0,
            "sha256": sha256_hex(&[meta.1]), "size": meta.1.len(),
            combined_key: sha256_hex(&[meta.1, rootfs.1])},
        ftype: {"ftype": ftype, "path": rootfs.0,
            "sha256": sha256_hex(&[rootfs.1]), "size": rootfs.1.len()},
    }}}})
}

#[tokio::test]
async fn a_rootfs_compression_bomb_is_refused_on_upload_and_on_copy() {
    let host = Host::new();
    let scratch = tempfile::tempdir().unwrap();
    let bomb = zero_bomb(scratch.path(), 1 << 30);
    assert!(std::fs::metadata(&bomb).unwrap().len() < 1 << 20);
    let sparse = sparse_bomb(scratch.path(), "huge", 1 << 40);
    let meta_path = PathBuf::from(env("LXGATE_TEST_EMBEDDED_IMAGE_META"));
    let meta = std::fs::read(&meta_path).unwrap();
    let rootfs = std::fs::read(env("LXGATE_TEST_EMBEDDED_IMAGE_ROOTFS")).unwrap();
    let bomb_bytes = std::fs::read(&bomb).unwrap();
    let catalogue = json!({"format": "products:1.0", "datatype": "image-downloads", "products": {
        "bomb:test:amd64:default":
            product("bomb/test", ("meta.tar.xz", &meta), ("bomb.tar.xz", &bomb_bytes), false),
        "busybox:test:amd64:default":
            product("busybox/test", ("meta.tar.xz", &meta), ("rootfs.tar.xz", &rootfs), false),
    }});
    let server = serve_simplestreams(
        "bomb:test:amd64:default",
        catalogue,
        vec![
            ("/meta.tar.xz", meta.clone()),
            ("/bomb.tar.xz", bomb_bytes),
            ("/rootfs.tar.xz", rootfs.clone()),
        ],
    )
    .await;
    let app = app(&host, &[&server]).await;
    let admin = app.admin_token().await;

    // Upload: 413 before anything is kept, and quickly (tar is stopped at
    // the first header past the limit, not after unpacking a gigabyte).
    for b in [&bomb, &sparse] {
        let started = Instant::now();
        let r = upload(&app, &admin, &meta_path, "rootfs", b).await;
        assert_too_large(&r, UNPACKED);
        assert!(started.elapsed() < Duration::from_secs(10), "{b:?}");
    }
    nothing_left(&host, &app, &admin).await;

    // Copy: the operation fails with the same words.
    let r = copy(&app, &admin, &server, "bomb/test", false).await;
    assert_failed(&r, UNPACKED);
    nothing_left(&host, &app, &admin).await;

    // The test bed's busybox, under the limit, goes in both ways.
    let fp = import_busybox(&app, &admin).await;
    let r = app
        .delete(&format!("/api/v1/images/{fp}?wait=30"), Some(&admin))
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let r = copy(&app, &admin, &server, "busybox/test", false).await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    assert_eq!(r.body["metadata"]["fingerprint"], fp.as_str(), "{}", r.text);
}

#[tokio::test]
async fn vm_images_over_the_limit_are_refused() {
    let host = Host::new();
    let scratch = tempfile::tempdir().unwrap();
    let qcow2 = |name: &str, size: &str| {
        let path = scratch.path().join(name);
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&path)
            .arg(size));
        path
    };
    // A terabyte disk is a few hundred KiB of qcow2.
    let huge = qcow2("huge.qcow2", "1T");
    let small = qcow2("small.qcow2", "32M");
    let meta_path = PathBuf::from(env("LXGATE_TEST_VM_META"));
    let meta = std::fs::read(&meta_path).unwrap();
    let huge_bytes = std::fs::read(&huge).unwrap();
    let catalogue = json!({"format": "products:1.0", "datatype": "image-downloads", "products": {
        "huge:vm:amd64:default":
            product("huge/vm", ("meta.tar.xz", &meta), ("huge.qcow2", &huge_bytes), true),
    }});
    let server = serve_simplestreams(
        "huge:vm:amd64:default",
        catalogue,
        vec![("/meta.tar.xz", meta), ("/huge.qcow2", huge_bytes)],
    )
    .await;
    let app = app(&host, &[&server]).await;
    let admin = app.admin_token().await;
    let virtual_size =
        "the VM disk's virtual size (1 TiB) is larger than MAX_IMAGE_BYTES allows (64 MiB)";

    let r = upload(&app, &admin, &meta_path, "rootfs.img", &huge).await;
    assert_too_large(&r, virtual_size);
    // A kernel + initrd tarball is measured like a rootfs.
    let kernel = sparse_bomb(scratch.path(), "vmlinuz", 1 << 30);
    let r = upload(&app, &admin, &meta_path, "rootfs.img", &kernel).await;
    assert_too_large(&r, UNPACKED);
    nothing_left(&host, &app, &admin).await;

    let r = copy(&app, &admin, &server, "huge/vm", true).await;
    assert_failed(&r, virtual_size);
    nothing_left(&host, &app, &admin).await;

    // Under the limit: a 32 MiB disk, and the test bed's kernel + initrd.
    let form = Form::new()
        .part("metadata", Part::file(&meta_path).await.unwrap())
        .part("rootfs.img", Part::file(&small).await.unwrap());
    let fp = upload_image(&app, &admin, form).await;
    let img = app.get(&format!("/api/v1/images/{fp}"), Some(&admin)).await;
    assert_eq!(img.body["type"], "virtual-machine", "{}", img.text);
    import_vm_image(&app, &admin, scratch.path()).await;
}

#[tokio::test]
async fn downloads_and_uploads_stop_at_the_limit() {
    let host = Host::new();
    let meta = std::fs::read(env("LXGATE_TEST_EMBEDDED_IMAGE_META")).unwrap();
    // 80 MiB of rootfs, streamed without a length; the catalogue either
    // says so (refused before the download) or says nothing (refused once
    // 64 MiB have come in).
    const ROOTFS: usize = 80 << 20;
    let rootfs_item = |path: &str, size: usize| json!({"ftype": "root.tar.xz", "path": path, "sha256": "", "size": size});
    let catalogue = json!({"format": "products:1.0", "datatype": "image-downloads", "products": {
        "big:test:amd64:default": {"aliases": "big/test", "arch": "amd64", "versions": {
            "20261130_00:00": {"items": {
                "lxd.tar.xz": {"ftype": "lxd.tar.xz", "path": "meta.tar.xz",
                    "sha256": sha256_hex(&[&meta]), "size": meta.len()},
                "root.tar.xz": rootfs_item("rootfs.tar.xz", ROOTFS)}}}},
        "quiet:test:amd64:default": {"aliases": "quiet/test", "arch": "amd64", "versions": {
            "20261130_00:00": {"items": {
                "lxd.tar.xz": {"ftype": "lxd.tar.xz", "path": "meta.tar.xz",
                    "sha256": sha256_hex(&[&meta]), "size": meta.len()},
                "root.tar.xz": rootfs_item("rootfs.tar.xz", 0)}}}},
    }});
    let index = json!({"format": "index:1.0", "index": {"images": {
        "datatype": "image-downloads", "path": "streams/v1/images.json", "format": "products:1.0",
        "products": ["big:test:amd64:default", "quiet:test:amd64:default"]}}});
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = served.clone();
    let stream = move || {
        let counter = counter.clone();
        let chunks = (0..ROOTFS >> 20).map(move |_| {
            counter.fetch_add(1 << 20, std::sync::atomic::Ordering::Relaxed);
            Ok::<_, std::io::Error>(vec![0u8; 1 << 20])
        });
        axum::body::Body::from_stream(futures::stream::iter(chunks))
    };
    let server = serve(
        axum::Router::new()
            .route(
                "/streams/v1/index.json",
                axum::routing::get(move || async move { axum::Json(index) }),
            )
            .route(
                "/streams/v1/images.json",
                axum::routing::get(move || async move { axum::Json(catalogue) }),
            )
            .route(
                "/meta.tar.xz",
                axum::routing::get(move || async move { meta }),
            )
            .route(
                "/rootfs.tar.xz",
                axum::routing::get(move || async move { stream() }),
            ),
    )
    .await;
    let app = app(&host, &[&server]).await;
    let admin = app.admin_token().await;
    let download = format!(
        "the image's rootfs ({server}rootfs.tar.xz) is larger than MAX_IMAGE_BYTES allows (64 MiB)"
    );

    let r = copy(&app, &admin, &server, "big/test", false).await;
    assert_failed(&r, &download);
    assert_eq!(served.load(std::sync::atomic::Ordering::Relaxed), 0);
    nothing_left(&host, &app, &admin).await;
    let r = copy(&app, &admin, &server, "quiet/test", false).await;
    assert_failed(&r, &download);
    let got = served.load(std::sync::atomic::Ordering::Relaxed);
    assert!(got < ROOTFS, "the whole {got} bytes were read");
    nothing_left(&host, &app, &admin).await;

    // An upload's files are counted as they stream in.
    let scratch = tempfile::tempdir().unwrap();
    let big = scratch.path().join("rootfs.tar");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(ROOTFS as u64)
        .unwrap();
    let meta_path = PathBuf::from(env("LXGATE_TEST_EMBEDDED_IMAGE_META"));
    let r = upload(&app, &admin, &meta_path, "rootfs", &big).await;
    assert_too_large(
        &r,
        "the upload is larger than MAX_IMAGE_BYTES allows (64 MiB)",
    );
    nothing_left(&host, &app, &admin).await;
}

/// A file that is a plain tarball to `tar --file` and a gzip stream to
/// `gzip -d`: its first 512 bytes are a valid ustar header whose name
/// starts with a gzip header, the gzip "extra field" skipping the rest of
/// it, and the member's data is the deflate stream of `inner` (a gzipped
/// tarball made with `gzip -n`, so its own header is 10 bytes).
fn gzip_tar_polyglot(inner_gz: &[u8]) -> Vec<u8> {
    let body = &inner_gz[10..];
    let mut h = [0u8; 512];
    h[..10].copy_from_slice(&[0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 3]);
    h[10..12].copy_from_slice(&500u16.to_le_bytes());
    let mut put = |at: usize, s: &str| h[at..at + s.len()].copy_from_slice(s.as_bytes());
    put(100, "0000644\0");
    put(108, "0000000\0");
    put(116, "0000000\0");
    put(124, &format!("{:011o}\0", body.len()));
    put(136, "00000000000\0");
    put(156, "0");
    put(257, "ustar\0");
    put(263, "00");
    put(148, "        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(body);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}

/// What is measured is what gets unpacked, and measuring is bounded in
/// memory: a rootfs that is a small plain tarball to tar but 100 MiB once
/// gunzipped (as the unpack reads it) is refused, and so is a tarball whose
/// GNU long name is 600 MiB (tar would hold it whole in memory).
#[tokio::test]
async fn tar_tricks_do_not_get_past_the_measurement() {
    let host = Host::new();
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let meta_path = PathBuf::from(env("LXGATE_TEST_EMBEDDED_IMAGE_META"));
    let app = app(&host, &[]).await;
    let admin = app.admin_token().await;

    std::fs::File::create(dir.join("big"))
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    let inner = Command::new("sh")
        .arg("-c")
        .arg("tar -cf - -C \"$0\" big | gzip -1 -n -c")
        .arg(dir)
        .output()
        .unwrap();
    assert!(inner.status.success());
    let polyglot = dir.join("polyglot.tar");
    std::fs::write(&polyglot, gzip_tar_polyglot(&inner.stdout)).unwrap();
    // The trick is real: plain tar sees one small member.
    let plain = Command::new("tar")
        .arg("-tvf")
        .arg(&polyglot)
        .output()
        .unwrap();
    assert!(plain.status.success());
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("104857600"));
    let r = upload(&app, &admin, &meta_path, "rootfs", &polyglot).await;
    assert_too_large(&r, UNPACKED);
    nothing_left(&host, &app, &admin).await;

    // A GNU long-name record of 600 MiB (more than tar may hold under
    // `prlimit`), gzipped to a few MiB: without the limit tar would take
    // it whole into memory, and list it as nothing.
    let long_name = dir.join("long-name.tar.gz");
    let mut header = [0u8; 512];
    header[..13].copy_from_slice(b"././@LongLink");
    let mut put = |at: usize, s: &str| header[at..at + s.len()].copy_from_slice(s.as_bytes());
    put(100, "0000644\0");
    put(108, "0000000\0");
    put(116, "0000000\0");
    put(124, &format!("{:011o}\0", 600u64 << 20));
    put(136, "00000000000\0");
    put(156, "L");
    put(257, "ustar  \0");
    put(148, "        ");
    let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut gz = std::process::Command::new("gzip")
        .args(["-1", "-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&long_name).unwrap())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut w = gz.stdin.take().unwrap();
        w.write_all(&header).unwrap();
        let chunk = vec![b'a'; 1 << 20];
        for _ in 0..600 {
            w.write_all(&chunk).unwrap();
        }
        w.write_all(&[0u8; 1024]).unwrap();
    }
    assert!(gz.wait().unwrap().success());
    let started = Instant::now();
    let r = upload(&app, &admin, &meta_path, "rootfs", &long_name).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(started.elapsed() < Duration::from_secs(30));
    nothing_left(&host, &app, &admin).await;
}
