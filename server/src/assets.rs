//! The browser files the server serves, embedded at compile time so that nothing is looked up
//! on disk at run time: the client library (`GET /tickrelay.js`), the demo lobby (`GET /`) and
//! the live monitor (`GET /monitor`). Their sources live in `clients/js/`.

/// One embedded file.
pub(crate) struct Asset {
    pub(crate) content_type: &'static str,
    pub(crate) body: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";

/// The embedded file served at `path`, if any.
pub(crate) fn find(path: &str) -> Option<Asset> {
    let (content_type, body): (&str, &[u8]) = match path {
        "/" | "/index.html" => (HTML, include_bytes!("../../clients/js/pages/demo.html")),
        "/monitor" => (HTML, include_bytes!("../../clients/js/pages/monitor.html")),
        "/tickrelay.js" => (
            "application/javascript; charset=utf-8",
            include_bytes!("../../clients/js/tickrelay.js"),
        ),
        _ => return None,
    };
    Some(Asset { content_type, body })
}
