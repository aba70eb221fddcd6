//! The page's static files, compiled into the binary: the stylesheet, our
//! one small script (`zoomwire.js`: closes the event stream when the page is
//! hidden, fetches the live parts once more when it opens), and the vendored htmx 2.0 and its Server-Sent Events extension (see
//! `assets/vendor/README.md` for where they come from). The script names
//! carry their versions, so browsers may cache them for good.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// One file: its name under `/ui/assets/`, type, whether its name changes
/// with its content, and its bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    versioned: bool,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "htmx-2.0.11.min.js",
        content_type: "text/javascript; charset=utf-8",
        versioned: true,
        body: include_bytes!("../../../assets/vendor/htmx-2.0.11.min.js"),
    },
    Asset {
        name: "htmx-ext-sse-2.2.4.min.js",
        content_type: "text/javascript; charset=utf-8",
        versioned: true,
        body: include_bytes!("../../../assets/vendor/htmx-ext-sse-2.2.4.min.js"),
    },
    Asset {
        name: "zoomwire.js",
        content_type: "text/javascript; charset=utf-8",
        versioned: false,
        body: include_bytes!("../../../assets/zoomwire.js"),
    },
    Asset {
        name: "zoomwire.css",
        content_type: "text/css; charset=utf-8",
        versioned: false,
        body: include_bytes!("../../../assets/zoomwire.css"),
    },
];

pub async fn asset(Path(name): Path<String>) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    let cache = if asset.versioned {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        ],
        asset.body,
    )
        .into_response()
}
