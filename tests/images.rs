//! The OCI images `make images` builds (target/images/, no container
//! engine): their configuration, and the server run from nothing but the
//! image's own files as uid 65532, answering /healthz over TLS.
//!
//! Needs `make images` first (scripts/test.sh runs it); a missing image
//! fails with that instruction instead of skipping.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use securechat_crds::default_model;
use securechat_test_support::cluster;
use serde_json::Value;

const UID: &str = "65532";
const MODEL: &str = default_model::EMBEDDED_PATH;

fn images_dir() -> PathBuf {
    cluster::repo_root().join("target/images")
}

/// An image in OCI layout: its config and its layer blobs, base first.
struct Image {
    config: Value,
    layers: Vec<(PathBuf, String)>,
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}): run `make images` first",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').expect("digest is alg:hex");
    layout.join("blobs").join(alg).join(hex)
}

fn image(name: &str) -> Image {
    let layout = images_dir().join(name);
    let index = read_json(&layout.join("index.json"));
    let manifests = index["manifests"].as_array().expect("index.manifests");
    assert_eq!(manifests.len(), 1, "one image in {}", layout.display());
    let manifest = read_json(&blob(
        &layout,
        manifests[0]["digest"].as_str().expect("manifest digest"),
    ));
    let config = read_json(&blob(
        &layout,
        manifest["config"]["digest"]
            .as_str()
            .expect("config digest"),
    ));
    let layers = manifest["layers"]
        .as_array()
        .expect("manifest.layers")
        .iter()
        .map(|l| {
            (
                blob(&layout, l["digest"].as_str().expect("layer digest")),
                l["mediaType"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    Image { config, layers }
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn env_value<'a>(config: &'a Value, key: &str) -> Option<&'a str> {
    strings(&config["config"]["Env"])
        .into_iter()
        .find_map(|e| e.strip_prefix(key)?.strip_prefix('='))
}

/// Unpacks every layer, in order, into an empty directory.
fn unpack(image: &Image, dir: &Path) {
    for (layer, media_type) in &image.layers {
        let flags = if media_type.ends_with("+gzip") {
            "-xzf"
        } else {
            "-xf"
        };
        let status = Command::new("tar")
            .arg(flags)
            .arg(layer)
            .arg("-C")
            .arg(dir)
            .status()
            .expect("run tar");
        assert!(status.success(), "unpacking {}", layer.display());
    }
}

#[test]
#[ignore = "needs `make images` (static release builds); run with `make check-all`"]
fn image_configs_run_as_nonroot_with_the_right_entrypoint() {
    let version = env!("CARGO_PKG_VERSION");
    for (name, entrypoint, cmd0) in [
        (
            "securechat-server",
            "/usr/local/bin/securechat-server",
            "serve",
        ),
        (
            "securechat-operator",
            "/usr/local/bin/securechat-operator",
            "run",
        ),
    ] {
        let image = image(name);
        let c = &image.config;
        assert_eq!(c["os"], "linux", "{name}");
        assert_eq!(c["architecture"], "amd64", "{name}");
        assert_eq!(
            c["config"]["User"].as_str(),
            Some(&*format!("{UID}:{UID}")),
            "{name}"
        );
        assert_eq!(
            strings(&c["config"]["Entrypoint"]),
            vec![entrypoint],
            "{name}"
        );
        assert_eq!(strings(&c["config"]["Cmd"]).first(), Some(&cmd0), "{name}");
        let labels = &c["config"]["Labels"];
        assert_eq!(
            labels["org.opencontainers.image.version"].as_str(),
            Some(version),
            "{name}"
        );
        assert_eq!(
            labels["org.opencontainers.image.title"].as_str(),
            Some(name),
            "{name}"
        );
        assert!(
            labels["org.opencontainers.image.revision"]
                .as_str()
                .is_some_and(|r| !r.is_empty()),
            "{name}: revision label"
        );
        // Every layer of the manifest is in the config's rootfs, and the
        // image has no base of anyone else's: base, (model,) binary.
        assert_eq!(
            c["rootfs"]["diff_ids"].as_array().map(Vec::len),
            Some(image.layers.len())
        );
    }
    let server = image("securechat-server");
    assert_eq!(env_value(&server.config, "SECURECHAT_MODEL"), Some(MODEL));
    assert_eq!(server.layers.len(), 3, "base, model, binary");
}

#[test]
#[ignore = "needs `make images` (static release builds); run with `make check-all`"]
fn image_files_are_root_owned_and_the_model_is_baked_in() {
    let image = image("securechat-server");
    let root = tempfile_dir("files");
    unpack(&image, &root);
    let binary = root.join("usr/local/bin/securechat-server");
    let model = root.join(MODEL.trim_start_matches('/'));
    for path in [&binary, &model] {
        assert!(path.is_file(), "{} missing from the image", path.display());
    }
    // The model in the image is the verified default model: the same bytes
    // `make model` fetched (that script checks their sha256).
    let cached =
        default_model::cached_path(&std::env::var_os("HOME").map(PathBuf::from).expect("HOME"));
    let same = Command::new("cmp")
        .arg("-s")
        .arg(&model)
        .arg(&cached)
        .status()
        .expect("run cmp");
    assert!(
        same.success(),
        "baked-in model differs from {}",
        cached.display()
    );
    // The non-root user cannot replace the binary or the model.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for path in [&binary, &model] {
        let meta = std::fs::metadata(path).expect("stat");
        assert_eq!(meta.uid(), 0, "{} owned by root", path.display());
        assert_eq!(
            meta.permissions().mode() & 0o022,
            0,
            "{} writable only by its owner",
            path.display()
        );
    }
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).expect("etc/passwd");
    assert!(
        passwd.contains(&format!("nonroot:x:{UID}:{UID}:")),
        "{passwd}"
    );
    // Nothing else to run in there: no shell, no package manager.
    for absent in ["bin/sh", "usr/bin", "sbin"] {
        assert!(!root.join(absent).exists(), "/{absent} in the image");
    }
    let _ = std::fs::remove_dir_all(&root);
}

fn tempfile_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "securechat-image-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Kills the server when the test ends, also on panic.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn host_tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is required by this test and is not on PATH"))
}

