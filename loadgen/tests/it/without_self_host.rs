//! A build without the `self-host` feature carries no server, and says so when asked for one.

use crate::support::{describe, loadgen};

#[tokio::test]
async fn self_host_is_refused_with_the_way_to_get_it() {
    let output = loadgen(&["--self-host", "--clients", "2", "--duration", "1s"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("this build has no --self-host: rebuild with the self-host feature"),
        "{stderr}"
    );
}
