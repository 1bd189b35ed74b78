//! The browser side end to end, in real Chromium: `clients/js/tests/e2e.mjs` drives the client
//! library (JSON and MessagePack), two demo tabs (key presses, a server restart) and the
//! monitor against the real `tickrelay-server` binary, and checks screenshots of both pages.
//!
//! Needs Node.js, Chromium at /usr/bin/chromium and `npm ci` in clients/js (`.ci/run` sets
//! them up). Without them the test is skipped with a message, except under CI (`CI` set),
//! where it fails.

use std::io::Read;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The script bounds itself (3 minutes); this is the backstop if node itself hangs.
const TIMEOUT: Duration = Duration::from_secs(240);

fn js_dir() -> PathBuf {
    let server = Path::new(env!("CARGO_MANIFEST_DIR"));
    // server/ always sits in the workspace root.
    let root = server.parent().expect("server/ has a parent");
    root.join("clients/js")
}

/// What is missing to run the browser tests, if anything.
fn missing_prerequisite(js: &Path) -> Option<String> {
    if !Path::new(CHROMIUM).exists() {
        return Some(format!(
            "no Chromium at {CHROMIUM} (apt-get install chromium)"
        ));
    }
    if !js.join("node_modules/playwright-core").is_dir() {
        return Some(format!(
            "no {}/node_modules/playwright-core (npm ci in clients/js)",
            js.display()
        ));
    }
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !node.is_ok_and(|status| status.success()) {
        return Some("no working `node` on PATH".into());
    }
    None
}

/// Reads a child's pipe to the end on its own thread, so the child never blocks on it.
fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

#[test]
fn browser_demo_monitor_and_client_library_work_in_chromium() {
    let js = js_dir();
    if let Some(missing) = missing_prerequisite(&js) {
        assert!(
            std::env::var_os("CI").is_none(),
            "browser tests cannot run under CI: {missing}; .ci/run installs Chromium and runs npm ci"
        );
        eprintln!("SKIPPED browser end-to-end tests: {missing}");
        return;
    }
    let server_bin = Path::new(env!("CARGO_BIN_EXE_tickrelay-server"));
    // target/<profile>/tickrelay-server -> target/browser-e2e
    let screenshots = server_bin
        .parent()
        .and_then(Path::parent)
        .map_or_else(|| js.join("../../target"), Path::to_path_buf)
        .join("browser-e2e");
    // The https test's certificate, for the name the page is opened at.
    let tls_dir = screenshots.join("tls");
    std::fs::create_dir_all(&tls_dir).expect("create the certificate directory");
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("a certificate");
    let (cert_path, key_path) = (tls_dir.join("localhost.crt"), tls_dir.join("localhost.key"));
    std::fs::write(&cert_path, cert.pem()).expect("write the certificate");
    std::fs::write(&key_path, signing_key.serialize_pem()).expect("write the key");
    let mut child = Command::new("node")
        .arg(js.join("tests/e2e.mjs"))
        .current_dir(&js)
        .env("TICKRELAY_SERVER_BIN", server_bin)
        .env("TICKRELAY_CHROMIUM", CHROMIUM)
        .env("TICKRELAY_E2E_OUT", &screenshots)
        .env("TICKRELAY_E2E_TLS_CERT", &cert_path)
        .env("TICKRELAY_E2E_TLS_KEY", &key_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, with the server it starts: a timeout can end them all.
        .process_group(0)
        .spawn()
        .expect("start node");
    // Both pipes were requested just above.
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        match child.try_wait().expect("wait for node") {
            Some(status) => break Some(status),
            None if Instant::now() < deadline => thread::sleep(Duration::from_millis(100)),
            None => {
                // The script has its own watchdog, so this is a last resort: SIGTERM to the
                // group (the script's handler and the server shut down cleanly), then SIGKILL.
                let group = format!("-{}", child.id());
                let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
                thread::sleep(Duration::from_secs(5));
                let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
                let _ = child.wait();
                break None;
            }
        }
    };
    let output = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default()
    );
    match status {
        Some(status) if status.success() => println!("{output}"),
        Some(status) => panic!("browser end-to-end tests failed ({status}):\n{output}"),
        None => panic!("browser end-to-end tests did not finish within {TIMEOUT:?}:\n{output}"),
    }
}