fn effective_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.parse().ok())
        .expect("Uid line")
}

#[test]
#[ignore = "needs `make images` (static release builds); run with `make check-all`"]
fn server_from_the_image_runs_as_nonroot_in_an_empty_root_and_answers_healthz() {
    let image = image("securechat-server");
    let root = tempfile_dir("root");
    unpack(&image, &root);

    let (api, web) = (free_port(), free_port());
    let entrypoint = strings(&image.config["config"]["Entrypoint"]);
    let model = env_value(&image.config, "SECURECHAT_MODEL").expect("SECURECHAT_MODEL");
    // `serve --dev` alone is a local trial: the image's environment names
    // its data directory.
    let server_args = [
        "serve",
        "--dev",
        "--api-addr",
        &format!("127.0.0.1:{api}"),
        "--web-addr",
        &format!("127.0.0.1:{web}"),
        "--model",
        model,
    ];
    let as_root = effective_uid() == 0;
    // The log stays outside the root, which holds only the image's files.
    let log = root.with_extension("log");
    let child = in_image(&image, &root)
        .arg(entrypoint[0])
        .args(server_args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start the server in the image root");
    let mut server = Running(child);

    let ca = root.join("tmp/securechat/tls/ca.crt");
    let url = format!("https://localhost:{api}/healthz");
    let deadline = Instant::now() + Duration::from_secs(120);
    let body = loop {
        if let Some(status) = server.0.try_wait().expect("poll server") {
            panic!(
                "server exited with {status}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if ca.exists() {
            let out = Command::new("curl")
                .args(["-fsS", "--max-time", "5", "--cacert"])
                .arg(&ca)
                .arg(&url)
                .output()
                .expect("run curl");
            if out.status.success() {
                break String::from_utf8_lossy(&out.stdout).into_owned();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no TLS /healthz answer within 120s:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(body.contains("\"ok\""), "healthz said {body}");

    // Who it runs as, seen from outside.
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.0.id()))
        .expect("server's /proc status");
    let uids = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("Uid line")
        .split_whitespace()
        .collect::<Vec<_>>();
    if as_root {
        assert_eq!(uids, vec![UID; 4], "real, effective, saved, fs uid");
    } else {
        let map =
            std::fs::read_to_string(format!("/proc/{}/uid_map", server.0.id())).expect("uid_map");
        assert!(map.split_whitespace().next() == Some(UID), "uid_map: {map}");
    }
    // It wrote its dev material as that user, inside the image root.
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(&ca).expect("stat ca").uid();
    if as_root {
        assert_eq!(owner.to_string(), UID);
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_file(&log);
}

/// A command run inside an unpacked image as uid 65532 with only the
/// image's environment. As root: chroot into the root and drop to 65532, as
/// a container runtime would. Otherwise: a user namespace that maps the
/// caller to 65532 and chroots (unshare --root) before the exec.
fn in_image(image: &Image, root: &Path) -> Command {
    // The child gets only the image's environment (its PATH names the
    // image's directories), so the launcher is looked up on the host's PATH.
    let mut command = if effective_uid() == 0 {
        let mut c = Command::new(host_tool("chroot"));
        c.arg(format!("--userspec={UID}:{UID}")).arg(root);
        c
    } else {
        let mut c = Command::new(host_tool("unshare"));
        c.args([
            "--user",
            &format!("--map-user={UID}"),
            &format!("--map-group={UID}"),
        ])
        .arg(format!("--root={}", root.display()));
        c
    };
    // Only what the image configures: no host environment leaks in.
    command.env_clear().envs(
        strings(&image.config["config"]["Env"])
            .into_iter()
            .filter_map(|e| e.split_once('=')),
    );
    command
}

/// Runs the image's entrypoint with `args` inside its unpacked root; its
/// exit status and what it wrote to stderr.
fn run_entrypoint(image: &Image, root: &Path, args: &[&str]) -> (std::process::ExitStatus, String) {
    let entrypoint = strings(&image.config["config"]["Entrypoint"]);
    let out = in_image(image, root)
        .arg(entrypoint[0])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run the entrypoint in the image root");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Started bare, the server image serves the config mounted where the
/// operator mounts it, and with none there says what to pass; asked for a
/// GPU it does not have (the CPU build), it exits saying so, which the
/// operator reads from the termination message (GpuUnavailable).
#[test]
#[ignore = "needs `make images` (static release builds); run with `make check-all`"]
fn a_bare_server_image_says_what_to_pass_and_never_falls_back_from_a_gpu() {
    let image = image("securechat-server");
    let cmd = strings(&image.config["config"]["Cmd"]);
    assert_eq!(
        cmd,
        ["serve", "--config", "/etc/securechat/config/config.yaml"],
        "the default command is not a dev mode"
    );
    let root = tempfile_dir("bare");
    unpack(&image, &root);
    let (status, stderr) = run_entrypoint(&image, &root, &cmd);
    assert!(
        !status.success(),
        "a bare start with no config serves nothing"
    );
    assert!(
        stderr.contains("no config file at /etc/securechat/config/config.yaml")
            && stderr.contains("serve --dev"),
        "{stderr}"
    );
    let (status, stderr) = run_entrypoint(&image, &root, &["serve", "--dev", "--device", "cuda"]);
    assert!(!status.success(), "--device cuda on a build without CUDA");
    assert!(
        stderr.contains(securechat_crds::files::names::GPU_UNAVAILABLE_MESSAGE),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

const CUDA_IMAGE: &str = "securechat-server-cuda";
const CUDA_LIB_DIR: &str = "/usr/local/cuda/lib64";

/// The CUDA server image: the CPU image's user, entrypoint, command and
/// model, plus the CUDA libraries on LD_LIBRARY_PATH and nothing of the
/// driver; NVIDIA_VISIBLE_DEVICES is the device plugin's to set.
#[test]
#[ignore = "needs `make images` (static release builds); run with `make check-all`"]
fn cuda_image_is_the_server_image_plus_the_cuda_libraries_without_the_driver() {
    let cpu = image("securechat-server");
    let cuda = image(CUDA_IMAGE);
    let c = &cuda.config;
    assert_eq!(c["architecture"], "amd64");
    assert_eq!(c["config"]["User"].as_str(), Some(&*format!("{UID}:{UID}")));
    for key in ["Entrypoint", "Cmd", "ExposedPorts"] {
        assert_eq!(c["config"][key], cpu.config["config"][key], "{key}");
    }
    assert_eq!(env_value(c, "SECURECHAT_MODEL"), Some(MODEL));
    assert_eq!(env_value(c, "LD_LIBRARY_PATH"), Some(CUDA_LIB_DIR));
    assert_eq!(
        env_value(c, "NVIDIA_DRIVER_CAPABILITIES"),
        Some("compute,utility")
    );
    assert_eq!(env_value(c, "NVIDIA_VISIBLE_DEVICES"), None);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        c["config"]["Labels"]["org.opencontainers.image.version"].as_str(),
        Some(version)
    );
    assert_eq!(cuda.layers.len(), 4, "base, model, CUDA libraries, binary");

    let root = tempfile_dir("cuda-files");
    unpack(&cuda, &root);
    let binary = root.join("usr/local/bin/securechat-server");
    let model = root.join(MODEL.trim_start_matches('/'));
    let libs = root.join(CUDA_LIB_DIR.trim_start_matches('/'));
    use std::os::unix::fs::MetadataExt;
    for path in [&binary, &model] {
        let meta = std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{} missing from the image: {e}", path.display()));
        assert_eq!(meta.uid(), 0, "{} owned by root", path.display());
        assert_eq!(
            meta.mode() & 0o022,
            0,
            "{} writable by others",
            path.display()
        );
    }
    let names: Vec<String> = std::fs::read_dir(&libs)
        .expect("the CUDA library directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    for lib in [
        "libcublas.so.",
        "libcublasLt.so.",
        "libcurand.so.",
        "libcudart.so.",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(lib)),
            "{lib}* not in {names:?}"
        );
    }
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).expect("etc/passwd");
    assert!(
        passwd.contains(&format!("nonroot:x:{UID}:{UID}:")),
        "{passwd}"
    );
    // Nothing of the driver, and nothing to run but the server.
    let found = Command::new("find")
        .arg(&root)
        .args(["-name", "libcuda.so*", "-o", "-name", "libnvidia*"])
        .output()
        .expect("run find");
    assert!(
        found.stdout.is_empty(),
        "driver files in the image: {}",
        String::from_utf8_lossy(&found.stdout)
    );
    for absent in ["bin/sh", "usr/bin", "sbin"] {
        assert!(!root.join(absent).exists(), "/{absent} in the image");
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// The shared libraries an ELF file names (its DT_NEEDED entries), read
/// with binutils' readelf.
fn needed(elf: &Path) -> Vec<String> {
    let out = Command::new(host_tool("readelf"))
        .args(["-d", "-W"])
        .arg(elf)
        .output()
        .expect("run readelf (binutils)");
    assert!(out.status.success(), "readelf -d {}", elf.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split_once('[')?.1.split_once(']')?.0.to_string()))
        .collect()
}

/// Every shared library the CUDA build links, and the ones those link,
/// resolves inside the image (its LD_LIBRARY_PATH, then the loader's
/// default directories), except the driver's libcuda.so.1, which the NVIDIA
/// container toolkit mounts; started without it (no GPU given to the
/// container), the server fails at once with the loader's message naming it
/// (the operator's GpuUnavailable). The resolution is read from the ELF
/// files rather than from the image's loader: `ld.so --list` stops at the
/// first library it cannot find.
#[test]
#[ignore = "needs `make images` (static release builds); run with `make check-all`"]
fn cuda_image_resolves_every_library_but_the_drivers_and_fails_fast_without_it() {
    let cuda = image(CUDA_IMAGE);
    let root = tempfile_dir("cuda-ldd");
    unpack(&cuda, &root);
    let search: Vec<&str> = env_value(&cuda.config, "LD_LIBRARY_PATH")
        .into_iter()
        .flat_map(|p| p.split(':'))
        .chain([
            "/lib64",
            "/lib/x86_64-linux-gnu",
            "/usr/lib/x86_64-linux-gnu",
            "/lib",
            "/usr/lib",
        ])
        .collect();
    let mut resolved = std::collections::BTreeMap::new();
    let mut missing = std::collections::BTreeSet::new();
    let mut pending = needed(&root.join("usr/local/bin/securechat-server"));
    while let Some(soname) = pending.pop() {
        if resolved.contains_key(&soname) || missing.contains(&soname) {
            continue;
        }
        match search
            .iter()
            .map(|dir| format!("{dir}/{soname}"))
            .find(|path| root.join(path.trim_start_matches('/')).exists())
        {
            Some(path) => {
                pending.extend(needed(&root.join(path.trim_start_matches('/'))));
                resolved.insert(soname, path);
            }
            None => {
                missing.insert(soname);
            }
        }
    }
    assert_eq!(
        missing.into_iter().collect::<Vec<_>>(),
        ["libcuda.so.1"],
        "resolved: {resolved:#?}"
    );
    for lib in [
        "libcublas.so",
        "libcublasLt.so",
        "libcurand.so",
        "libcudart.so",
    ] {
        assert!(
            resolved
                .iter()
                .any(|(name, path)| name.starts_with(&format!("{lib}."))
                    && path.starts_with(&format!("{CUDA_LIB_DIR}/"))),
            "{lib} not resolved under {CUDA_LIB_DIR}: {resolved:#?}"
        );
    }
    let (status, stderr) = run_entrypoint(&cuda, &root, &["serve", "--dev", "--device", "cuda"]);
    assert!(!status.success());
    assert!(
        stderr.contains(securechat_crds::files::names::MISSING_DRIVER_LIBRARY),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&root);
}
